"""Numbered training checkpoints (model, optimizer, global step, epoch) that refuse non-finite weights."""

from __future__ import annotations

import os
from typing import Any

import keras
import tensorflow as tf

__all__ = ["NonFiniteWeightsError", "CheckpointKeeper"]


class NonFiniteWeightsError(RuntimeError):
    """Raised instead of writing a checkpoint whose variables hold NaN or Inf."""


def _variable_label(variable: Any) -> str:
    return str(getattr(variable, "path", None) or variable.name)


class CheckpointKeeper:
    """Numbered checkpoints of model, optimizer, global step and epoch under ``<model_dir>/checkpoints``.

    Files are ``ckpt-<step>.index`` / ``ckpt-<step>.data-*`` plus the ``checkpoint`` state file, the
    last ``max_to_keep`` are kept. Writes are atomic in the sense that matters for resuming: TF writes
    the data into temporary files, renames them, then writes the ``.index`` and only then rewrites the
    ``checkpoint`` state file (itself atomically, through a temporary file and a rename). A kill in the
    middle of ``save`` therefore leaves at worst stray temporary files and a checkpoint that no state
    file points to; ``latest_path``/``restore_latest`` still return the previous whole checkpoint.

    Create it (and build the model and optimizer, e.g. ``optimizer.build(model.trainable_variables)``)
    under the training strategy's scope before restoring, so every value has a variable to land in.

    Attributes:
        step: ``tf.Variable`` int64 scalar, the global step of the last save/restore.
        epoch: ``tf.Variable`` int64 scalar, the epoch counter.
        directory: ``<model_dir>/checkpoints``.
    """

    def __init__(self, model_dir: str, model: keras.Model,
                 optimizer: keras.optimizers.Optimizer | None = None, max_to_keep: int = 5):
        self.directory = os.path.join(model_dir, "checkpoints")
        self.model = model
        self.optimizer = optimizer
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        objects: dict[str, Any] = {"model": model, "step": self.step, "epoch": self.epoch}
        if optimizer is not None:
            objects["optimizer"] = optimizer
        self.checkpoint = tf.train.Checkpoint(**objects)
        self.manager = tf.train.CheckpointManager(self.checkpoint, directory=self.directory,
                                                  max_to_keep=max_to_keep, checkpoint_name="ckpt")

    def non_finite_variables(self) -> list[str]:
        """Names (paths) of the floating-point model and optimizer variables that hold NaN or Inf."""
        variables = list(self.model.variables)
        if self.optimizer is not None:
            variables += list(self.optimizer.variables)
        bad = []
        for v in variables:
            if not tf.as_dtype(v.dtype).is_floating:
                continue
            if not bool(tf.reduce_all(tf.math.is_finite(tf.convert_to_tensor(v)))):
                bad.append(_variable_label(v))
        return bad

    def save(self, step: int, epoch: int | None = None) -> str:
        """Writes ``ckpt-<step>`` and returns its path.

        Saving the step of the newest checkpoint again with the same epoch (a step checkpoint that
        coincides with the end of an epoch) returns that checkpoint without rewriting it.

        Args:
            step: the global step; the checkpoint number and the value stored in ``self.step``.
            epoch: stored in ``self.epoch`` when given.

        Raises:
            NonFiniteWeightsError: some variable is NaN/Inf; nothing is written.
        """
        step = int(step)
        latest = self.latest_path()
        same_epoch = epoch is None or int(epoch) == int(self.epoch.numpy())
        if latest is not None and latest.endswith(f"ckpt-{step}") and same_epoch:
            return latest
        bad = self.non_finite_variables()
        if bad:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise NonFiniteWeightsError(f"refusing to checkpoint step {step}: non-finite values in {shown}; "
                                        f"the last good checkpoint is {latest or 'none'}")
        self.step.assign(step)
        if epoch is not None:
            self.epoch.assign(int(epoch))
        return self.manager.save(checkpoint_number=step)

    def latest_path(self) -> str | None:
        """The newest checkpoint prefix (``.../checkpoints/ckpt-<step>``), or None."""
        return self.manager.latest_checkpoint

    @property
    def checkpoints(self) -> list[str]:
        """The kept checkpoint prefixes, oldest first."""
        return list(self.manager.checkpoints)

    def restore(self, path: str, strict: bool = True) -> str:
        """Restores a checkpoint prefix, or the newest checkpoint in a directory; returns the prefix.

        Args:
            path: ``.../ckpt-<step>`` or a directory holding a ``checkpoint`` state file.
            strict: require every existing model/optimizer variable to be found in the checkpoint
                (resume); False ignores unmatched values on both sides.

        Raises:
            FileNotFoundError: no checkpoint at ``path``.
        """
        prefix = tf.train.latest_checkpoint(path) if os.path.isdir(path) else path
        if not prefix or not tf.io.gfile.exists(prefix + ".index"):
            raise FileNotFoundError(f"no checkpoint found at '{path}'")
        status = self.checkpoint.restore(prefix)
        if strict:
            status.assert_existing_objects_matched()
        else:
            status.expect_partial()
        return prefix

    def restore_latest(self, strict: bool = True) -> str | None:
        """Restores the newest checkpoint of this keeper's directory; returns its prefix, or None."""
        latest = self.latest_path()
        if latest is None:
            return None
        return self.restore(latest, strict=strict)
