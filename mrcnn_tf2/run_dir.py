"""The run directory on disk: its ``config.json``, its newest checkpoint, restoring the model from it.

A run directory (``--model_dir``, DESIGN.md section 4) holds ``config.json`` (the resolved config with
the dataset's category mapping) and ``checkpoints/`` (``tf.train.CheckpointManager``: ``ckpt-<step>``
prefixes and a ``checkpoint`` state file). These helpers are shared by the command line (``cli/``) and
``mrcnn_tf2.Detector.from_run``. Reading configs and finding checkpoints needs no TensorFlow;
``restore_model`` imports it when called.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

from mrcnn_tf2 import config as config_lib

__all__ = ["CONFIG_FILE", "CHECKPOINTS_DIR", "RunPaths", "read_config", "write_config", "find_checkpoint",
           "run_config_path", "restore_model"]

CONFIG_FILE = "config.json"
CHECKPOINTS_DIR = "checkpoints"


@dataclass(frozen=True)
class RunPaths:
    """The run directory layout (DESIGN.md section 4): config, checkpoints, evaluation output."""

    model_dir: str

    @property
    def checkpoints(self) -> str:
        return os.path.join(self.model_dir, CHECKPOINTS_DIR)

    @property
    def config(self) -> str:
        return os.path.join(self.model_dir, CONFIG_FILE)

    @property
    def eval_dir(self) -> str:
        return os.path.join(self.model_dir, "eval")

    @property
    def metrics(self) -> str:
        return os.path.join(self.model_dir, "eval", "metrics.json")

    def results(self, results_file: str) -> str:
        """``--results_file``: absolute paths as given, relative ones inside the run directory."""
        return results_file if os.path.isabs(results_file) else os.path.join(self.model_dir, results_file)


def read_config(path: str) -> config_lib.Config:
    """Reads a ``config.json`` written by :func:`write_config`.

    Raises:
        config.ConfigError: the file is missing, is not JSON, or holds an unknown key.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise config_lib.ConfigError(f"could not read the run config '{path}': {e}") from None
    return config_lib.from_dict(data)


def write_config(cfg: config_lib.Config, path: str) -> str:
    """Writes the resolved config (with the category mapping) as JSON, atomically; returns ``path``."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(config_lib.to_dict(cfg), f, indent=2)
    os.replace(tmp, path)
    return path


def find_checkpoint(path: str) -> str | None:
    """The newest checkpoint prefix in a checkpoint directory or a run directory, or a prefix as is.

    Reads the ``checkpoint`` state file of ``tf.train.CheckpointManager`` without TensorFlow. Returns
    None when nothing usable (a prefix whose ``.index`` file exists) is found.
    """
    if os.path.isfile(path + ".index"):
        return path
    for directory in (path, os.path.join(path, CHECKPOINTS_DIR)):
        state = os.path.join(directory, "checkpoint")
        if not os.path.isfile(state):
            continue
        with open(state, encoding="utf-8") as f:
            match = re.search(r'^model_checkpoint_path:\s*"(.*)"\s*$', f.read(), re.MULTILINE)
        if match:
            prefix = match.group(1)
            prefix = prefix if os.path.isabs(prefix) else os.path.join(directory, prefix)
            if os.path.isfile(prefix + ".index"):
                return prefix
    return None


def run_config_path(weights_path: str) -> str:
    """The ``config.json`` of the run a checkpoint prefix or weights file belongs to ('' if none)."""
    here = os.path.dirname(os.path.abspath(weights_path))
    for directory in (here, os.path.dirname(here)):
        candidate = os.path.join(directory, CONFIG_FILE)
        if os.path.isfile(candidate):
            return candidate
    return ""


def restore_model(model: Any, prefix: str) -> None:
    """Restores the model part of a training checkpoint (optimizer values in it are ignored).

    Args:
        model: a built ``MaskRCNN`` (``build_model(cfg)``) of the config the checkpoint was written with.
        prefix: a checkpoint prefix (``.../checkpoints/ckpt-<step>``).

    Raises:
        AssertionError, ValueError: a model variable is missing from the checkpoint or has another shape.
    """
    import tensorflow as tf

    status = tf.train.Checkpoint(model=model).restore(prefix)
    status.assert_existing_objects_matched()
    status.expect_partial()
