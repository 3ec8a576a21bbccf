"""--mixed_precision and --jit_compile through the CLI (in-process, a few steps of the tiny shapes run).

The checks look at what ran, not at flags: the ops of the traced training step (their dtypes, and which of
them sit inside an XLA-compiled function), the variables, and the weights the steps moved.
"""

from __future__ import annotations

import collections
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from mrcnn_tf2.cli import train as train_cli

from mrcnn_tf2 import cli, trainer
from tests.cli.common import tiny_args

# The heavy ops of a Mask R-CNN step: convolutions, their gradients and the dense layers.
COMPUTE_OPS = ("Conv2D", "DepthwiseConv2dNative", "Conv2DBackpropFilter", "Conv2DBackpropInput", "MatMul")


def _step_graph(step, iterator) -> tuple[list, dict[str, object]]:
    """(nodes of the traced step, {function name: FunctionDef} of the functions it calls)."""
    graph_def = step.get_concrete_function(iterator).graph.as_graph_def()
    return list(graph_def.node), {f.signature.name: f for f in graph_def.library.function}


def _compute_op_dtypes(nodes) -> collections.Counter:
    return collections.Counter((n.op, tf.dtypes.as_dtype(n.attr["T"].type).name)
                               for n in nodes if n.op in COMPUTE_OPS)


def _xla_functions(functions) -> dict[str, object]:
    return {name: f for name, f in functions.items()
            if "_XlaMustCompile" in f.attr and f.attr["_XlaMustCompile"].b}


@pytest.fixture
def step_fns(monkeypatch):
    """Captures the step functions that ``trainer.train`` builds (``trainer.make_step_fn``)."""
    captured = []
    real = trainer.make_step_fn

    def make_step_fn(model, strategy):
        captured.append(real(model, strategy))
        return captured[-1]

    monkeypatch.setattr(trainer, "make_step_fn", make_step_fn)
    return captured


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
def test_mixed_precision_trains_with_finite_losses_and_restores_the_policy(tmp_path, sessions, step_fns, precision):
    logs = cli.run(tiny_args(str(tmp_path), "train", steps=3, batch_size=2, checkpoint_every=100, model="none",
                             mixed_precision=precision))
    assert logs["step"] == 3
    losses = {k: v for k, v in logs.items() if k.startswith("loss")}
    assert len(losses) == 6 and all(math.isfinite(v) and v > 0 for v in losses.values()), logs
    session = sessions[0]
    model, optimizer = session.model, session.optimizer
    # The step that ran: every convolution, its gradients and every dense layer in the low precision.
    (step,) = step_fns
    assert step.experimental_get_tracing_count() == 1
    nodes, functions = _step_graph(step, iter(trainer.distributed_dataset(session.strategy, session.dataset_fn)))
    assert step.experimental_get_tracing_count() == 1  # the graph looked at is the one that ran
    dtypes = _compute_op_dtypes(nodes + [n for f in functions.values() for n in f.node_def])
    assert {dtype for _, dtype in dtypes} == {precision}, dtypes
    assert {op for op, _ in dtypes} >= {"Conv2D", "Conv2DBackpropFilter", "MatMul"}, dtypes
    assert not _xla_functions(functions)  # no --jit_compile: nothing compiled with XLA
    # ... on float32 variables.
    assert {v.dtype for v in model.trainable_variables} == {"float32"}
    assert all(np.isfinite(v.numpy()).all() for v in model.trainable_variables)
    if precision == "float16":  # dynamic loss scaling; the first steps may overflow (grad_norm inf: skipped)
        assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        assert 0 < float(optimizer.dynamic_scale.numpy()) <= 2.0**15
    else:
        assert not isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        assert math.isfinite(logs["grad_norm"]) and logs["grad_norm"] > 0
    assert keras.mixed_precision.global_policy().name == "float32"  # restored by cli.run


def test_jit_compile_puts_the_replica_forward_and_gradients_into_one_xla_function(tmp_path):
    """--jit_compile: the traced training step calls one XLA-compiled function that holds the forward
    convolutions and their gradients; no convolution runs outside it (traced only, not run: compiling
    the model with XLA on a CPU takes minutes, see the slow test below)."""
    prep = cli.prepare(tiny_args(str(tmp_path), "train", steps=1, batch_size=2, model="none", jit_compile=True))
    session = train_cli.setup(prep)
    step = trainer.make_step_fn(session.model, session.strategy)
    nodes, functions = _step_graph(step, iter(trainer.distributed_dataset(session.strategy, session.dataset_fn)))
    xla = _xla_functions(functions)
    assert len(xla) == 1, sorted(functions)
    (compiled,) = xla.values()
    inside = _compute_op_dtypes(compiled.node_def)
    assert inside[("Conv2D", "float32")] > 0 and inside[("Conv2DBackpropFilter", "float32")] > 0, inside
    outside = _compute_op_dtypes(nodes + [n for name, f in functions.items() if name not in xla for n in f.node_def])
    assert not outside, outside
    called = {n.attr["f"].func.name for n in nodes if "f" in n.attr}
    assert set(xla) <= called  # called from the step itself


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
