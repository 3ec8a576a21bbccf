"""Tests for mrcnn_tf2.trainer: the strategy-agnostic loop, on a tiny linear model (fast)."""

from __future__ import annotations

import glob
import math
import os
import tempfile
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn_tf2 import trainer
from mrcnn_tf2.checkpoints import CheckpointKeeper
from mrcnn_tf2.lr_schedule import learning_rate_schedule
from mrcnn_tf2.strategy import create_strategy


class TinyLinear(keras.Model):
    """y = w x + b with a MaskRCNN-like train_step (loss / replicas) and a record of the last input."""

    def __init__(self):
        super().__init__(name="tiny_linear")
        self.dense = keras.layers.Dense(1, kernel_initializer=keras.initializers.Constant(0.5))
        self.last_x = self.add_weight(shape=(), initializer="zeros", trainable=False, name="last_x")
        self.trackers = [keras.metrics.Mean(name="loss"), keras.metrics.Mean(name="grad_norm")]

    def call(self, x):
        return self.dense(x)

    def train_step(self, data):
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(self(data["x"]) - data["y"]))
            scaled = loss / replicas
        grads = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        self.last_x.assign(data["x"][0, 0])
        for tracker, value in zip(self.trackers, (loss, tf.linalg.global_norm(grads))):
            tracker.update_state(value)
        return {t.name: t.result() for t in self.trackers}

    @property
    def metrics(self):
        return list(self.trackers)


def _dataset_fn(nan_at: int = -1):
    """Element i: x = i / 10, y = 2 x + 1 (NaN for element ``nan_at``); per-replica batches, endless."""

    def fn(ctx: tf.distribute.InputContext, skip_batches: int) -> tf.data.Dataset:
        def element(i):
            x = tf.cast(i, tf.float32) / 10.0
            y = tf.where(tf.equal(i, nan_at), float("nan"), 2.0 * x + 1.0)
            return {"x": tf.reshape(x, [1]), "y": tf.reshape(y, [1])}

        return tf.data.Dataset.range(10**6).map(element).batch(ctx.get_per_replica_batch_size(2)).skip(skip_batches)

    return fn


def _setup(model_dir, strategy=None):
    strategy = strategy or tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        model = TinyLinear()
        model(tf.zeros([1, 1]))
        schedule = learning_rate_schedule(0.05, 10, 2, 0.1, "cosine", (), 0.1)
        optimizer = keras.optimizers.SGD(schedule, momentum=0.9)
        model.compile(optimizer=optimizer)
        optimizer.build(model.trainable_variables)
        keeper = CheckpointKeeper(str(model_dir), model, optimizer, max_to_keep=10)
    return strategy, model, optimizer, keeper


def _options(model_dir, **kwargs):
    base = dict(model_dir=str(model_dir), total_steps=5, global_batch_size=2, checkpoint_every=2, log_every=1,
                verbose=False)
    return trainer.LoopOptions(**{**base, **kwargs})


def _ckpts(model_dir):
    return sorted(int(p.rsplit("-", 1)[1][:-6]) for p in glob.glob(os.path.join(model_dir, "checkpoints", "*.index")))


def _scalar_tags(directory):
    tags = set()
    for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags |= {v.tag for v in event.summary.value}
    return tags


def test_trains_checkpoints_at_steps_epoch_ends_and_last_and_logs(tmp_path):
    strategy, model, optimizer, keeper = _setup(tmp_path)
    logs = trainer.train(model, optimizer, strategy, _dataset_fn(), _options(tmp_path, steps_per_epoch=3), keeper)
    assert logs["step"] == 5 and int(optimizer.iterations.numpy()) == 5
    assert _ckpts(tmp_path) == [2, 3, 4, 5]  # every 2 steps, the end of epoch 1 (step 3), the last step
    assert int(keeper.epoch.numpy()) == 1
    # The LR of the next step: cosine after 2 warm-up steps over 10 steps, at iteration 5.
    assert logs["learning_rate"] == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi * 3 / 8)), rel=1e-5)
    assert float(model.last_x.numpy()) == pytest.approx(0.8)  # step 5 read elements 8 and 9
    assert {"loss", "grad_norm", "learning_rate", "images_per_sec"} <= _scalar_tags(tmp_path / "train")


def test_resume_continues_exactly(tmp_path):
    strategy, model, optimizer, keeper = _setup(tmp_path / "a")
    trainer.train(model, optimizer, strategy, _dataset_fn(), _options(tmp_path / "a"), keeper)

    _, model_b, optimizer_b, keeper_b = _setup(tmp_path / "b")
    trainer.train(model_b, optimizer_b, strategy, _dataset_fn(), _options(tmp_path / "b", total_steps=3), keeper_b)
    _, model_c, optimizer_c, keeper_c = _setup(tmp_path / "b")  # a fresh process, as with --model=last
    model_c.dense.kernel.assign([[5.0]])  # the restore must overwrite this
    keeper_c.restore_latest()
    assert int(keeper_c.step.numpy()) == 3 and int(optimizer_c.iterations.numpy()) == 3
    logs = trainer.train(model_c, optimizer_c, strategy, _dataset_fn(), _options(tmp_path / "b"), keeper_c)
    assert logs["step"] == 5
    for got, want in zip(model_c.weights + optimizer_c.variables, model.weights + optimizer.variables):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, err_msg=want.path)
    assert float(model_c.last_x.numpy()) == pytest.approx(0.8)


@pytest.mark.parametrize("name", ["one_device", "mirrored"])
def test_distributed_dataset_skips_consumed_batches(name):
    strategy = create_strategy(name)

    def fn(ctx, skip_batches):
        return tf.data.Dataset.range(100).batch(ctx.get_per_replica_batch_size(4)).skip(skip_batches)

    first = next(iter(trainer.distributed_dataset(strategy, fn, start_step=3)))
    values = np.concatenate([t.numpy() for t in strategy.experimental_local_results(first)])
    np.testing.assert_array_equal(values, [12, 13, 14, 15])  # 3 steps of global batch 4 consumed


def test_non_finite_loss_stops_with_step_and_last_good_checkpoint(tmp_path):
    strategy, model, optimizer, keeper = _setup(tmp_path)
    with pytest.raises(trainer.TrainingDivergedError) as info:
        # Element 6 is in the batch of step 4 (elements 6 and 7).
        trainer.train(model, optimizer, strategy, _dataset_fn(nan_at=6), _options(tmp_path), keeper)
    message = str(info.value)
    assert "step 4" in message and os.path.join("checkpoints", "ckpt-2") in message
    assert _ckpts(tmp_path) == [2]  # nothing after the last good step
    reader = tf.train.load_checkpoint(os.path.join(tmp_path, "checkpoints", "ckpt-2"))
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            assert np.isfinite(value).all(), name


def test_eval_hook_and_time_budget(tmp_path):
    strategy, model, optimizer, keeper = _setup(tmp_path)
    calls = []

    def eval_fn(step):
        calls.append(step)
        return trainer.EvalOutput({"bbox/AP": 0.5}, np.zeros([1, 8, 8, 3], np.uint8))

    trainer.train(model, optimizer, strategy, _dataset_fn(), _options(tmp_path, total_steps=4, eval_every=2),
                  keeper, eval_fn=eval_fn)
    assert calls == [2, 4]
    assert "bbox/AP" in _scalar_tags(tmp_path / "eval")

    strategy, model, optimizer, keeper = _setup(tmp_path / "timed")
    calls.clear()
    logs = trainer.train(model, optimizer, strategy, _dataset_fn(),
                         _options(tmp_path / "timed", max_seconds=1e-9, eval_at_seconds=(0.0,)), keeper,
                         eval_fn=eval_fn)
    assert logs["step"] == 1 and _ckpts(tmp_path / "timed") == [1] and calls == [1]


def test_is_chief():
    def strategy(task_type, task_id, cluster):
        resolver = SimpleNamespace(task_type=task_type, task_id=task_id,
                                   cluster_spec=lambda: SimpleNamespace(as_dict=lambda: cluster))
        return SimpleNamespace(cluster_resolver=resolver)

    workers = {"worker": ["a:1", "b:1"]}
    assert trainer.is_chief(tf.distribute.OneDeviceStrategy("/cpu:0"))
    assert trainer.is_chief(strategy("worker", 0, workers))
    assert not trainer.is_chief(strategy("worker", 1, workers))
    assert trainer.is_chief(strategy("chief", 0, {"chief": ["c:1"], **workers}))
    assert not trainer.is_chief(strategy("worker", 0, {"chief": ["c:1"], **workers}))


def test_non_chief_writes_nothing_to_model_dir_and_removes_its_temporary_checkpoints(tmp_path, monkeypatch):
    """A multi-worker non-chief saves (saving is collective) into a temporary folder, removed at the end."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    made = []
    real_mkdtemp = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda **kw: made.append(real_mkdtemp(**kw)) or made[-1])
    saved = []
    real_save = CheckpointKeeper.save

    def save(self, step, epoch=None):
        saved.append((self.directory, step))
        return real_save(self, step, epoch)

    monkeypatch.setattr(CheckpointKeeper, "save", save)

    strategy, model, optimizer, keeper = _setup(tmp_path / "run")
    logs = trainer.train(model, optimizer, strategy, _dataset_fn(), _options(tmp_path / "run"), keeper, chief=False)
    assert logs["step"] == 5
    assert not (tmp_path / "run").exists()  # no checkpoints/, no train/ events
    assert len(made) == 1 and saved == [(os.path.join(made[0], "checkpoints"), s) for s in (2, 4, 5)]
    assert os.listdir(scratch) == []  # the temporary folder is gone
