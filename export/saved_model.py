"""Versioned SavedModel export for TF Serving: checkpoint -> ``<export_dir>/<version>/``.

This module owns the on-disk layout of an export::

    <export_dir>/<version>/          version = 1 + the largest integer folder already there
        saved_model.pb               signatures serving_default (tf.string) and serve_image_tensor (uint8)
        variables/                   the weights the endpoints read, stored once
        assets.extra/config.json     the resolved config (mrcnn_tf2.config.to_dict)
        assets.extra/categories.json label -> dataset category id and name

The SavedModel is written with ``keras.export.ExportArchive`` *without* ``track(model)``: the archive
then saves exactly the variables the endpoints capture, and the signature functions read the same
variable handles that the MetaGraph's saver restores. That is what TF Serving's C++ loader needs
(import the MetaGraph, run the restore op, run the signature tensors); a ``tf.Module`` wrapper around
a Keras 3 model loads in Python but fails there with "Could not find variable", and ``track(model)``
stores every weight twice. TF Serving only reads ``assets.extra/tf_serving_warmup_requests`` from
``assets.extra/`` and ignores the other files.

A version is written into a hidden temporary folder and renamed into place when complete, so a model
server polling ``<export_dir>`` never sees half a model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf
from mrcnn_tf2.export.serving import IMAGE_BYTES_SIGNATURE, IMAGE_TENSOR_SIGNATURE, ServingEndpoints
from mrcnn_tf2.pipelines.preprocess import side_resize

from mrcnn_tf2 import config as config_lib
from mrcnn_tf2.builder import build_model

__all__ = ["SERVING_DEFAULT", "SERVE_IMAGE_TENSOR", "EXTRA_DIR", "CheckpointMismatchError", "next_version",
           "export_saved_model", "export_from_checkpoint", "restore_model_strictly", "weights_bytes",
           "variables_bytes"]

SERVING_DEFAULT = "serving_default"
SERVE_IMAGE_TENSOR = "serve_image_tensor"
EXTRA_DIR = "assets.extra"
_VERSION = re.compile(r"^\d+$")


class CheckpointMismatchError(ValueError):
    """The checkpoint does not hold every model variable (or holds one with another shape)."""


def next_version(export_dir: str) -> int:
    """1 + the largest integer-named folder in ``export_dir`` (1 when there is none)."""
    if not os.path.isdir(export_dir):
        return 1
    versions = [int(name) for name in os.listdir(export_dir)
                if _VERSION.match(name) and os.path.isdir(os.path.join(export_dir, name))]
    return max(versions, default=0) + 1


def weights_bytes(model: keras.Model) -> int:
    """Bytes of the model's weights (every variable, at its dtype)."""
    return int(sum(np.prod(v.shape, dtype=np.int64) * np.dtype(v.dtype).itemsize for v in model.weights))


def variables_bytes(saved_model_dir: str) -> int:
    """Bytes on disk of ``<saved_model_dir>/variables/``."""
    root = os.path.join(saved_model_dir, "variables")
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files)


def _write_extras(cfg: config_lib.Config, directory: str) -> None:
    extra = os.path.join(directory, EXTRA_DIR)
    os.makedirs(extra, exist_ok=True)
    with open(os.path.join(extra, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config_lib.to_dict(cfg), f, indent=2, sort_keys=True)
    ids, names = cfg.data.category_ids, cfg.data.category_names
    categories = [{"label": label,
                   "category_id": ids[label - 1] if ids else label,
                   "name": names[label - 1] if names else str(label)}
                  for label in range(1, cfg.model.num_classes)]
    with open(os.path.join(extra, "categories.json"), "w", encoding="utf-8") as f:
        json.dump({"categories": categories,
                   "note": "detection_classes holds category_id; label is the model's contiguous class"},
                  f, indent=2)


def export_saved_model(model: keras.Model, cfg: config_lib.Config, export_dir: str) -> str:
    """Writes the model as the next version of ``export_dir`` and returns that version's path.

    Args:
        model: a built ``MaskRCNN`` holding the weights to serve (built from ``cfg``).
        cfg: the resolved config; ``model.image_size``, ``model.pixel_normalization``,
            ``model.detection.max_detections``, ``model.roi.mask_size``, ``data.category_ids`` and
            ``export.max_image_pixels`` shape the signatures, and the whole config is written to
            ``assets.extra/config.json``.
        export_dir: the model base path TF Serving watches (created if missing).

    Returns:
        ``<export_dir>/<version>``, a complete SavedModel with the signatures ``serving_default``
        (``images: tf.string [B]``) and ``serve_image_tensor`` (``images: tf.uint8 [B, h, w, 3]``).
    """
    m = cfg.model
    endpoints = ServingEndpoints(model, m.image_size, m.pixel_normalization, cfg.data.category_ids,
                                 m.detection.max_detections, m.roi.mask_size, cfg.export.max_image_pixels,
                                 resize=side_resize(m))
    archive = keras.export.ExportArchive()
    # No archive.track(model): see the module docstring (variables stored once, C++ loader works).
    archive.add_endpoint(SERVING_DEFAULT, endpoints.serve_image_bytes, list(IMAGE_BYTES_SIGNATURE))
    archive.add_endpoint(SERVE_IMAGE_TENSOR, endpoints.serve_image_tensor, list(IMAGE_TENSOR_SIGNATURE))

    os.makedirs(export_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".export-", dir=export_dir)  # not an integer: servers skip it
    try:
        target = os.path.join(staging, "model")
        archive.write_out(target, verbose=False)
        _write_extras(cfg, target)
        while True:
            final = os.path.join(export_dir, str(next_version(export_dir)))
            try:
                os.rename(target, final)  # fails if a concurrent export took this number
                return final
            except OSError:
                if not os.path.isdir(final):
                    raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def export_from_checkpoint(cfg: config_lib.Config, checkpoint: str, model_dir: str, export_dir: str) -> str:
    """Builds the model from ``cfg``, restores a training checkpoint and exports it.

    Only the model is restored (optimizer slots in the checkpoint are ignored), and strictly: every model
    variable must be in the checkpoint with its shape, so a checkpoint of another architecture is refused
    instead of exported with some random weights.

    Args:
        cfg: the resolved config the checkpoint was trained with.
        checkpoint: ``"last"`` (the newest checkpoint in ``<model_dir>/checkpoints``), a checkpoint
            prefix (``.../ckpt-<step>``) or a folder holding a ``checkpoint`` state file.
        model_dir: the training folder (used for ``"last"``).
        export_dir: the model base path; the export goes to ``<export_dir>/<next version>``.

    Returns:
        The path of the written version.

    Raises:
        FileNotFoundError: no checkpoint was found.
        CheckpointMismatchError: the checkpoint lacks model variables or holds other shapes.
    """
    prefix = _resolve_checkpoint(checkpoint, model_dir)  # before building: fail fast
    model = build_model(cfg)
    restore_model_strictly(model, prefix, cfg.name)
    return export_saved_model(model, cfg, export_dir)


def restore_model_strictly(model: keras.Model, prefix: str, config_name: str = "") -> None:
    """Restores every variable of ``model`` from the checkpoint ``prefix`` (saved as ``Checkpoint(model=...)``).

    Values in the checkpoint that the model does not have (optimizer slots, step counters) are ignored;
    a model variable that the checkpoint does not hold, or holds with another shape, is an error.

    Raises:
        CheckpointMismatchError: naming the missing variables (by Keras path) or the shape mismatch.
    """
    what = f"the '{config_name}' model" if config_name else "the model"
    fix = ("The checkpoint was written by a model of another architecture: export with the config it was "
           "trained with (the run's config.json, or --config).")
    try:
        status = tf.train.Checkpoint(model=model).restore(prefix)
    except ValueError as e:  # a variable of another shape
        raise CheckpointMismatchError(f"the checkpoint {prefix} does not fit {what}: "
                                      f"{str(e).splitlines()[0][:300]}. {fix}") from None
    try:
        status.assert_existing_objects_matched()
    except AssertionError as e:
        missing = _unrestored_paths(status, model)
        detail = (f"{len(missing)} model variables are not in it: {', '.join(missing[:8])}"
                  + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
                  if missing else str(e).splitlines()[0][:300])
        raise CheckpointMismatchError(f"the checkpoint {prefix} does not restore every variable of {what} "
                                      f"({detail}). {fix}") from None
    status.expect_partial()  # the optimizer's slots and counters stay unread


def _unrestored_paths(status, model: keras.Model) -> list[str]:
    """Paths of the model variables the restore did not bind ([] if TensorFlow's bookkeeping is not there)."""
    # TensorFlow keeps the bound objects in the load status (not public API); the assertion's own
    # message lists them too, but with their values.
    bound = getattr(getattr(status, "_checkpoint", None), "object_by_proto_id", None)
    if bound is None:
        return []
    bound_ids = {id(obj) for obj in bound.values()}
    return [v.path for v in model.variables if id(v) not in bound_ids]


def _resolve_checkpoint(checkpoint: str, model_dir: str) -> str:
    """``"last"``, a prefix or a folder -> an existing checkpoint prefix (FileNotFoundError if none)."""
    directory = os.path.join(model_dir, "checkpoints")
    example = os.path.join(directory, "ckpt-<step>")
    if checkpoint == "last":
        prefix = tf.train.latest_checkpoint(directory) if os.path.isdir(directory) else None
        if prefix is None:
            raise FileNotFoundError(
                f"no checkpoint to export in '{directory}': train first (--mode=train) or pass "
                f"--model=PATH with a checkpoint prefix such as {example}")
        return prefix
    prefix = tf.train.latest_checkpoint(checkpoint) if os.path.isdir(checkpoint) else checkpoint
    if not prefix or not tf.io.gfile.exists(prefix + ".index"):
        raise FileNotFoundError(
            f"no checkpoint at '{checkpoint}': pass --model=last or a checkpoint prefix such as {example} "
            "(its files are ckpt-<step>.index and ckpt-<step>.data-*)")
    return prefix
