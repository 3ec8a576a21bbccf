"""The command-line modes behind main.py: train, eval, export and predict.

``run(args)`` validates everything it can before TensorFlow starts (``mrcnn_tf2.cli.common.prepare``), then
imports the mode's module and runs it. Tests and notebooks call it with a ``RunArgs`` directly.
"""

from __future__ import annotations

import importlib
from typing import Any

from mrcnn_tf2.cli.common import CliError, Prepared, RunArgs, prepare

__all__ = ["CliError", "RunArgs", "Prepared", "prepare", "run"]


def _export(prep: Prepared) -> str:
    if prep.weights.kind != "last" and prep.weights.kind != "checkpoint":
        raise CliError("--mode=export reads a training checkpoint: pass --model=last or --model=<checkpoint "
                       "prefix>, not a .weights.h5 file.")
    saved_model = importlib.import_module("mrcnn_tf2.export.saved_model")
    try:
        path = saved_model.export_from_checkpoint(prep.cfg, prep.weights.path, prep.paths.model_dir,
                                                  prep.args.export_dir)
    except saved_model.CheckpointMismatchError as e:
        raise CliError(str(e)) from None
    if prep.args.verbose:
        print(f"SavedModel: {path} (from {prep.weights.path})", flush=True)
    return path


def run(args: RunArgs) -> Any:
    """Runs one mode; returns what the mode returns (train logs, eval metrics, export path, predict summary).

    Raises:
        CliError, mrcnn_tf2.config.ConfigError, mrcnn_tf2.pipelines.coco.DatasetError, ...: bad input.
    """
    prep = prepare(args)
    if args.mode == "export":
        return _export(prep)
    module = importlib.import_module({"train": "mrcnn_tf2.cli.train", "eval": "mrcnn_tf2.cli.evaluate",
                                      "predict": "mrcnn_tf2.cli.predict"}[args.mode])
    return module.run(prep)
