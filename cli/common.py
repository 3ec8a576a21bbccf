"""What every mode shares before TensorFlow starts: arguments, the resolved config and the weights source.

This module imports no TensorFlow, so bad input (an unknown preset, an image size that breaks the
2^max_level rule, a missing annotation file, ``--model=last`` without a checkpoint) fails in about a
second with one clear message. It owns:

- ``RunArgs``: the command line as plain values (main.py fills it from absl flags; tests build it);
- ``prepare(args) -> Prepared``: the config (preset or file, ``--config_override``, flags, the category
  mapping of the dataset) and the resolved ``--model`` source;
- the run-directory layout (``RunPaths``); ``config.json`` reading/writing and checkpoint lookup come from
  ``mrcnn_tf2.run_dir`` (re-exported here).

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
from dataclasses import dataclass, field

from mrcnn_tf2 import config as config_lib
from mrcnn_tf2.run_dir import find_checkpoint, read_config, run_config_path, write_config

__all__ = ["CliError", "MODES", "MIXED_PRECISION_FLAG", "RunArgs", "RunPaths", "WeightsSource", "Prepared",
           "prepare", "read_config", "write_config", "find_checkpoint", "run_config_path", "DEFAULT_CONFIG"]

MODES = ("train", "eval", "export", "predict")
MIXED_PRECISION_FLAG = ("", "float16", "bfloat16")  # --mixed_precision values; "" = the config's setting
DEFAULT_CONFIG = "shapes"


class CliError(ValueError):
    """Bad command-line input; the message says what to do instead."""


@dataclass
class RunArgs:
    """The command line (DESIGN.md section 4) as plain values. ``None`` = flag not given."""

    mode: str = "train"
    strategy: str = "one_device"
    tpu: str = ""
    config: str | None = None
    config_override: list[str] = field(default_factory=list)
    model: str = ""
    model_dir: str = "logs"
    data_dir: str | None = None
    train_annotations: str | None = None
    train_images: str | None = None
    val_annotations: str | None = None
    val_images: str | None = None
    results_file: str = "submission.json"
    export_dir: str = "exported/maskrcnn"
    images: str = ""
    output_dir: str = "predictions"
    steps: int | None = None
    batch_size: int | None = None
    checkpoint_every: int | None = None
    eval_every: int | None = None
    train_layers: str | None = None
    mixed_precision: str = ""  # "", "float16" or "bfloat16"
    jit_compile: bool = False
    deterministic: bool = False
    verbose: bool = True


@dataclass(frozen=True)
class RunPaths:
    """The run directory layout (DESIGN.md section 4)."""

    model_dir: str

    @property
    def checkpoints(self) -> str:
        return os.path.join(self.model_dir, "checkpoints")

    @property
    def config(self) -> str:
        return os.path.join(self.model_dir, "config.json")

    @property
    def eval_dir(self) -> str:
        return os.path.join(self.model_dir, "eval")

    @property
    def metrics(self) -> str:
        return os.path.join(self.model_dir, "eval", "metrics.json")

    def results(self, results_file: str) -> str:
        """``--results_file``: absolute paths as given, relative ones inside the run directory."""
        return results_file if os.path.isabs(results_file) else os.path.join(self.model_dir, results_file)


@dataclass(frozen=True)
class WeightsSource:
    """Where the weights come from.

    Attributes:
        kind: ``none`` (random), ``imagenet`` (backbone only), ``last`` (newest checkpoint of the run),
            ``checkpoint`` (a TF checkpoint prefix) or ``h5`` (a ``.weights.h5`` file).
        path: the checkpoint prefix (``last``, ``checkpoint``) or the file (``h5``); empty otherwise.
        source_config: the ``config.json`` of the run the weights come from, when there is one (used to
            build a source model and copy the layers whose shapes match).
    """

    kind: str
    path: str = ""
    source_config: str = ""


@dataclass
class Prepared:
    """Everything a mode needs, resolved and validated."""

    args: RunArgs
    cfg: config_lib.Config
    paths: RunPaths
    weights: WeightsSource
    config_source: str
    previous_cfg: config_lib.Config | None = None  # <model_dir>/config.json before this run


def _weights_run_config(spec: str) -> str:
    """The run ``config.json`` of ``--model=PATH`` (a .weights.h5 file, a prefix or a folder), '' if none."""
    if spec.endswith(".h5"):
        return run_config_path(spec) if os.path.isfile(spec) else ""
    prefix = find_checkpoint(spec)
    return run_config_path(prefix) if prefix else ""


def _weights_exist(spec: str) -> bool:
    return os.path.isfile(spec) if spec.endswith(".h5") else find_checkpoint(spec) is not None


def _resolve_weights(args: RunArgs, cfg: config_lib.Config, paths: RunPaths) -> WeightsSource:
    spec = args.model or ("last" if args.mode != "train"
                          else "imagenet" if cfg.model.norm == "frozen_bn" else "none")
    latest = find_checkpoint(paths.checkpoints)
    if spec == "last":
        if latest is None:
            raise CliError(f"--model=last: there is no checkpoint in '{paths.checkpoints}'. Train first "
                           f"(--mode=train --model_dir={args.model_dir}), point --model_dir at a run that has "
                           "checkpoints, or pass --model=PATH (a checkpoint prefix or a .weights.h5 file).")
        return WeightsSource("last", latest, paths.config if os.path.isfile(paths.config) else "")
    if args.mode == "train" and latest is not None:
        raise CliError(f"'{args.model_dir}' already holds checkpoints (newest: {os.path.basename(latest)}). "
                       "Pass --model=last to resume (or to start the next stage of a staged training), or "
                       "choose a new --model_dir.")
    if spec in ("none", "imagenet"):
        if args.mode != "train":
            raise CliError(f"--mode={args.mode} needs trained weights: --model=last (the newest checkpoint in "
                           f"--model_dir) or --model=PATH, not --model={spec}.")
        return WeightsSource(spec)
    if spec.endswith(".h5"):
        if not os.path.isfile(spec):
            raise CliError(f"--model={spec}: the weights file does not exist.")
        return WeightsSource("h5", spec, run_config_path(spec))
    prefix = find_checkpoint(spec)
    if prefix is None:
        raise CliError(f"--model={spec} is neither imagenet, last, none, a .weights.h5 file, a checkpoint "
                       "prefix (such as logs/checkpoints/ckpt-3000, with ckpt-3000.index beside it), nor a "
                       "folder holding checkpoints.")
    return WeightsSource("checkpoint", prefix, run_config_path(prefix))


def _flag_overrides(args: RunArgs) -> dict[str, object]:
    """Dotted config overrides from the dedicated flags (a flag wins over --config_override)."""
    out: dict[str, object] = {}
    for name in ("data_dir", "train_annotations", "train_images", "val_annotations", "val_images"):
        value = getattr(args, name)
        if value is not None:
            out[f"data.{name}"] = value
    if args.steps is not None:
        out["train.steps"] = args.steps
    if args.batch_size is not None:
        out["train.batch_size" if args.mode == "train" else "eval.batch_size"] = args.batch_size
    if args.checkpoint_every is not None:
        out["train.checkpoint_every"] = args.checkpoint_every
    if args.eval_every is not None:
        out["train.eval_every"] = args.eval_every
    if args.train_layers is not None:
        out["model.train_layers"] = args.train_layers
    if args.jit_compile:
        out["train.jit_compile"] = True
    if args.mixed_precision:
        out["train.mixed_precision"] = args.mixed_precision
    if args.deterministic:
        out["train.deterministic"] = True
    return out


def _check_mixed_precision(args: RunArgs) -> None:
    if args.mixed_precision not in MIXED_PRECISION_FLAG:
        raise CliError(f"--mixed_precision={args.mixed_precision} must be float16 (GPUs, with loss scaling) or "
                       "bfloat16 (TPUs); leave it out for float32. The flag takes a value: the bare "
                       "--mixed_precision of earlier versions is now --mixed_precision=float16.")


def _check_tpu_precision(args: RunArgs, cfg: config_lib.Config) -> None:
    if args.mode == "train" and args.strategy == "tpu" and cfg.train.mixed_precision == "float16":
        raise CliError("--strategy=tpu computes in bfloat16: use --mixed_precision=bfloat16 (train.mixed_precision"
                       "=float16 is for GPUs).")


def _check_positive(args: RunArgs) -> None:
    for name in ("steps", "batch_size", "checkpoint_every"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise CliError(f"--{name}={value} must be a positive integer.")
    if args.eval_every is not None and args.eval_every < 0:
        raise CliError(f"--eval_every={args.eval_every} must be >= 0 (0 = no evaluation during training).")


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
    if args.mode not in MODES:
        raise CliError(f"--mode={args.mode} is not one of {', '.join(MODES)}.")
    _check_positive(args)
    _check_mixed_precision(args)
    if args.mode == "predict" and not args.images:
        raise CliError("--mode=predict needs --images, e.g. --images='photos/*.jpg' --output_dir=predictions/.")
    paths = RunPaths(args.model_dir)
    previous = read_config(paths.config) if os.path.isfile(paths.config) else None

    base: config_lib.Config | None = None
    source = ""
    if args.mode != "train" and args.model not in ("", "last", "none", "imagenet"):
        beside = _weights_run_config(args.model)  # --model=PATH: the architecture of those weights
        if beside:
            base, source = read_config(beside), beside
        elif args.config is None and _weights_exist(args.model):
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
    cfg = config_lib.validate(config_lib.apply_overrides(cfg, _flag_overrides(args)))
    if defaulted and args.mode == "train":
        _check_dataset_has_config(cfg)
    _check_tpu_precision(args, cfg)
    weights = _resolve_weights(args, cfg, paths)
    _check_dataset_files(cfg, args.mode)
    if args.mode in ("train", "eval") or not cfg.data.category_ids:
        cfg = config_lib.validate(_with_categories(cfg, args.mode))
    if args.mode in ("train", "eval"):
        from mrcnn_tf2.pipelines.dataset_check import check_datasets  # no TensorFlow: bad data exits before it starts

        check_datasets(cfg, args.mode)
    return Prepared(args, cfg, paths, weights, source, previous)
