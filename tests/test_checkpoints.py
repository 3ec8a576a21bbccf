"""Tests for mrcnn_tf2.checkpoints: keep-last, restore (also under MirroredStrategy), refusing NaN weights."""

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn_tf2.checkpoints import CheckpointKeeper, NonFiniteWeightsError
from mrcnn_tf2.strategy import create_strategy


def _tiny_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="relu"),
                              keras.layers.Dense(1)])
    return model


def _train_steps(model, opt, n, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        x = tf.constant(rng.normal(size=(8, 3)), tf.float32)
        y = tf.constant(rng.normal(size=(8, 1)), tf.float32)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(x) - y) ** 2)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))


def test_checkpoint_keep_last_and_restore(tmp_path):
    keras.utils.set_random_seed(1)
    model = _tiny_model()
    opt = keras.optimizers.SGD(0.1, momentum=0.9)
    keeper = CheckpointKeeper(str(tmp_path), model, opt, max_to_keep=1)
    assert keeper.latest_path() is None and keeper.restore_latest() is None
    _train_steps(model, opt, 3)
    keeper.save(3, epoch=0)
    _train_steps(model, opt, 3, seed=1)
    path = keeper.save(6, epoch=1)
    assert path.endswith(os.path.join("checkpoints", "ckpt-6"))
    assert keeper.save(6, epoch=1) == path  # same step, same epoch: not rewritten
    weights6 = [w.copy() for w in model.get_weights()]
    slots6 = [v.numpy().copy() for v in opt.variables]
    files = sorted(os.path.basename(f) for f in glob.glob(str(tmp_path / "checkpoints" / "ckpt-*")))
    assert files and all(f.startswith("ckpt-6.") for f in files), files

    fresh = _tiny_model()
    fresh_opt = keras.optimizers.SGD(0.1, momentum=0.9)
    fresh_opt.build(fresh.trainable_variables)
    other = CheckpointKeeper(str(tmp_path), fresh, fresh_opt, max_to_keep=1)
    assert other.restore_latest() == path
    for a, b in zip(fresh.get_weights(), weights6):
        np.testing.assert_array_equal(a, b)
    assert int(fresh_opt.iterations.numpy()) == 6
    for a, b in zip(fresh_opt.variables, slots6):
        np.testing.assert_array_equal(a.numpy(), b)
    assert int(other.step.numpy()) == 6 and int(other.epoch.numpy()) == 1
    assert other.restore(str(tmp_path / "checkpoints")) == path  # a directory means its newest
    with pytest.raises(FileNotFoundError):
        other.restore(str(tmp_path / "checkpoints" / "ckpt-3"))


def test_checkpoint_refuses_non_finite(tmp_path):
    model = _tiny_model()
    opt = keras.optimizers.SGD(0.1)
    keeper = CheckpointKeeper(str(tmp_path), model, opt, max_to_keep=2)
    good = keeper.save(1)
    kernel = model.layers[0].kernel
    value = kernel.numpy()
    value[0, 0] = np.nan
    kernel.assign(value)
    with pytest.raises(NonFiniteWeightsError, match=r"ckpt-1"):
        keeper.save(2)
    assert keeper.latest_path() == good
    assert not glob.glob(str(tmp_path / "checkpoints" / "ckpt-2*"))


def test_checkpoint_under_mirrored_strategy(tmp_path):
    strategy = create_strategy("mirrored")
    with strategy.scope():
        model = _tiny_model()
        opt = keras.optimizers.SGD(0.1, momentum=0.9)
        opt.build(model.trainable_variables)
        keeper = CheckpointKeeper(str(tmp_path), model, opt, max_to_keep=2)
    weights = [w.copy() for w in model.get_weights()]
    path = keeper.save(5, epoch=2)
    with strategy.scope():
        fresh = _tiny_model()
        fresh_opt = keras.optimizers.SGD(0.1, momentum=0.9)
        fresh_opt.build(fresh.trainable_variables)
        other = CheckpointKeeper(str(tmp_path), fresh, fresh_opt, max_to_keep=2)
    assert other.restore_latest() == path
    assert int(other.step.numpy()) == 5 and int(other.epoch.numpy()) == 2
    for a, b in zip(fresh.get_weights(), weights):
        np.testing.assert_array_equal(a, b)
