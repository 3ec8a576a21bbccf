"""Config resolution: what every mode shares before TensorFlow starts, as one ``Prepared``.

This module imports no TensorFlow, so bad input (an unknown preset, an image size that breaks the
2^max_level rule, a missing annotation file, ``--model=last`` without a checkpoint) fails in about a
second with one clear message. ``prepare(args) -> Prepared`` resolves the config (preset or file,
``--config_override``, flags, the category mapping of the dataset), checks the dataset files and data, and
resolves the ``--model`` source (``mrcnn_tf2.cli.weights_source``). The arguments are
``mrcnn_tf2.cli.run_args``, the run directory layout ``mrcnn_tf2.run_dir.RunPaths``.

Config resolution, so that the class mapping and the architecture match the weights:

- ``eval``/``predict``/``export`` with ``--model=PATH``: the ``config.json`` of the run PATH belongs to
  (beside the checkpoint or ``.weights.h5`` file, or one folder up); without one, ``--config`` must say
  what the architecture is (a default preset could silently not fit the weights);
- ``eval``/``predict``/``export`` otherwise, and ``train --model=last`` unless ``--config`` is given:
  ``<model_dir>/config.json`` when it exists;
- else ``--config`` (default ``shapes``). ``--config_override`` and the flags apply on top.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from mrcnn_tf2.cli.run_args import DEFAULT_CONFIG, CliError, RunArgs, check_args, flag_overrides
from mrcnn_tf2.cli.weights_source import WeightsSource, resolve_weights, weights_exist, weights_run_config

from mrcnn_tf2 import config as config_lib
from mrcnn_tf2.run_dir import RunPaths, read_config

__all__ = ["Prepared", "prepare"]


@dataclass
class Prepared:
    """Everything a mode needs, resolved and validated."""

    args: RunArgs
    cfg: config_lib.Config
    paths: RunPaths
    weights: WeightsSource
    config_source: str
    previous_cfg: config_lib.Config | None = None  # <model_dir>/config.json before this run


def _check_tpu_precision(args: RunArgs, cfg: config_lib.Config) -> None:
    if args.mode == "train" and args.strategy == "tpu" and cfg.train.mixed_precision == "float16":
        raise CliError("--strategy=tpu computes in bfloat16: use --mixed_precision=bfloat16 (train.mixed_precision"
                       "=float16 is for GPUs).")


def _with_categories(cfg: config_lib.Config, mode: str) -> config_lib.Config:
    """Fills data.category_ids/category_names from the dataset and sets model.num_classes = K + 1."""
    if cfg.data.category_ids:
        return cfg
    from mrcnn_tf2.pipelines import coco  # no TensorFlow; may generate the shapes dataset on first use

    d = cfg.data
    source = cfg
    if mode != "train" and not (d.train_annotations or d.train_tfrecords) and d.val_annotations:
        source = dataclasses.replace(cfg, data=dataclasses.replace(
            d, train_annotations=d.val_annotations, train_images=d.val_images, train_tfrecords=""))
    ids, names = coco.category_mapping(source)
    if not ids:
        raise CliError("the dataset defines no categories.")
    return config_lib.apply_overrides(cfg, {"data.category_ids": list(ids), "data.category_names": list(names),
                                            "model.num_classes": len(ids) + 1})


def _check_dataset_files(cfg: config_lib.Config, mode: str) -> None:
    """Fails fast when a configured annotation file or image folder does not exist."""
    d = cfg.data
    splits = {"train": ("train",), "eval": ("val",)}.get(mode, ())
    if mode == "train" and cfg.train.eval_every:
        splits += ("val",)
    for split in splits:
        annotations, images = getattr(d, f"{split}_annotations"), getattr(d, f"{split}_images")
        if annotations and not os.path.isfile(annotations):
            raise CliError(f"the {split} annotation file '{annotations}' does not exist (--{split}_annotations).")
        if images and not os.path.isdir(images):
            raise CliError(f"the {split} image folder '{images}' does not exist (--{split}_images).")


def _check_dataset_has_config(cfg: config_lib.Config) -> None:
    """Refuses to train a user's dataset with the default preset (the 128 px synthetic-shapes model)."""
    d = cfg.data
    given = [f"--{name}" for name in ("train_annotations", "train_images", "val_annotations", "val_images")
             if getattr(d, name)] + (["data.train_tfrecords"] if d.train_tfrecords else [])
    if given:
        raise CliError(f"{', '.join(given)} given without --config: the default preset '{DEFAULT_CONFIG}' is a "
                       "128 px model for the built-in synthetic shapes, not for real images. Pass --config=PRESET "
                       f"(one of {', '.join(config_lib.PRESETS)}; e.g. --config=coco_r50_fpn --model=imagenet) "
                       "or --config=FILE.yaml|.json, or --model=last to resume a run with its config.json.")


def prepare(args: RunArgs) -> Prepared:
    """Resolves and validates the config, the dataset's categories and the weights source (no TensorFlow).

    Raises:
        CliError, config.ConfigError, mrcnn_tf2.pipelines.coco.DatasetError: bad input; the message says what to do.
    """
    check_args(args)
    paths = RunPaths(args.model_dir)
    previous = read_config(paths.config) if os.path.isfile(paths.config) else None

    base: config_lib.Config | None = None
    source = ""
    if args.mode != "train" and args.model not in ("", "last", "none", "imagenet"):
        beside = weights_run_config(args.model)  # --model=PATH: the architecture of those weights
        if beside:
            base, source = read_config(beside), beside
        elif args.config is None and weights_exist(args.model):
            raise CliError(f"--model={args.model}: there is no config.json beside these weights or one folder up "
                           f"to tell which architecture they have, so --mode={args.mode} cannot build their model. "
                           "Pass --config with the preset or config file they were trained with (e.g. "
                           "--config=shapes), or keep the run's config.json next to its checkpoints/ folder.")
    elif args.mode != "train" or (args.model == "last" and args.config is None):
        if previous is not None:
            base, source = previous, paths.config
    defaulted = base is None and args.config is None
    if base is None:
        name = args.config or DEFAULT_CONFIG
        base, source = config_lib.resolve(name), name
    cfg = config_lib.apply_overrides(base, args.config_override)
    cfg = config_lib.validate(config_lib.apply_overrides(cfg, flag_overrides(args)))
    if defaulted and args.mode == "train":
        _check_dataset_has_config(cfg)
    _check_tpu_precision(args, cfg)
    weights = resolve_weights(args, cfg, paths)
    _check_dataset_files(cfg, args.mode)
    if args.mode in ("train", "eval") or not cfg.data.category_ids:
        cfg = config_lib.validate(_with_categories(cfg, args.mode))
    if args.mode in ("train", "eval"):
        from mrcnn_tf2.pipelines.dataset_check import check_datasets  # no TensorFlow: bad data exits before it starts

        check_datasets(cfg, args.mode)
    return Prepared(args, cfg, paths, weights, source, previous)
