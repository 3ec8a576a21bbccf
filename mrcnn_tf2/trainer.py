"""The training loop: one code path for every tf.distribute strategy.

Keras 3 ``model.fit`` does not run under MultiWorkerMirroredStrategy (keras-team/keras#20585), so
training calls ``model.train_step`` through ``strategy.run`` inside one ``tf.function``, with a Keras
``Progbar`` for the console and hooks for checkpoints, TensorBoard and evaluation. ``model.fit``
still works for users who call it directly.

Resuming is exact: the loop starts at ``keeper.step`` (restored with the model and the optimizer,
whose ``iterations`` drive the LR schedule) and asks the dataset function for the stream after the
batches already consumed (:func:`distributed_dataset`). ``mrcnn_tf2.pipelines.input_pipeline.build_dataset``
skips them at the record level (``skip_batches``: the skipped examples are never decoded or augmented)
and its order and augmentation seeds derive from each example's position in the stream, so the resumed
run sees exactly the batches an uninterrupted run would have seen. The model's anchor and ROI sampling
is stateless too, seeded from ``optimizer.iterations`` (``MaskRCNN.step_seed``), so with TensorFlow's op
determinism on (``--deterministic``) the resumed steps are bit-identical to uninterrupted ones.
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from mrcnn_tf2 import training

__all__ = [
    "TrainingDivergedError",
    "LoopOptions",
    "EvalOutput",
    "is_chief",
    "batches_per_step",
    "DatasetFn",
    "distributed_dataset",
    "make_step_fn",
    "current_learning_rate",
    "train",
]


class TrainingDivergedError(RuntimeError):
    """The loss became NaN/Inf; nothing was saved after the last good checkpoint."""


@dataclass
class LoopOptions:
    """What the loop needs besides the model (plain values; the CLI fills them from the config).

    Attributes:
        model_dir: run directory (checkpoints in ``checkpoints/``, TensorBoard in ``train/``, ``eval/``).
        total_steps: the global step to train up to.
        global_batch_size: images per step over all replicas (for img/s).
        checkpoint_every: save every this many steps (and at the last step, the end of each epoch and
            when ``max_seconds`` stops the run).
        log_every: TensorBoard scalars every this many steps (and the console, when it is not a TTY).
        eval_every: call ``eval_fn`` every this many steps and at the last step; 0 = never.
        steps_per_epoch: for the epoch counter and epoch-end checkpoints; 0 = unknown (epoch stays 0).
        max_seconds: stop after the step during which the training time passes this many seconds
            (wall-clock time since the loop started, tracing and checkpoints included, evaluations
            excluded); 0 = no limit.
        eval_at_seconds: also call ``eval_fn`` when the training time passes each of these marks.
        verbose: show the progress bar.
    """

    model_dir: str
    total_steps: int
    global_batch_size: int
    checkpoint_every: int = 1000
    log_every: int = 20
    eval_every: int = 0
    steps_per_epoch: int = 0
    max_seconds: float = 0.0
    eval_at_seconds: Sequence[float] = field(default_factory=tuple)
    verbose: bool = True


@dataclass
class EvalOutput:
    """What an evaluation hook returns: scalars for TensorBoard and optional images ([N, H, W, 3] uint8)."""

    scalars: Mapping[str, float]
    images: np.ndarray | None = None


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


def batches_per_step(input_context: tf.distribute.InputContext) -> int:
    """Per-replica batches one input pipeline yields per global step (its replicas take one each)."""
    return max(1, input_context.num_replicas_in_sync // max(1, input_context.num_input_pipelines))


DatasetFn = Callable[[tf.distribute.InputContext, int], tf.data.Dataset]


def distributed_dataset(strategy: tf.distribute.Strategy, dataset_fn: DatasetFn,
                        start_step: int = 0) -> tf.distribute.DistributedDataset:
    """The per-replica input, positioned after ``start_step`` global steps.

    Args:
        strategy: the distribution strategy.
        dataset_fn: ``(input_context, skip_batches) -> tf.data.Dataset`` of per-replica batches, an
            endless stream that starts after ``skip_batches`` of this pipeline's batches, e.g.
            ``lambda ctx, n: build_dataset(cfg, "train", ctx, skip_batches=n)`` or
            ``lambda ctx, n: my_dataset(ctx).skip(n)``.
        start_step: global steps already trained; each pipeline skips
            ``start_step * batches_per_step(ctx)`` batches.
    """

    def fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        return dataset_fn(ctx, int(start_step) * batches_per_step(ctx))

    return strategy.distribute_datasets_from_function(fn)


def make_step_fn(model: keras.Model, strategy: tf.distribute.Strategy) -> Callable[[Any], dict[str, tf.Tensor]]:
    """A ``tf.function(iterator) -> logs`` running one distributed ``model.train_step``.

    The logs are the model's tracker values (``loss``, each loss term, ``grad_norm``) averaged over
    replicas; reset the trackers before each call to get this step's values. XLA is the model's
    business (``model.jit_compile``: MaskRCNN compiles its per-replica forward, loss and gradient and
    keeps the cross-replica reduction and the update outside XLA), so nothing is compiled here.
    """

    @tf.function
    def step(iterator):
        logs = strategy.run(model.train_step, args=(next(iterator),))
        return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in logs.items()}

    return step


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    """The learning rate the next step uses (the schedule at ``optimizer.iterations``)."""
    lr = optimizer.learning_rate
    return float(lr.numpy() if hasattr(lr, "numpy") else lr)


def _diverged(step: int, logs: Mapping[str, float], last_saved: str | None) -> TrainingDivergedError:
    values = ", ".join(f"{k}={v:.4g}" for k, v in logs.items())
    return TrainingDivergedError(
        f"training diverged at step {step}: a non-finite value appeared ({values}). No checkpoint was "
        f"written after it; the last good checkpoint is {last_saved or 'none (no checkpoint yet)'}. Lower "
        "train.learning_rate or train.clip_norm, raise train.warmup_steps, or check the data, then resume "
        "with --model=last.")


def train(model: keras.Model, optimizer: keras.optimizers.Optimizer, strategy: tf.distribute.Strategy,
          dataset_fn: DatasetFn, options: LoopOptions,
          keeper: training.CheckpointKeeper, eval_fn: Callable[[int], EvalOutput] | None = None,
          chief: bool = True) -> dict[str, float]:
    """Trains from ``keeper.step`` up to ``options.total_steps``.

    Args:
        model: a built MaskRCNN compiled with ``optimizer`` (both created under ``strategy.scope()``).
        optimizer: the model's optimizer, already built (``optimizer.build(model.trainable_variables)``)
            and restored when resuming.
        strategy: the distribution strategy.
        dataset_fn: ``(input_context, skip_batches) -> tf.data.Dataset`` of per-replica batch dicts, an
            endless stream positioned after ``skip_batches`` batches (see :func:`distributed_dataset`);
            the loop passes what ``keeper.step`` steps consumed.
        options: loop settings.
        keeper: checkpoints of model, optimizer, step and epoch (restored already when resuming).
        eval_fn: ``step -> EvalOutput``, called at the evaluation points (on the chief only).
        chief: whether this process writes checkpoints and logs to ``options.model_dir``.

    Returns:
        The last step's logs as floats (``loss``, the loss terms, ``grad_norm``, ``images_per_sec``,
        ``learning_rate``) plus ``step``; only ``step`` when there was nothing to train.

    Raises:
        TrainingDivergedError: a non-finite loss or gradient norm (the norm may overflow under dynamic
            loss scaling: that step is skipped by the optimizer); the message names the step and the last
            good checkpoint, and no checkpoint is written after it.
    """
    start = int(keeper.step.numpy())
    last_saved = keeper.latest_path()
    logs: dict[str, float] = {"step": float(start)}
    if start >= options.total_steps:
        return logs
    write_dir = options.model_dir if chief else tempfile.mkdtemp(prefix="mrcnn_worker_")
    logger = training.TensorBoardLogger(options.model_dir, enabled=chief)
    saver = keeper
    if not chief:  # non-chief workers must take part in saving (collectives), into a throwaway dir
        saver = training.CheckpointKeeper(write_dir, keeper.model, keeper.optimizer, 1)
        saver.step.assign(keeper.step)
        saver.epoch.assign(keeper.epoch)
    iterator = iter(distributed_dataset(strategy, dataset_fn, start))
    step_fn = make_step_fn(model, strategy)

    remaining = options.total_steps - start
    interactive = options.verbose and sys.stdout.isatty()
    if options.verbose:
        print(f"Training steps {start + 1}..{options.total_steps} ({remaining} steps, "
              f"global batch {options.global_batch_size})", flush=True)
    progbar = keras.utils.Progbar(remaining, verbose=1 if options.verbose else 0, unit_name="step",
                                  stateful_metrics=["img/s", "lr"])
    # Dynamic loss scaling (mixed float16) skips steps whose gradients overflow: an Inf gradient norm
    # is then expected, not divergence.
    overflow_ok = {"grad_norm"} if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) else set()
    pending_marks = sorted(float(s) for s in options.eval_at_seconds)
    train_seconds = eval_seconds = 0.0
    loop_start = window_start = time.perf_counter()
    window_images = 0
    step = start
    try:
        while step < options.total_steps:
            step += 1
            for tracker in model.metrics:
                tracker.reset_state()
            out = step_fn(iterator)
            step_logs = {k: float(v) for k, v in out.items()}
            if not all(math.isfinite(v) for k, v in step_logs.items() if k not in overflow_ok):
                raise _diverged(step, step_logs, last_saved)
            train_seconds = time.perf_counter() - loop_start - eval_seconds
            window_images += options.global_batch_size
            step_logs["images_per_sec"] = window_images / max(time.perf_counter() - window_start, 1e-9)
            step_logs["learning_rate"] = current_learning_rate(optimizer)
            logs = step_logs

            out_of_time = 0 < options.max_seconds <= train_seconds
            last = step == options.total_steps or out_of_time
            if options.verbose and (interactive or step % options.log_every == 0 or last):
                shown = [(k, v) for k, v in logs.items() if k.startswith("loss")]
                shown += [("img/s", logs["images_per_sec"]), ("lr", logs["learning_rate"])]
                progbar.update(step - start, shown, finalize=last)
            if step % options.log_every == 0 or last:
                logger.scalars("train", logs, step)
                window_start, window_images = time.perf_counter(), 0

            epoch = step // options.steps_per_epoch if options.steps_per_epoch else 0
            epoch_end = bool(options.steps_per_epoch) and step % options.steps_per_epoch == 0
            if step % options.checkpoint_every == 0 or epoch_end or last:
                try:
                    path = saver.save(step, epoch)
                except training.NonFiniteWeightsError:
                    raise _diverged(step, logs, last_saved) from None
                if chief:
                    last_saved = path

            due = bool(options.eval_every) and (step % options.eval_every == 0 or last)
            while pending_marks and train_seconds >= pending_marks[0]:
                pending_marks.pop(0)
                due = True
            if eval_fn is not None and chief and due:
                tic = time.perf_counter()
                result = eval_fn(step)
                logger.scalars("eval", result.scalars, step)
                if result.images is not None and len(result.images):
                    logger.images("eval", "detections", result.images, step)
                logger.flush()
                eval_seconds += time.perf_counter() - tic
            if out_of_time:
                if options.verbose:
                    print(f"Stopped at step {step}: the time budget of {options.max_seconds:.0f} s is used.",
                          flush=True)
                break
    finally:
        logger.close()
        if not chief:
            shutil.rmtree(write_dir, ignore_errors=True)
    logs["step"] = float(step)
    logs["train_seconds"] = train_seconds
    return logs
