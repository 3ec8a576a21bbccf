"""Which weights a run starts from: ``--model`` (imagenet, last, none, a checkpoint or a .weights.h5 file)
resolved against the run directory, before TensorFlow starts. Loading them is ``mrcnn_tf2.cli.weights``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from mrcnn_tf2.cli.run_args import CliError, RunArgs

from mrcnn_tf2 import config as config_lib
from mrcnn_tf2.run_dir import RunPaths, find_checkpoint, run_config_path

__all__ = ["WeightsSource", "resolve_weights", "weights_run_config", "weights_exist"]


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


def weights_run_config(spec: str) -> str:
    """The run ``config.json`` of ``--model=PATH`` (a .weights.h5 file, a prefix or a folder), '' if none."""
    if spec.endswith(".h5"):
        return run_config_path(spec) if os.path.isfile(spec) else ""
    prefix = find_checkpoint(spec)
    return run_config_path(prefix) if prefix else ""


def weights_exist(spec: str) -> bool:
    return os.path.isfile(spec) if spec.endswith(".h5") else find_checkpoint(spec) is not None


def resolve_weights(args: RunArgs, cfg: config_lib.Config, paths: RunPaths) -> WeightsSource:
    """``--model`` as a ``WeightsSource``; the default is ``none`` for training (``imagenet`` with frozen
    batch norm) and ``last`` otherwise.

    Raises:
        CliError: no such weights, ``--model=last`` without a checkpoint, a training run into a folder
            that already holds checkpoints without ``--model=last``, or random weights outside training.
    """
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
