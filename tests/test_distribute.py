"""Distribution: two replicas on two logical CPUs take exactly the step one replica takes.

Both replicas get the same image, and every anchor and ROI is sampled (no random subset), so the
only differences left are how the replica gradients are scaled, summed and clipped.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn_tf2 import build_model, config
from tests.helpers import two_object_batch


def _cfg(clip_norm):
    return config.preset("shapes", overrides={
        "train.clip_norm": clip_norm,
        "model.rpn.anchors_per_image": 4096, "model.rpn.positive_fraction": 1.0,  # all 4080 anchors
        "model.roi.rois_per_image": 256, "model.roi.positive_fraction": 1.0,  # all 200 proposals + gt
    })


def _one_step(strategy, cfg, weights, batch):
    with strategy.scope():
        model = build_model(cfg)
        model.set_weights(weights)
        optimizer = keras.optimizers.SGD(learning_rate=0.01)
        model.compile(optimizer=optimizer, jit_compile=False)
        optimizer.build(model.trainable_variables)
    data = tf.data.Dataset.from_tensors(batch).unbatch().batch(2)
    dist = iter(strategy.experimental_distribute_dataset(data))

    @tf.function
    def step(inputs):
        logs = strategy.run(model.train_step, args=(inputs,))
        return {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in logs.items()}

    logs = {k: float(v) for k, v in step(next(dist)).items()}
    return logs, [v.numpy() for v in model.trainable_variables]


def _initial(cfg):
    """(initial weights, initial trainable values, number of trainable variables): seed 0, the same for any cfg."""
    tf.keras.utils.set_random_seed(0)
    initial = build_model(cfg)
    return initial.get_weights(), [v.numpy() for v in initial.trainable_variables], len(initial.trainable_variables)


@pytest.fixture(scope="module")
def mirrored_clipping_step():
    """One two-replica step with clipping active, the per-replica all-reduce sizes counted while it is traced
    (shared by the equivalence test and the one-all-reduce test: tracing a step is the bulk of their time)."""
    reduced = []
    all_reduce = tf.distribute.ReplicaContext.all_reduce

    def counting(self, reduce_op, value, options=None):
        reduced.append(len(tf.nest.flatten(value)))
        return all_reduce(self, reduce_op, value, options)

    cfg = _cfg(1.0)
    weights, _, num_trainable = _initial(cfg)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tf.distribute.ReplicaContext, "all_reduce", counting)
        logs, variables = _one_step(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), cfg, weights,
                                    two_object_batch(batch=2))
    return logs, variables, reduced, num_trainable


@pytest.mark.slow
@pytest.mark.parametrize("clip_norm", [1e6, 1.0], ids=["no_clipping", "clipping_active"])
def test_two_replicas_equal_one_replica_with_the_same_global_batch(clip_norm, request):
    cfg = _cfg(clip_norm)
    weights, start, _ = _initial(cfg)
    batch = two_object_batch(batch=2)
    one_logs, one_vars = _one_step(tf.distribute.OneDeviceStrategy("/cpu:0"), cfg, weights, batch)
    if clip_norm == 1.0:
        two_logs, two_vars, _, _ = request.getfixturevalue("mirrored_clipping_step")
    else:
        two_logs, two_vars = _one_step(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), cfg, weights, batch)
    if clip_norm < 1e5:
        assert one_logs["grad_norm"] > 10 * clip_norm  # clipping really acts
    for key in ("loss", "loss_rpn_cls", "loss_cls", "loss_mask"):
        np.testing.assert_allclose(two_logs[key], one_logs[key], rtol=1e-4, err_msg=key)
    # The gradient norm carries the same float noise as the updates below (each replica samples with its own
    # seed, so sums run in another order, amplified through the trainable batch norms): 3.8e-4 relative
    # measured with clipping active, deterministically; a wrong scale or a per-replica norm is off by 30-100%.
    np.testing.assert_allclose(two_logs["grad_norm"], one_logs["grad_norm"], rtol=2e-3, err_msg="grad_norm")
    updates = [np.linalg.norm(a - s) for a, s in zip(one_vars, start)]
    diffs = [np.linalg.norm(b - a) for a, b in zip(one_vars, two_vars)]
    total_update = np.sqrt(np.sum(np.square(updates)))
    assert total_update > 1e-3  # the step changed the weights
    # Float reductions in another order through a few dozen trainable batch norms leave ~0.2% of the update;
    # a wrong gradient scale (x2, x0.5) or clipping per replica would leave 30-100%.
    assert np.sqrt(np.sum(np.square(diffs))) < 1e-2 * total_update
    for update, diff in zip(updates, diffs):
        if update > 1e-2 * max(updates):  # BN shifts before another BN have ~0 gradient: noise only
            assert diff < 3e-2 * update


@pytest.mark.slow
def test_xla_compiled_step_equals_the_graph_step():
    """``model.jit_compile``: forward, losses and gradients run as one XLA computation (on the CPU here)."""
    cfg = _cfg(1e6)
    tf.keras.utils.set_random_seed(0)
    weights = build_model(cfg).get_weights()
    batch = two_object_batch(batch=2)
    results = []
    for jit in (False, True):
        model = build_model(cfg)
        model.set_weights(weights)
        optimizer = keras.optimizers.SGD(learning_rate=0.01)
        model.compile(optimizer=optimizer, jit_compile=False)
        optimizer.build(model.trainable_variables)
        model.jit_compile = jit
        logs = tf.function(model.train_step)({k: tf.constant(v) for k, v in batch.items()})
        results.append(({k: float(v) for k, v in logs.items()}, [v.numpy() for v in model.trainable_variables]))
        if jit:
            assert "_xla_losses_and_gradients" in model.__dict__  # the compiled path really ran
    (graph_logs, graph_vars), (xla_logs, xla_vars) = results
    for key in ("loss", "loss_rpn_cls", "loss_cls", "loss_mask", "grad_norm"):
        np.testing.assert_allclose(xla_logs[key], graph_logs[key], rtol=1e-3, err_msg=key)
    start = [w for w, v in zip(weights, build_model(cfg).weights) if v.trainable]
    total_update = np.sqrt(sum(np.sum(np.square(a - s)) for a, s in zip(graph_vars, start)))
    total_diff = np.sqrt(sum(np.sum(np.square(a - b)) for a, b in zip(graph_vars, xla_vars)))
    assert total_update > 1e-3 and total_diff < 1e-2 * total_update


def test_step_seed_is_a_pure_function_of_seed_step_and_replica():
    """The samplers' seed: another per step and per replica, the same in any process (no RNG state)."""
    model = build_model(config.preset("shapes", overrides={"data.seed": 5}), build=False)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

    def seeds(step):
        per_replica = strategy.run(tf.function(lambda: model.step_seed(tf.constant(step, tf.int64))))
        return [tuple(s.numpy()) for s in strategy.experimental_local_results(per_replica)]

    first, again, later = seeds(3), seeds(3), seeds(4)
    assert first == again  # pure: no state advanced between calls
    assert len(set(first)) == 2 and not set(first) & set(later)  # replicas and steps draw apart
    # The fold-in chain written out: [data.seed, 0] -> fold in the step -> fold in the replica id.
    fold = tf.random.experimental.stateless_fold_in
    int64 = lambda x: tf.constant(x, tf.int64)  # noqa: E731
    expected = [tuple(fold(fold(int64([5, 0]), int64(3)), int64(r)).numpy()) for r in (0, 1)]
    assert first == expected


@pytest.mark.slow
def test_gradients_are_all_reduced_once_per_step(mirrored_clipping_step):
    """One all-reduce of the gradients per replica and step: the model's (for clipping), not Keras' again."""
    _, _, reduced, num_trainable = mirrored_clipping_step
    gradient_reductions = [n for n in reduced if n == num_trainable]
    assert gradient_reductions == [num_trainable] * 2, reduced  # once on each of the 2 replicas


def test_compile_defaults_to_no_xla(monkeypatch):
    # Keras' "auto" picks XLA where a GPU is visible; pretend one is, so the default really is tested.
    monkeypatch.setattr(keras.Model, "_resolve_auto_jit_compile", lambda self: True)
    cfg = config.preset("shapes")
    model = build_model(cfg, build=False)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    assert model.jit_compile is False
    model.compile(optimizer=keras.optimizers.SGD(0.01), jit_compile=True)
    assert model.jit_compile is True
    plain = keras.Sequential([keras.layers.Dense(1)])
    plain.compile(optimizer="sgd")
    assert plain.jit_compile is True  # what MaskRCNN would get from Keras' default here
