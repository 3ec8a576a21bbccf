"""``--mode=train``: strategy, model, optimizer, weights, then ``mrcnn_tf2.trainer.train``.

Writes ``<model_dir>/config.json`` (the resolved config with the category mapping) before the first
step, checkpoints to ``<model_dir>/checkpoints/ckpt-<step>``, TensorBoard to ``<model_dir>/train`` and,
with ``train.eval_every`` (``--eval_every``), COCO AP and a few validation images to ``<model_dir>/eval``.
Under ``--strategy=multi_worker`` only the chief (worker 0, or the ``chief`` task) writes there; the
other workers save into temporary folders that are removed at the end.

The LR schedule's decay points are absolute steps (``train.decay_steps``), resolved when a run starts
and stored in ``config.json`` (:func:`resolve_decay_steps`): a resume with a larger ``--steps`` or a new
``--train_layers`` keeps them, so the LR never jumps back up; new ones must be passed explicitly.

``--deterministic`` (``train.deterministic``) calls ``tf.config.experimental.enable_op_determinism()``
(``run`` switches it off again when it returns, ``setup`` alone leaves it on); every run seeds Python,
NumPy and TensorFlow from ``data.seed``, the model's samplers draw statelessly from (``data.seed``,
global step, replica id) and the input pipeline from (``data.seed``, example position). With it, N
steps and N/2 + N/2 resumed steps give bit-identical checkpoints.

``--mixed_precision`` sets the global Keras policy (``mixed_float16``/``mixed_bfloat16``) for the run;
``run`` restores the previous policy when it returns (``setup`` alone leaves it set). ``--jit_compile``
sets ``model.jit_compile``: the model compiles its per-replica forward pass, losses and gradients.

Test hook: with the environment variable ``MRCNN_TF2_WEIGHTS_DUMP=<file.npz>``, ``run`` writes the final
model weights (``{weight.path: value}``) of this process there, so a test can check that every worker of
a multi-worker run ends with the same weights.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from mrcnn_tf2.cli.common import CliError, Prepared, write_config
from mrcnn_tf2.cli.evaluate import evaluate_model, metric_scalars
from mrcnn_tf2.cli.weights import load_weights, restore_training_state
from mrcnn_tf2.pipelines.coco import dataset_paths
from mrcnn_tf2.pipelines.input_pipeline import build_dataset
from tensorflow.python.framework import config as tf_config  # disable_op_determinism has no public name

from mrcnn_tf2 import config as config_lib
from mrcnn_tf2 import evaluation, trainer, training
from mrcnn_tf2.builder import build_model

__all__ = ["WEIGHTS_DUMP_ENV", "count_train_images", "resolve_decay_steps", "TrainSession", "setup", "run"]

WEIGHTS_DUMP_ENV = "MRCNN_TF2_WEIGHTS_DUMP"


def count_train_images(cfg: config_lib.Config) -> int:
    """Images in the training set (0 when unknown), for the epoch counter."""
    paths = dataset_paths(cfg, "train")
    if paths.tfrecords:
        from mrcnn_tf2.pipelines.tfrecord import read_dataset_info

        return int(read_dataset_info(paths.tfrecords).get("num_images", 0))
    with open(paths.annotations, encoding="utf-8") as f:
        return len(json.load(f).get("images", []))


def resolve_decay_steps(prep: Prepared) -> config_lib.Config:
    """``prep.cfg`` with absolute ``train.decay_steps``: what ``config.json`` stores and the optimizer uses.

    The rule (detectron2's ``SOLVER.STEPS``, made sticky across resumes):

    - decay steps the user gives for this run win: ``--config_override=train.decay_steps=[...]`` (an
      empty list re-derives them from ``train.decay_fractions`` of this run's ``train.steps``), or a
      ``--config`` file that sets them;
    - resuming (``--model=last``, also with a new ``--train_layers`` or ``--steps``), the previous run's
      decay steps are kept, unless this run changes ``train.schedule`` or ``train.decay_fractions``
      (a run directory written before decay steps existed gets them from its own ``train.steps``);
    - otherwise they are resolved from this run's ``train.steps`` (``training.absolute_decay_steps``).

    The cosine schedule follows the same rule with one step, its end: resuming with a larger
    ``--steps`` keeps the end, so the LR stays 0 past it (a message says so); pass
    ``train.decay_steps=[N]`` to stretch the cosine to N (the LR then rises: you asked for it).
    """
    cfg, previous, t = prep.cfg, prep.previous_cfg, prep.cfg.train
    keys = {item.split("=", 1)[0].strip() for item in prep.args.config_override}
    from_run = prep.config_source == prep.paths.config  # the base config is this run's config.json
    if "train.decay_steps" in keys or (t.decay_steps and not from_run):
        steps = training.absolute_decay_steps(t)
    elif (prep.weights.kind == "last" and previous is not None and previous.train.schedule == t.schedule
          and previous.train.decay_fractions == t.decay_fractions):
        steps = training.absolute_decay_steps(previous.train)
    else:
        steps = training.absolute_decay_steps(dataclasses.replace(t, decay_steps=()))
    return config_lib.validate(dataclasses.replace(cfg, train=dataclasses.replace(t, decay_steps=steps)))


@dataclass
class TrainSession:
    """A model ready to train: what ``trainer.train`` takes (benchmarks adjust ``options`` or ``eval_fn``)."""

    cfg: config_lib.Config
    strategy: tf.distribute.Strategy
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    keeper: training.CheckpointKeeper
    options: trainer.LoopOptions
    chief: bool
    eval_fn: Callable[[int], trainer.EvalOutput] | None = None

    def dataset_fn(self, ctx: tf.distribute.InputContext, skip_batches: int) -> tf.data.Dataset:
        return build_dataset(self.cfg, "train", ctx, skip_batches=skip_batches)

    def evaluate(self, step: int, verbose: bool = True) -> trainer.EvalOutput:
        """COCO AP on the validation set and a few drawn images, for the loop's evaluation hook."""
        result = evaluate_model(self.model, self.cfg, self.cfg.eval.num_visualizations, verbose=False)
        if verbose:
            table = evaluation.format_metrics(result.metrics).splitlines()[:3]
            print(f"\nevaluation at step {step}:\n" + "\n".join(table), flush=True)
        return trainer.EvalOutput(metric_scalars(result.metrics), result.images)

    def train(self) -> dict[str, float]:
        return trainer.train(self.model, self.optimizer, self.strategy, self.dataset_fn, self.options,
                             self.keeper, eval_fn=self.eval_fn, chief=self.chief)


def setup(prep: Prepared) -> TrainSession:
    """Creates the strategy, writes config.json, builds model and optimizer and loads the weights.

    Also sets the global Keras dtype policy from ``train.mixed_precision`` (``float32`` when empty) and
    ``model.jit_compile`` from ``train.jit_compile``; ``run`` restores the policy afterwards, callers of
    ``setup`` alone restore it themselves. Likewise ``train.deterministic`` turns on TensorFlow's op
    determinism for the process. The config gets absolute decay steps (:func:`resolve_decay_steps`).
    """
    cfg, args, paths = resolve_decay_steps(prep), prep.args, prep.paths
    strategy = training.create_strategy(args.strategy, args.tpu)  # first: multi_worker wants it before any op
    if cfg.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    # The config decides (float32 unless train.mixed_precision): layers take their dtype policy when built.
    mixed = cfg.train.mixed_precision
    keras.mixed_precision.set_global_policy(f"mixed_{mixed}" if mixed else "float32")
    chief = trainer.is_chief(strategy)
    staged = (prep.weights.kind == "last" and prep.previous_cfg is not None
              and prep.previous_cfg.model.train_layers != cfg.model.train_layers)
    global_batch = cfg.train.batch_size
    if global_batch % strategy.num_replicas_in_sync:
        raise CliError(f"train.batch_size={global_batch} must be divisible by the "
                       f"{strategy.num_replicas_in_sync} replicas of --strategy={args.strategy}")
    keras.utils.set_random_seed(cfg.data.seed)  # Python, NumPy and TensorFlow: reproducible initialization
    with strategy.scope():
        model = build_model(cfg)
        optimizer = training.build_optimizer(cfg.train, global_batch, cfg.train.mixed_precision)
        model.compile(optimizer=optimizer, jit_compile=False)
        # The model compiles its per-replica part itself; the loop's step function is never XLA-compiled.
        model.jit_compile = cfg.train.jit_compile
        optimizer.build(model.trainable_variables)
        keeper = training.CheckpointKeeper(paths.model_dir, model, optimizer, cfg.train.keep_checkpoints)
        if prep.weights.kind == "last":
            restored = restore_training_state(keeper, optimizer, prep.previous_cfg, staged)
            loaded = (f"resuming {restored} at step {int(keeper.step.numpy())}"
                      + (f" (train_layers {prep.previous_cfg.model.train_layers} -> {cfg.model.train_layers}: "
                         "momentum restarts)" if staged else ""))
        else:
            loaded = load_weights(model, prep.weights, cfg)
    if chief:  # after the weights loaded: a failed resume leaves the previous config.json in place
        os.makedirs(paths.model_dir, exist_ok=True)
        write_config(cfg, paths.config)
    if args.verbose:
        trainable = sum(int(v.numpy().size) for v in model.trainable_variables)
        print(f"config: {prep.config_source} -> {paths.config}; {cfg.model.num_classes - 1} classes "
              f"({', '.join(cfg.data.category_names)}); {trainable:,} trainable parameters "
              f"(train_layers={cfg.model.train_layers}); {strategy.num_replicas_in_sync} replica(s)\n{loaded}",
              flush=True)
        t = cfg.train
        if t.schedule == "cosine" and t.decay_steps and t.steps > t.decay_steps[0]:
            print(f"note: the cosine schedule ends at step {t.decay_steps[0]} (train.decay_steps), before "
                  f"train.steps={t.steps}: the LR is 0 from there. To stretch it, pass "
                  f"--config_override=train.decay_steps=[{t.steps}].", flush=True)
    options = trainer.LoopOptions(
        model_dir=paths.model_dir, total_steps=cfg.train.steps, global_batch_size=global_batch,
        checkpoint_every=cfg.train.checkpoint_every, log_every=cfg.train.log_every,
        eval_every=cfg.train.eval_every, steps_per_epoch=count_train_images(cfg) // global_batch,
        verbose=args.verbose)
    session = TrainSession(cfg, strategy, model, optimizer, keeper, options, chief)
    if cfg.train.eval_every:
        session.eval_fn = lambda step: session.evaluate(step, args.verbose)
    return session


def run(prep: Prepared) -> dict[str, Any]:
    """Trains up to ``train.steps``; returns the last step's logs (see ``trainer.train``).

    The global Keras dtype policy and TensorFlow's op determinism are restored afterwards, so a notebook
    or test that calls this with ``--mixed_precision`` or ``--deterministic`` gets the defaults again.
    """
    policy = keras.mixed_precision.global_policy()
    determinism = tf_config.is_op_determinism_enabled()
    try:
        session = setup(prep)
        logs = session.train()
        dump = os.environ.get(WEIGHTS_DUMP_ENV)
        if dump:
            np.savez(dump, **{w.path: w.numpy() for w in session.model.weights})
    finally:
        keras.mixed_precision.set_global_policy(policy)
        if not determinism and tf_config.is_op_determinism_enabled():
            tf_config.disable_op_determinism()
    if prep.args.verbose and session.chief:
        print(f"checkpoints: {session.keeper.directory} (newest: {session.keeper.latest_path()})\n"
              f"TensorBoard: tensorboard --logdir {prep.paths.model_dir}", flush=True)
    return logs
