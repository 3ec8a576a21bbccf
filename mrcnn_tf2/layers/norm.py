"""Normalization layers shared by the backbones and the FPN.

This module owns the choice of normalization (``model.norm`` in the config):

- ``frozen_bn``: :class:`FrozenBatchNormalization`, a batch norm whose scale, offset and moving
  statistics never change and that always normalizes with the moving statistics. The right choice for
  ImageNet-initialized backbones trained with small per-device batches.
- ``bn``: a plain trainable ``keras.layers.BatchNormalization`` (batch statistics in training).
- ``gn``: ``keras.layers.GroupNormalization`` (independent of the batch size; for training from scratch).

All layers work on channels-last tensors ``[B, H, W, C]`` and keep their input dtype policy.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from mrcnn_tf2.config.choices import NORMS
from mrcnn_tf2.layers.conv import Conv2D

__all__ = ["NORMS", "FrozenBatchNormalization", "FoldingConv2D", "batch_norm_scale_offset", "conv_norm",
           "inference_kernel_bias", "norm_layer"]



@keras.saving.register_keras_serializable(package="mrcnn_tf2")
class FrozenBatchNormalization(keras.layers.BatchNormalization):
    """Batch normalization frozen for good: ``trainable`` is always False.

    Keras 3 runs a non-trainable ``BatchNormalization`` in inference mode (moving statistics) even when
    called with ``training=True``, and leaves its gamma/beta out of ``trainable_weights``. Pinning
    ``trainable`` to False also survives ``model.trainable = True`` on an enclosing model, which would
    silently unfreeze a plain ``BatchNormalization``.

    Weights (and their order: gamma, beta, moving_mean, moving_variance) are those of
    ``keras.layers.BatchNormalization``, so ImageNet batch-norm weights load into it unchanged.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs["trainable"] = False
        super().__init__(**kwargs)

    @property
    def trainable(self) -> bool:
        return False

    @trainable.setter
    def trainable(self, value: bool) -> None:
        # Ignore the requested value; keep the layer (and its variables) frozen.
        keras.layers.Layer.trainable.fset(self, False)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.pop("trainable", None)
        return config

    def folded_scale_offset(self) -> tuple[Any, Any]:
        """(scale, offset) with ``bn(x) == x * scale + offset``, both ``[C]``."""
        return batch_norm_scale_offset(self)

    def call(self, inputs, training=None, mask=None):
        # Folded into the preceding convolution (see FoldingConv2D): nothing left to do here.
        if self.__dict__.get("_folded", False):
            return inputs
        return super().call(inputs, training=False, mask=mask)


@keras.saving.register_keras_serializable(package="mrcnn_tf2")
class FoldingConv2D(Conv2D):
    """A Conv2D that absorbs the FrozenBatchNormalization right after it (inference-style BN folding).

    ``fold(bn)`` makes this convolution compute ``bn(conv(x))`` in one convolution with the kernel and
    bias rescaled by the frozen statistics (recomputed each call, so training the kernel stays exact),
    and turns ``bn`` into the identity. That removes one full elementwise pass per convolution: about
    10% of a ResNet's CPU time. Both layers keep their own variables and names, so weights load and
    checkpoint exactly as without folding. The link is not serialized: a model rebuilt from its config
    computes the same values the unfolded way. Winograd inference (``winograd_min_pixels``) as in
    :class:`mrcnn_tf2.layers.conv.Conv2D`.
    """

    def fold(self, bn: FrozenBatchNormalization) -> None:
        # Plain attributes (object.__setattr__): the BN layer must not become a tracked sublayer here.
        object.__setattr__(self, "_folded_bn", bn)
        object.__setattr__(bn, "_folded", True)

    def call(self, inputs, training=None):
        bn = self.__dict__.get("_folded_bn")
        if bn is None:
            return super().call(inputs, training=training)
        scale, offset = bn.folded_scale_offset()
        scale = tf.cast(scale, self.kernel.dtype)
        outputs = self.convolve(inputs, self.kernel * scale, training)  # scale the output channels
        bias = tf.cast(offset, self.kernel.dtype)
        if self.use_bias:
            bias = bias + self.bias * scale
        return self.finish(outputs, bias)


def batch_norm_scale_offset(bn: keras.layers.BatchNormalization) -> tuple[Any, Any]:
    """(scale, offset), both ``[C]`` float32, with ``bn(x, training=False) == x * scale + offset``."""
    scale = tf.math.rsqrt(tf.cast(bn.moving_variance, tf.float32) + bn.epsilon)
    if bn.gamma is not None:
        scale = scale * tf.cast(bn.gamma, tf.float32)
    offset = -tf.cast(bn.moving_mean, tf.float32) * scale
    if bn.beta is not None:
        offset = offset + tf.cast(bn.beta, tf.float32)
    return scale, offset


def conv_norm(conv: Conv2D, norm: keras.layers.Layer | None, x: tf.Tensor, training: bool | None) -> tf.Tensor:
    """``norm(conv(x))`` (``norm`` None: ``conv(x)``); at inference a batch norm is folded into the convolution.

    With ``training`` False (said, not None) and ``norm`` a ``keras.layers.BatchNormalization`` (moving
    statistics at inference), this computes one convolution with the kernel and bias rescaled, instead of
    a convolution and then the batch norm's elementwise passes over the whole output: the same function
    up to float rounding. ``conv`` must have no activation (the norm comes before it).

    Args:
        conv: a :class:`mrcnn_tf2.layers.conv.Conv2D` without activation.
        norm: the norm layer after it, or None.
        x: ``[B, H, W, C]``.
        training: passed to both layers (True: batch statistics for a trainable batch norm).
    """
    if norm is None or norm.__dict__.get("_folded", False):  # a FrozenBatchNormalization folded for good
        return conv(x, training=training) if norm is None else norm(conv(x, training=training))
    if training is None or training or not isinstance(norm, keras.layers.BatchNormalization):
        return norm(conv(x, training=training), training=training)
    kernel, bias = inference_kernel_bias(conv, norm)
    return conv.finish(conv.convolve(x, kernel, training), bias)


def inference_kernel_bias(conv: Conv2D, norm: keras.layers.Layer | None) -> tuple[Any, Any]:
    """(kernel, bias or None) of one convolution computing ``norm(conv(x))`` with moving statistics.

    ``norm`` is None or a ``keras.layers.BatchNormalization`` (frozen or not); the kernel is
    ``[kh, kw, C, K]`` rescaled per output channel, the bias ``[K]`` float32. ``conv`` must have no
    activation (the norm comes before it).

    Raises:
        ValueError: ``conv`` has an activation, or ``norm`` is another kind of layer.
    """
    if conv.activation not in (None, keras.activations.linear):
        raise ValueError(f"{conv.name}: a convolution followed by a norm must have no activation")
    if norm is None:
        return conv.kernel, conv.bias if conv.use_bias else None
    if not isinstance(norm, keras.layers.BatchNormalization):
        raise ValueError(f"{norm.name}: only a batch norm folds into a convolution, not {type(norm).__name__}")
    scale, offset = batch_norm_scale_offset(norm)
    kernel = conv.kernel * tf.cast(scale, conv.kernel.dtype)
    if conv.use_bias:
        offset = offset + tf.cast(conv.bias, tf.float32) * scale
    return kernel, offset


def norm_layer(
    norm: str,
    prefix: str,
    channels: int | None = None,
    gn_groups: int = 32,
    epsilon: float = 1e-5,
    gamma_initializer: str = "ones",
    synchronized: bool = False,
) -> keras.layers.Layer:
    """Creates the normalization layer for ``norm``, named ``{prefix}_bn`` or ``{prefix}_gn``.

    Args:
        norm: ``"frozen_bn"``, ``"bn"`` or ``"gn"``.
        prefix: layer name prefix, e.g. ``"conv2_block1_1"`` (gives ``conv2_block1_1_bn``, the name used by
            ``keras.applications`` ResNets, so batch-norm weights load by name).
        channels: number of input channels, when known; checked against ``gn_groups`` for ``gn``.
        gn_groups: number of groups for ``gn``.
        epsilon: variance epsilon.
        gamma_initializer: initializer of the scale (``"zeros"`` for the last norm of a residual branch).
        synchronized: ``bn`` only: batch statistics over all replicas of a ``tf.distribute`` strategy.

    Returns:
        An unbuilt Keras layer mapping ``[B, H, W, C]`` to ``[B, H, W, C]``.

    Raises:
        ValueError: for an unknown ``norm`` or when ``channels`` is not divisible by ``gn_groups``.
    """
    if norm == "frozen_bn":
        return FrozenBatchNormalization(epsilon=epsilon, gamma_initializer=gamma_initializer,
                                        name=f"{prefix}_bn")
    if norm == "bn":
        return keras.layers.BatchNormalization(epsilon=epsilon, gamma_initializer=gamma_initializer,
                                               synchronized=synchronized, name=f"{prefix}_bn")
    if norm == "gn":
        if channels is not None and channels % gn_groups:
            raise ValueError(f"GroupNormalization '{prefix}_gn': {channels} channels are not divisible by "
                             f"gn_groups={gn_groups}; choose a gn_groups that divides {channels}")
        return keras.layers.GroupNormalization(groups=gn_groups, epsilon=epsilon,
                                               gamma_initializer=gamma_initializer, name=f"{prefix}_gn")
    raise ValueError(f"unknown norm '{norm}'; choose one of {NORMS}")
