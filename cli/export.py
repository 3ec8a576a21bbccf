"""``--mode=export --format=tflite``: a ``.tflite`` file for LiteRT (``export/tflite.py`` converts).

``--mode=export`` with the default ``--format=saved_model`` writes a versioned SavedModel (``cli._export``);
this module handles ``--format=tflite [--quantize=...] [--calibration_images=...]`` and refuses flag
combinations that mean nothing.
"""

from __future__ import annotations

from mrcnn_tf2.cli.run_args import CliError, RunArgs
from mrcnn_tf2.cli.run_config import Prepared

__all__ = ["FORMATS", "QUANTIZE_MODES", "check_flags", "run_tflite"]

FORMATS = ("saved_model", "tflite")
QUANTIZE_MODES = ("none", "float16", "dynamic", "int8")


def check_flags(args: RunArgs) -> None:
    """Refuses a bad ``--format``/``--quantize`` value or combination (no TensorFlow needed).

    Raises:
        CliError: naming the flag and the fix.
    """
    if args.format not in FORMATS:
        raise CliError(f"--format={args.format} is not one of {', '.join(FORMATS)}.")
    if args.quantize not in QUANTIZE_MODES:
        raise CliError(f"--quantize={args.quantize} is not one of {', '.join(QUANTIZE_MODES)}.")
    if args.format != "tflite" and args.quantize != "none":
        raise CliError(f"--quantize={args.quantize} applies to --format=tflite only; a SavedModel's compute "
                       "precision is --precision=float32|bfloat16: drop --quantize or add --format=tflite.")
    if args.format == "tflite" and args.precision == "bfloat16":
        raise CliError("--precision=bfloat16 applies to SavedModel exports (and eval/predict); a TFLite model's "
                       "precision is --quantize=none|float16|dynamic|int8: drop --precision or use "
                       "--quantize=float16.")


def run_tflite(prep: Prepared) -> str:
    """Writes ``<export_dir>/tflite/model_<quantize>.tflite`` from the checkpoint; returns its path.

    Raises:
        CliError: bad flags (:func:`check_flags`), a checkpoint of another architecture, or an op the
            TFLite converter cannot convert. FileNotFoundError: no checkpoint or no calibration image.
    """
    args = prep.args
    check_flags(args)
    from mrcnn_tf2.export import tflite
    from mrcnn_tf2.export.saved_model import CheckpointMismatchError

    try:
        path = tflite.export_tflite_from_checkpoint(prep.cfg, prep.weights.path, prep.paths.model_dir,
                                                    args.export_dir, args.quantize, args.calibration_images)
    except (CheckpointMismatchError, tflite.TFLiteConversionError) as e:
        raise CliError(str(e)) from None
    if args.verbose:
        print(f"TFLite ({args.quantize}): {path} (from {prep.weights.path})", flush=True)
    return path
