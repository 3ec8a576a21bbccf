"""The command line, for ``python main.py`` (a source checkout) and ``mrcnn-tf2`` (the installed console command).

Both take the same absl flags (``--helpfull`` lists them) and call ``run()``; the work itself is in the mode
modules of this package. Bad input exits with status 2 and one paragraph saying what to change, and so does a
missing TensorFlow (it names the extra to install).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import textwrap
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from mrcnn_tf2.cli.common import DEFAULT_CONFIG, MODES, CliError, RunArgs  # noqa: E402

from mrcnn_tf2 import INSTALL_TENSORFLOW, TENSORFLOW_DISTRIBUTIONS, TENSORFLOW_MISSING  # noqa: E402
from mrcnn_tf2.config import STRATEGIES, TRAIN_LAYERS, ConfigError  # noqa: E402

flags.DEFINE_enum("mode", "train", MODES, "What to do.")
flags.DEFINE_enum("strategy", "one_device", STRATEGIES,
                  "tf.distribute strategy; multi_worker reads the TF_CONFIG environment variable.")
flags.DEFINE_string("tpu", "", "TPU name, 'local' (a TPU VM) or grpc://host:port for --strategy=tpu (empty: the "
                    "TPU_NAME environment variable or the resolver's default).")
flags.DEFINE_string("config", DEFAULT_CONFIG,
                    "A preset (shapes, coco_r50_fpn, coco_r101_fpn) or a .yaml/.json file. eval/predict/export "
                    "(and train --model=last without --config) use <model_dir>/config.json when it exists.")
flags.DEFINE_multi_string("config_override", [], "key=value with a dotted key, e.g. model.image_size=512; repeatable.")
flags.DEFINE_string("model", "",
                    "Starting weights: imagenet (backbone), last (newest checkpoint in --model_dir: resume), none "
                    "(random), or PATH (a checkpoint prefix, a folder of checkpoints, or a .weights.h5 file; "
                    "layers whose shape differs are skipped). Default: train -> imagenet for frozen_bn configs, "
                    "none otherwise; other modes -> last.")
flags.DEFINE_string("model_dir", "logs", "Run directory: checkpoints/, train/ and eval/ TensorBoard logs, "
                    "config.json, eval/metrics.json.")
flags.DEFINE_string("data_dir", None, "Where the built-in shapes dataset is generated (default data/shapes).")
flags.DEFINE_string("train_annotations", None, "COCO instances JSON of the training set.")
flags.DEFINE_string("train_images", None, "Image folder of the training set.")
flags.DEFINE_string("val_annotations", None, "COCO instances JSON of the validation set.")
flags.DEFINE_string("val_images", None, "Image folder of the validation set.")
flags.DEFINE_string("results_file", "submission.json",
                    "eval: COCO results file; a relative path is inside --model_dir.")
flags.DEFINE_string("export_dir", "exported/maskrcnn", "export: the SavedModel base path (versions go below).")
flags.DEFINE_string("images", "", "predict: a glob of images (quote it), e.g. 'photos/*.jpg'.")
flags.DEFINE_string("output_dir", "predictions", "predict: where the PNGs and JSONs go.")
flags.DEFINE_integer("steps", None, "Total training steps (overrides train.steps).")
flags.DEFINE_integer("batch_size", None, "Global batch size (train.batch_size; eval.batch_size in eval mode).")
flags.DEFINE_integer("checkpoint_every", None, "Checkpoint every N steps (train.checkpoint_every).")
flags.DEFINE_integer("eval_every", None, "Evaluate on the validation set every N steps during training; 0 = never.")
flags.DEFINE_enum("train_layers", None, TRAIN_LAYERS,
                  "Trainable part (model.train_layers): heads, 3+, 4+, 5+ or all; staged training = heads, "
                  "then all with --model=last.")
flags.DEFINE_string("mixed_precision", "",
                    "train: float16 (GPUs; dynamic loss scaling) or bfloat16 (TPUs, recent CPUs and GPUs): the "
                    "Keras mixed_<dtype> policy, variables stay float32 (train.mixed_precision). Empty: the "
                    "config's value (off in the presets).")
flags.DEFINE_bool("jit_compile", False, "train: compile each replica's forward pass, losses and gradients with "
                  "XLA (train.jit_compile); the cross-replica reduction and the update are not compiled.")
flags.DEFINE_bool("deterministic", False, "train: bit-exact runs and resumes (train.deterministic): TensorFlow's "
                  "op determinism and every seed from data.seed; N steps and N/2 + N/2 resumed steps (--model=last) "
                  "give identical checkpoints. Slower, mostly on GPUs.")

FLAGS = flags.FLAGS


def _known_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input (a message for the user, no traceback)."""
    from mrcnn_tf2.pipelines.coco import DatasetError

    errors: list[type[BaseException]] = [CliError, ConfigError, DatasetError, FileNotFoundError]
    if "tensorflow" in sys.modules:  # these modules import TensorFlow: only look when it is loaded
        from mrcnn_tf2.layers.backbone import WeightsDownloadError
        from mrcnn_tf2.trainer import TrainingDivergedError
        from mrcnn_tf2.training import NonFiniteWeightsError, StrategyError

        errors += [StrategyError, WeightsDownloadError, TrainingDivergedError, NonFiniteWeightsError]
    return tuple(errors)


def _args() -> RunArgs:
    names = [f.name for f in dataclasses.fields(RunArgs) if f.name != "verbose"]
    values = {name: FLAGS[name].value for name in names}
    values["config"] = FLAGS.config if FLAGS["config"].present else None
    return RunArgs(**values)


def _program() -> str:
    """How the user started us, for messages: ``python main.py`` or ``mrcnn-tf2``."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "mrcnn-tf2"
    return f"python {name}" if name.endswith(".py") else name


def _fail(message: str) -> int:
    """Prints one paragraph to stderr and returns the CLI's bad-input status (2)."""
    print(textwrap.fill(" ".join(message.split()), width=110), file=sys.stderr)
    return 2


def _tensorflow_distributions() -> list[str]:
    """The installed distributions that provide the ``tensorflow`` import package (normally exactly one)."""
    from importlib import metadata

    found = []
    for name in TENSORFLOW_DISTRIBUTIONS:
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    if "tensorflow" in found and {"tensorflow-intel", "tensorflow-macos"} & set(found):
        found.remove("tensorflow")  # on those platforms `tensorflow` is a metapackage that requires one of them
    return found


def main(argv: list[str]) -> int:
    """absl main: ``argv`` is what is left after the flags (must be the program name alone); returns the exit status."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:  # TensorFlow's INFO lines drown the progress bar
        logging.set_verbosity(logging.WARNING)
    warnings.filterwarnings("ignore", message=r"`build\(\)` was called on layer 'mask_rcnn'")
    installed = _tensorflow_distributions()
    if len(installed) > 1:
        _fail(f"warning: {len(installed)} TensorFlow distributions are installed ({', '.join(installed)}); they "
              f"overwrite each other's files. Uninstall them all, then install one extra: {INSTALL_TENSORFLOW}.")
    from mrcnn_tf2 import cli

    try:
        cli.run(_args())
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] != "tensorflow":
            raise
        return _fail(f"error: {TENSORFLOW_MISSING}")
    except Exception as e:  # noqa: BLE001 - known input errors become one paragraph, the rest a traceback
        if not isinstance(e, _known_errors()):
            raise
        return _fail(f"error: {e} ({_program()} --helpfull lists every flag.)")
    return 0


def run() -> None:
    """The console entry point (``mrcnn-tf2``) and ``main.py``'s: parses the flags, runs, exits with the status."""
    app.run(main)
