"""Inference precision: ``float32`` or ``bfloat16`` (``eval.precision``, ``--precision``).

This module owns how a model is built for inference in a given precision. ``bfloat16`` builds the
model under the Keras ``mixed_bfloat16`` policy, the mechanism ``--mixed_precision=bfloat16`` uses for
training: convolutions, dense layers and the FPN compute in bfloat16, while *every variable stays
float32*, so a checkpoint written in float32 restores into a bfloat16 model and the other way round.

What stays float32 under the policy (each part sets it itself, so the policy cannot change it):

- the inputs of ``MaskRCNN.call``: the model is a float32 layer, so ``image_info`` (original sizes,
  scales, offsets) is never rounded to bfloat16's 8 significant bits; the backbone casts the images;
- the head outputs (RPN objectness and deltas, class logits, box deltas, mask logits are cast);
- anchors, box decoding, clipping, top-k, NMS scores and the ``num_detections`` counts (the proposal,
  ROI-sampler and detection layers are float32 layers);
- ROIAlign: box coordinates, level assignment, bilinear weights and the sums (``ops/roi_align.py``
  computes in float32 and returns the pooled features in the features' dtype);
- the mask probabilities (sigmoid of float32 logits).

A policy is read when a layer is *constructed*: :func:`build_inference_model` sets it around
``build_model`` and restores the previous global policy afterwards, so nothing else in the process
changes. ``model_precision`` reads the precision back from a built model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras

from mrcnn_tf2 import config as config_lib
from mrcnn_tf2.config.choices import PRECISIONS

__all__ = ["PRECISIONS", "policy_name", "inference_policy", "build_inference_model", "model_precision"]


def policy_name(precision: str) -> str:
    """The Keras dtype policy of an inference precision: ``float32`` or ``mixed_bfloat16``.

    Raises:
        ValueError: ``precision`` is not one of ``PRECISIONS``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision='{precision}' is not one of {', '.join(PRECISIONS)}")
    return "float32" if precision == "float32" else f"mixed_{precision}"


@contextlib.contextmanager
def inference_policy(precision: str) -> Iterator[None]:
    """Sets the global Keras dtype policy of ``precision`` for the ``with`` block, then restores the previous one.

    Layers constructed inside the block keep the policy for their lifetime.
    """
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy_name(precision))
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def build_inference_model(cfg: config_lib.Config, precision: str | None = None):
    """``build_model(cfg)`` computing in ``precision`` (default ``cfg.eval.precision``); float32 variables.

    Args:
        cfg: a validated config.
        precision: ``float32`` or ``bfloat16``; None takes ``cfg.eval.precision``.

    Returns:
        A built ``MaskRCNN`` (variables created, randomly initialized): restore weights into it.
    """
    from mrcnn_tf2.builder import build_model

    with inference_policy(precision or cfg.eval.precision):
        return build_model(cfg)


def model_precision(model: keras.Model) -> str:
    """``bfloat16`` when the model's backbone computes in bfloat16, else ``float32``.

    Raises:
        ValueError: the backbone computes in a precision that inference does not offer (float16).
    """
    compute = model.backbone.dtype_policy.compute_dtype
    if compute not in PRECISIONS:
        raise ValueError(f"the model computes in {compute}; inference offers {', '.join(PRECISIONS)}")
    return compute
