"""Tiny settings shared by the CLI tests: the shapes preset on a handful of images, batch 2."""

from __future__ import annotations

import os

from mrcnn_tf2.cli.common import RunArgs

# 8 training and 4 validation images of the built-in shapes dataset (128 px), small eval batches.
TINY_OVERRIDES = ["data.shapes_num_train=8", "data.shapes_num_val=4", "eval.batch_size=2",
                  "eval.num_visualizations=2", "train.log_every=1"]


def tiny_args(root: str, mode: str, model_dir: str = "run", overrides: tuple[str, ...] = (), **flags) -> RunArgs:
    """RunArgs on the tiny shapes dataset under ``root`` (generated on first use), quiet."""
    flags.setdefault("config", "shapes" if mode == "train" else None)
    return RunArgs(mode=mode, model_dir=os.path.join(root, model_dir), data_dir=os.path.join(root, "shapes"),
                   config_override=TINY_OVERRIDES + list(overrides), verbose=False, **flags)
