"""The training loop: one code path for every tf.distribute strategy.

Keras 3 ``model.fit`` does not run under MultiWorkerMirroredStrategy (keras-team/keras#20585), so
training calls ``model.train_step`` through ``strategy.run`` inside one ``tf.function``, with a Keras
``Progbar`` for the console and hooks for checkpoints, TensorBoard and evaluation. ``model.fit``
still works for users who call it directly.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import tensorflow as tf

from mrcnn_tf2 import training


class TrainingDivergedError(RuntimeError):
    """The loss became NaN/Inf; nothing was saved after the last good checkpoint."""


@dataclass
class LoopOptions:
    """What the loop needs besides the model (plain values; main.py fills them from the config)."""

    model_dir: str
    total_steps: int
    global_batch_size: int
    checkpoint_every: int = 1000
    keep_checkpoints: int = 5
    log_every: int = 20
    eval_every: int = 0
    steps_per_epoch: int = 0  # 0 = unknown (epoch counter stays 0)
    verbose: bool = True


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True unless this is a non-chief worker of a multi-worker strategy."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type == "chief":
        return True
    has_chief = "chief" in (resolver.cluster_spec().as_dict() or {})
    return task_type == "worker" and task_id == 0 and not has_chief


def worker_dir(model_dir: str, chief: bool) -> str:
    """The chief writes to model_dir; other workers to a temporary dir that is removed afterwards."""
    return model_dir if chief else tempfile.mkdtemp(prefix="mrcnn_worker_")


def make_step_fn(model: keras.Model, strategy: tf.distribute.Strategy) -> Callable[[Any], dict]:
    """A tf.function that runs one distributed train step and returns replica-averaged logs."""

    @tf.function
    def step(iterator):
        logs = strategy.run(model.train_step, args=(next(iterator),))
        return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in logs.items()}

    return step


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    lr = optimizer.learning_rate
    return float(lr.numpy() if hasattr(lr, "numpy") else lr)


def train(model: keras.Model, optimizer: keras.optimizers.Optimizer, strategy: tf.distribute.Strategy,
          dataset_fn: Callable[[tf.distribute.InputContext, int], tf.data.Dataset], options: LoopOptions,
          keeper: training.CheckpointKeeper, eval_fn: Callable[[int], dict] | None = None,
          chief: bool = True) -> dict[str, float]:
    """Trains until ``options.total_steps`` (resuming from ``keeper.step``).

    Args:
      model: a built MaskRCNN compiled with ``optimizer`` (both created under ``strategy.scope()``).
      optimizer: the model's optimizer, already built (``optimizer.build(model.trainable_variables)``).
      strategy: the distribution strategy.
      dataset_fn: ``(input_context, start_step) -> per-replica batched dataset`` positioned at
        ``start_step`` (for exact resumption).
      options: loop settings.
      keeper: checkpoint manager over model, optimizer, step and epoch (restored already if resuming).
      eval_fn: called with the step at each evaluation; returns scalars to log.
      chief: whether this process writes checkpoints and logs to ``options.model_dir``.

    Returns:
      The last step's logs (float values).

    Raises:
      TrainingDivergedError: a non-finite loss; the message names the step and the last checkpoint.
    """
    start = int(keeper.step.numpy())
    write_dir = worker_dir(options.model_dir, chief)
    logger = training.TensorBoardLogger(options.model_dir, enabled=chief)
    if not chief:  # non-chief workers must still call save (collectives), but into a throwaway dir
        keeper = training.CheckpointKeeper(write_dir, keeper.model, keeper.optimizer, 1)
    dist = strategy.distribute_datasets_from_function(lambda ctx: dataset_fn(ctx, start))
    iterator = iter(dist)
    step_fn = make_step_fn(model, strategy)
    progbar = keras.utils.Progbar(options.total_steps, stateful_metrics=None, verbose=1 if options.verbose else 0,
                                  unit_name="step")
    if start:
        progbar.update(start)
    logs: dict[str, float] = {}
    window_start, window_images = time.perf_counter(), 0
    last_saved = keeper.latest_path()
    try:
        for step in range(start + 1, options.total_steps + 1):
            for tracker in model.metrics:
                tracker.reset_state()
            out = step_fn(iterator)
            logs = {k: float(v) for k, v in out.items()}
            if not math.isfinite(logs["loss"]):
                raise TrainingDivergedError(
                    f"the training loss became {logs['loss']} at step {step} "
                    f"({', '.join(f'{k}={v:.4g}' for k, v in logs.items())}); no checkpoint was written "
                    f"after it. The last good checkpoint is {last_saved or 'none (no checkpoint yet)'}. "
                    "Lower train.learning_rate, raise train.warmup_steps or check the data.")
            window_images += options.global_batch_size
            elapsed = time.perf_counter() - window_start
            logs["images_per_sec"] = window_images / max(elapsed, 1e-9)
            progbar.update(step, [(k, v) for k, v in logs.items() if k.startswith("loss")]
                           + [("img/s", logs["images_per_sec"])], finalize=False)
            if step % options.log_every == 0 or step == options.total_steps:
                logger.scalars("train", {**logs, "learning_rate": current_learning_rate(optimizer)}, step)
                window_start, window_images = time.perf_counter(), 0
            epoch = step // options.steps_per_epoch if options.steps_per_epoch else 0
            epoch_end = options.steps_per_epoch and step % options.steps_per_epoch == 0
            if step % options.checkpoint_every == 0 or epoch_end or step == options.total_steps:
                last_saved = keeper.save(step, epoch)
            if eval_fn is not None and options.eval_every and step % options.eval_every == 0 \
                    and step != options.total_steps:
                logger.scalars("eval", eval_fn(step), step)
        if options.verbose:
            progbar.update(options.total_steps, finalize=True)
    finally:
        logger.close()
        if not chief:
            shutil.rmtree(write_dir, ignore_errors=True)
    return logs


def model_dir_paths(model_dir: str) -> dict[str, str]:
    """The files and folders a run writes under model_dir (DESIGN.md section 4)."""
    return {"checkpoints": os.path.join(model_dir, "checkpoints"), "config": os.path.join(model_dir, "config.json"),
            "train_logs": os.path.join(model_dir, "train"), "eval_logs": os.path.join(model_dir, "eval"),
            "metrics": os.path.join(model_dir, "eval", "metrics.json")}
