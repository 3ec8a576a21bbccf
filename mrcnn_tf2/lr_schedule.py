"""Learning-rate schedule: linear warm-up, then step decay or cosine, and the linear scaling rule.

- ``WarmupDecaySchedule`` / ``learning_rate_schedule``: the serializable schedule the optimizer steps.
- ``absolute_decay_steps``: ``train.decay_fractions`` (or the cosine end) as the absolute steps a run
  keeps, so a resumed run with a larger ``--steps`` does not move them.
- ``scaled_learning_rate``: ``base_lr * global_batch_size / reference_batch_size``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from mrcnn_tf2.config import TrainConfig

__all__ = ["WarmupDecaySchedule", "learning_rate_schedule", "absolute_decay_steps", "scaled_learning_rate"]


@keras.saving.register_keras_serializable(package="mrcnn_tf2")
class WarmupDecaySchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, then step decay or cosine decay to 0.

    ``lr(step) = base_lr * warmup(step) * decay(step)`` where ``warmup`` rises linearly from
    ``warmup_factor`` at step 0 to 1 at ``warmup_steps`` (and stays 1 after), and ``decay`` is
    ``decay_rate ** (number of boundaries <= step)`` for ``"step"``, or ``0.5 * (1 + cos(pi * t))`` with
    ``t = (step - warmup_steps) / (end - warmup_steps)`` clipped to [0, 1] for ``"cosine"`` (so the cosine
    starts at ``base_lr`` when warm-up ends, reaches 0 at ``end`` and stays 0). ``step`` is the
    optimizer's 0-based iteration count.

    The boundaries (step) or ``end`` (cosine) are ``decay_steps`` when given: absolute steps, which a
    resumed run keeps whatever its ``total_steps``, so the LR never jumps back up. Without them they
    follow ``total_steps``: ``int(f * total_steps)`` for each of ``decay_fractions``, or ``total_steps``.
    """

    def __init__(self, base_lr: float, total_steps: int, warmup_steps: int = 0, warmup_factor: float = 0.001,
                 schedule: str = "step", decay_fractions: Sequence[float] = (), decay_rate: float = 0.1,
                 decay_steps: Sequence[int] = ()):
        if schedule not in ("step", "cosine"):
            raise ValueError(f"schedule='{schedule}' must be 'step' or 'cosine'")
        if base_lr <= 0 or total_steps < 0 or warmup_steps < 0:
            raise ValueError(f"need base_lr > 0, total_steps >= 0, warmup_steps >= 0; got {base_lr}, "
                             f"{total_steps}, {warmup_steps}")
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)
        self.schedule = schedule
        self.decay_fractions = tuple(float(f) for f in decay_fractions)
        self.decay_rate = float(decay_rate)
        self.decay_steps = tuple(int(b) for b in decay_steps)
        if schedule == "cosine" and len(self.decay_steps) > 1:
            raise ValueError(f"the cosine schedule takes one decay step (its end), got {list(self.decay_steps)}")

    @property
    def boundaries(self) -> tuple[int, ...]:
        """Steps at which the step schedule multiplies the LR by ``decay_rate``."""
        if self.decay_steps:
            return tuple(sorted(self.decay_steps))
        return tuple(sorted(int(f * self.total_steps) for f in self.decay_fractions))

    @property
    def end(self) -> int:
        """The step at which the cosine schedule reaches 0."""
        return self.decay_steps[0] if self.decay_steps else self.total_steps

    def __call__(self, step: Any) -> tf.Tensor:
        step = tf.cast(tf.convert_to_tensor(step), tf.float32)
        if self.warmup_steps > 0:
            alpha = tf.minimum(step / float(self.warmup_steps), 1.0)
            warmup = self.warmup_factor + (1.0 - self.warmup_factor) * alpha
        else:
            warmup = tf.constant(1.0)
        if self.schedule == "step":
            passed = tf.zeros([], tf.float32)
            for boundary in self.boundaries:
                passed += tf.cast(step >= float(boundary), tf.float32)
            decay = tf.pow(self.decay_rate, passed)
        else:
            span = float(max(self.end - self.warmup_steps, 1))
            t = tf.clip_by_value((step - float(self.warmup_steps)) / span, 0.0, 1.0)
            decay = 0.5 * (1.0 + tf.cos(math.pi * t))
        return self.base_lr * warmup * decay

    def get_config(self) -> dict[str, Any]:
        return {
            "base_lr": self.base_lr,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "warmup_factor": self.warmup_factor,
            "schedule": self.schedule,
            "decay_fractions": list(self.decay_fractions),
            "decay_rate": self.decay_rate,
            "decay_steps": list(self.decay_steps),
        }


def learning_rate_schedule(base_lr: float, total_steps: int, warmup_steps: int, warmup_factor: float,
                           schedule: str, decay_fractions: Sequence[float], decay_rate: float,
                           decay_steps: Sequence[int] = ()) -> keras.optimizers.schedules.LearningRateSchedule:
    """A serializable ``WarmupDecaySchedule``; see its docstring for the formula."""
    return WarmupDecaySchedule(base_lr, total_steps, warmup_steps, warmup_factor, schedule,
                               decay_fractions, decay_rate, decay_steps)


def absolute_decay_steps(train_cfg: TrainConfig) -> tuple[int, ...]:
    """The absolute decay steps of a run: ``train.decay_steps`` when set, else resolved from ``train.steps``.

    step schedule: ``sorted(int(f * steps) for f in decay_fractions)``; cosine: ``(steps,)``, where the
    cosine reaches 0. The CLI stores the result in ``config.json`` when a run starts, so a resume with a
    larger ``--steps`` keeps it.
    """
    if train_cfg.decay_steps:
        return tuple(int(b) for b in train_cfg.decay_steps)
    if train_cfg.schedule == "cosine":
        return (int(train_cfg.steps),) if train_cfg.steps > 0 else ()
    return tuple(sorted(int(f * train_cfg.steps) for f in train_cfg.decay_fractions))


def scaled_learning_rate(base_lr: float, global_batch_size: int, reference_batch_size: int) -> float:
    """Linear scaling rule: ``base_lr * global_batch_size / reference_batch_size``."""
    if global_batch_size <= 0 or reference_batch_size <= 0:
        raise ValueError(f"batch sizes must be positive, got global={global_batch_size}, "
                         f"reference={reference_batch_size}")
    return float(base_lr) * global_batch_size / reference_batch_size
