"""The command line as plain values (``RunArgs``), the checks that need nothing but the arguments, and the
config overrides the dedicated flags stand for. No TensorFlow, no file access.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mrcnn_tf2.config.choices import PRECISIONS

__all__ = ["CliError", "MODES", "MIXED_PRECISION_FLAG", "DEFAULT_CONFIG", "RunArgs", "check_args", "flag_overrides"]

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
    precision: str = ""  # eval/predict/export: "", "float32" or "bfloat16"; "" = the config's eval.precision
    jit_compile: bool = False
    deterministic: bool = False
    format: str = "saved_model"  # export: "saved_model" or "tflite"
    quantize: str = "none"  # export --format=tflite: none, float16, dynamic or int8
    calibration_images: str = "64"  # export --quantize=int8: a count of validation images or a glob
    verbose: bool = True


def flag_overrides(args: RunArgs) -> dict[str, object]:
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
    if args.precision:
        out["eval.precision"] = args.precision
    return out


def _check_mixed_precision(args: RunArgs) -> None:
    if args.mixed_precision not in MIXED_PRECISION_FLAG:
        raise CliError(f"--mixed_precision={args.mixed_precision} must be float16 (GPUs, with loss scaling) or "
                       "bfloat16 (TPUs); leave it out for float32. The flag takes a value: the bare "
                       "--mixed_precision of earlier versions is now --mixed_precision=float16.")


def _check_precision(args: RunArgs) -> None:
    """--precision: eval/predict/export only, float32 or bfloat16."""
    if not args.precision:
        return
    if args.mode == "train":
        raise CliError(f"--precision={args.precision} is for --mode=eval|predict|export (the inference compute "
                       "precision). Training in bfloat16 is --mixed_precision=bfloat16 (float16 on GPUs: "
                       "--mixed_precision=float16).")
    if args.precision not in PRECISIONS:
        raise CliError(f"--precision={args.precision} must be float32 or bfloat16 (the Keras mixed_bfloat16 policy: "
                       "bfloat16 compute, float32 weights; fast on CPUs with AVX512-BF16/AMX and on TPUs); leave it "
                       "out for the config's eval.precision (float32 in the presets).")


def _check_positive(args: RunArgs) -> None:
    for name in ("steps", "batch_size", "checkpoint_every"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise CliError(f"--{name}={value} must be a positive integer.")
    if args.eval_every is not None and args.eval_every < 0:
        raise CliError(f"--eval_every={args.eval_every} must be >= 0 (0 = no evaluation during training).")


def check_args(args: RunArgs) -> None:
    """Refuses an unknown mode, non-positive counts, a bad ``--mixed_precision`` or ``--precision``, and
    predict without images.

    Raises:
        CliError: the message names the flag and what to pass instead.
    """
    if args.mode not in MODES:
        raise CliError(f"--mode={args.mode} is not one of {', '.join(MODES)}.")
    _check_positive(args)
    _check_mixed_precision(args)
    _check_precision(args)
    if args.mode == "predict" and not args.images:
        raise CliError("--mode=predict needs --images, e.g. --images='photos/*.jpg' --output_dir=predictions/.")
