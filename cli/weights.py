"""Loading weights for ``--model=imagenet|last|none|PATH``.

This module owns how a model gets its starting weights:

- ``last`` (training): model, optimizer (momentum slots and ``iterations``, hence the LR schedule
  position), global step and epoch, exactly. When ``model.train_layers`` changed since the previous
  run (staged training: ``heads`` then ``all``) the set of trainable variables differs, so the optimizer
  slots cannot be matched: the model, step and epoch are restored, the optimizer's ``iterations`` is set
  to the step (the schedule continues) and momentum starts from zero, as matterport's recompiling does.
- ``PATH`` (a checkpoint prefix, a folder of checkpoints or a ``.weights.h5`` file): the model weights
  only. When the run that wrote them has a ``config.json`` with another architecture (typically another
  number of classes), a model is built from that config, loaded, and every weight whose path and shape
  match is copied; the others (e.g. the class-specific layers of the box and mask heads) keep their
  initial values and are named on the console.
- ``imagenet``: the backbone from ``keras.applications`` (see ``layers.backbone``).
"""

from __future__ import annotations

import keras
import tensorflow as tf
from absl import logging
from mrcnn_tf2.cli.common import CliError, WeightsSource, read_config

from mrcnn_tf2 import config as config_lib
from mrcnn_tf2 import training
from mrcnn_tf2.builder import build_model
from mrcnn_tf2.layers.backbone import load_backbone_weights
from mrcnn_tf2.run_dir import restore_model

__all__ = ["copy_matching_weights", "restore_model", "load_weights", "restore_training_state"]


def copy_matching_weights(target: keras.Model, source: keras.Model) -> list[str]:
    """Assigns each target weight the source weight with the same path and shape.

    Returns:
        The paths of the target weights left unchanged (missing in the source, or another shape).
    """
    by_path = {w.path: w for w in source.weights}
    skipped = []
    for weight in target.weights:
        found = by_path.get(weight.path)
        if found is None or tuple(found.shape) != tuple(weight.shape):
            skipped.append(weight.path)
            continue
        weight.assign(found)
    return skipped


def _same_architecture(a: config_lib.Config, b: config_lib.Config) -> bool:
    """Whether two configs build models with the same checkpoint structure.

    ``model.train_layers`` counts: the backbone is assembled differently when parts of it are frozen, so a
    checkpoint of a ``heads`` run does not map onto an ``all`` model object by object (but does by
    weight path, which ``copy_matching_weights`` uses).
    """
    return a.model == b.model


def _load_raw(model: keras.Model, source: WeightsSource) -> None:
    if source.kind == "h5":
        model.load_weights(source.path)
    else:
        restore_model(model, source.path)


def _grouped(paths: list[str]) -> str:
    layers = sorted({p.rsplit("/", 1)[0] for p in paths})
    return ", ".join(layers[:12]) + (f" and {len(layers) - 12} more" if len(layers) > 12 else "")


def _fit_error(source: WeightsSource, cfg: config_lib.Config, error: Exception, has_config: bool) -> CliError:
    hint = "" if has_config else (" No config.json of the source run was found next to it (or one folder up) "
                                  "to tell how it was built;")
    return CliError(f"the weights in '{source.path}' do not fit the '{cfg.name}' model "
                    f"({str(error).splitlines()[0][:300]}).{hint} check --config, or pass weights of the same "
                    "architecture.")


def load_weights(model: keras.Model, source: WeightsSource, cfg: config_lib.Config) -> str:
    """Loads the model weights of ``source`` (kind ``last``, ``checkpoint``, ``h5``, ``imagenet``, ``none``).

    A compiled model tracks its optimizer, and checkpoints (and Keras 3 ``.weights.h5`` files) of a
    compiled model hold the optimizer state too; to load the *model weights only*, the file is read into
    a separate, never compiled model and the weights are copied. An uncompiled model of the same
    architecture (eval, predict) is restored directly.

    Args:
        model: a built model of ``cfg``.
        source: from ``mrcnn_tf2.cli.common.prepare``.
        cfg: the config ``model`` was built from.

    Returns:
        A one-line description of what was loaded (and which layers were skipped).

    Raises:
        CliError: the weights do not fit the model and no config.json tells how they were built.
        layers.backbone.WeightsDownloadError: ImageNet weights could not be downloaded.
    """
    if source.kind == "none":
        return "weights: random initialization (--model=none)"
    if source.kind == "imagenet":
        if not (cfg.model.resnet_stride_in_1x1 and cfg.model.backbone_conv_bias):
            raise CliError("--model=imagenet loads keras.applications weights (stride on the 1x1 conv, conv biases) "
                           "but this config builds torchvision's ResNet layout (model.resnet_stride_in_1x1=false, "
                           "model.backbone_conv_bias=false). Import torchvision weights with `python -m "
                           "mrcnn_tf2.convert torchvision --weights FILE.pth --variant v1|v2 --model_dir DIR` and "
                           "pass --model=DIR/checkpoints/ckpt-0, or train from scratch with --model=none.")
        load_backbone_weights(model.backbone, cfg.model.backbone, "imagenet")
        return f"weights: ImageNet {cfg.model.backbone} backbone; FPN and heads randomly initialized"
    source_cfg = read_config(source.source_config) if source.source_config else None
    same = source_cfg is None or _same_architecture(source_cfg, cfg)
    if same and getattr(model, "optimizer", None) is None:
        try:
            _load_raw(model, source)
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            raise _fit_error(source, cfg, e, source_cfg is not None) from None
        return f"weights: {source.path}"
    if source_cfg is not None and source_cfg.model.backbone != cfg.model.backbone:
        raise CliError(f"'{source.path}' holds a {source_cfg.model.backbone} model ({source.source_config}) "
                       f"but the config builds a {cfg.model.backbone}; use --model=imagenet or --model=none.")
    source_model = build_model(source_cfg if source_cfg is not None else cfg)
    try:
        _load_raw(source_model, source)
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        raise _fit_error(source, cfg, e, source_cfg is not None) from None
    skipped = copy_matching_weights(model, source_model)
    message = f"weights: {source.path}" + (f" (built from {source.source_config})" if not same else "")
    if skipped:
        message += f"; skipped {len(skipped)} weights whose shape differs (kept initial values): {_grouped(skipped)}"
        logging.warning(message)
    return message


def restore_training_state(keeper: training.CheckpointKeeper, optimizer: keras.optimizers.Optimizer,
                           previous_cfg: config_lib.Config | None, staged: bool) -> str:
    """Resumes from the newest checkpoint of ``keeper`` (``--model=last`` in training).

    Args:
        keeper: the training keeper (model, optimizer, step, epoch), built under the strategy scope.
        optimizer: the built optimizer.
        previous_cfg: the config the checkpoint was written with (``<model_dir>/config.json``; staged case).
        staged: ``model.train_layers`` changed since the checkpoint: restore model, step and epoch, set
            ``optimizer.iterations`` to the step, and start momentum from zero.

    Returns:
        The restored checkpoint prefix.
    """
    prefix = keeper.latest_path()
    if prefix is None:
        raise CliError(f"no checkpoint to resume in '{keeper.directory}'")
    try:
        if not staged:
            keeper.restore(prefix, strict=True)
            return prefix
        # The optimizer slots no longer fit and the backbone is assembled differently: read the weights
        # into an uncompiled model of the previous stage and copy them by path; step and epoch directly.
        source = build_model(previous_cfg)
        restore_model(source, prefix)
        skipped = copy_matching_weights(keeper.model, source)
        if skipped:
            raise ValueError(f"{len(skipped)} weights have no counterpart, e.g. {skipped[0]}")
        tf.train.Checkpoint(step=keeper.step, epoch=keeper.epoch).restore(prefix).expect_partial()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        raise CliError(f"the checkpoint {prefix} does not match the model of this config "
                       f"({str(e).splitlines()[0][:300]}). Resume without --config (the run's config.json is "
                       "used) or with the config the run was trained with.") from None
    optimizer.iterations.assign(keeper.step)
    return prefix
