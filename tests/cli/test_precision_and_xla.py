"""--mixed_precision and --jit_compile through the CLI (in-process, a few steps of the tiny shapes run)."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import cli
from cli import train as train_cli
from mrcnn_tf2 import trainer
from tests.cli.common import tiny_args


@pytest.fixture
def sessions(monkeypatch):
    """Captures the TrainSession that ``cli.run`` builds, to look at its model afterwards."""
    captured: list[train_cli.TrainSession] = []
    real_setup = train_cli.setup

    def setup(prep):
        captured.append(real_setup(prep))
        return captured[-1]

    monkeypatch.setattr(train_cli, "setup", setup)
    yield captured
    keras.mixed_precision.set_global_policy("float32")  # in case a failing run left it set


@pytest.mark.parametrize("precision", ["bfloat16", pytest.param("float16", marks=pytest.mark.slow)])
def test_mixed_precision_trains_with_finite_losses_and_restores_the_policy(tmp_path, sessions, precision):
    logs = cli.run(tiny_args(str(tmp_path), "train", steps=3, batch_size=2, checkpoint_every=100, model="none",
                             mixed_precision=precision))
    assert logs["step"] == 3
    losses = {k: v for k, v in logs.items() if k.startswith("loss")}
    assert len(losses) == 6 and all(math.isfinite(v) and v > 0 for v in losses.values()), logs
    model, optimizer = sessions[0].model, sessions[0].optimizer
    # The layers computed in the low precision with float32 variables.
    assert model.backbone.compute_dtype == precision and model.mask_head.compute_dtype == precision
    assert {v.dtype for v in model.trainable_variables} == {"float32"}
    assert all(np.isfinite(v.numpy()).all() for v in model.trainable_variables)
    if precision == "float16":  # dynamic loss scaling; the first steps may overflow (grad_norm inf: skipped)
        assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        assert 0 < float(optimizer.dynamic_scale.numpy()) <= 2.0**15
    else:
        assert not isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        assert math.isfinite(logs["grad_norm"]) and logs["grad_norm"] > 0
    assert keras.mixed_precision.global_policy().name == "float32"  # restored by cli.run


def test_jit_compile_flag_sets_the_models_attribute(tmp_path):
    """XLA lives in the model (``MaskRCNN.jit_compile``); the CLI only passes the flag on."""
    prep = cli.prepare(tiny_args(str(tmp_path), "train", steps=1, batch_size=2, model="none", jit_compile=True))
    session = train_cli.setup(prep)
    assert session.model.jit_compile is True
    prep = cli.prepare(tiny_args(str(tmp_path), "train", model_dir="plain", steps=1, batch_size=2, model="none"))
    assert train_cli.setup(prep).model.jit_compile is False


@pytest.mark.slow
def test_whole_replica_step_compiles_with_xla_in_bfloat16(tmp_path):
    """What a TPU replica compiles: forward, losses, gradients, clipping, optimizer update, in bfloat16.

    ``model.jit_compile`` selects the static-shape path; wrapping the whole ``train_step`` in one XLA
    function then puts the update into the same program, as ``TPUStrategy`` does (a TPU itself cannot be
    tested here).
    """
    prep = cli.prepare(tiny_args(str(tmp_path), "train", steps=2, batch_size=2, model="none",
                                 mixed_precision="bfloat16", jit_compile=True))
    try:
        session = train_cli.setup(prep)
        model, strategy = session.model, session.strategy
        replica_step = tf.function(model.train_step, jit_compile=True)

        @tf.function
        def step(iterator):
            logs = strategy.run(replica_step, args=(next(iterator),))
            return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in logs.items()}

        iterator = iter(trainer.distributed_dataset(strategy, session.dataset_fn))
        before = [v.numpy() for v in model.trainable_variables]
        for _ in range(2):
            logs = {k: float(v) for k, v in step(iterator).items()}
        assert all(math.isfinite(v) for v in logs.values()) and logs["loss"] > 0, logs
        assert int(session.optimizer.iterations.numpy()) == 2
        moved = sum(not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables))
        assert moved > len(before) // 2
    finally:
        keras.mixed_precision.set_global_policy("float32")
