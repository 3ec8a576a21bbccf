"""Runs one ``model.sync_bn`` check in a fresh process and prints its numbers as JSON (used by test_sync_bn.py).

TensorFlow keeps collective-op state per process: a second ``MirroredStrategy`` whose replicas all-reduce a
different sequence of tensors than an earlier one in the same process can abort with "Shape mismatch in the
collective instance". Each check therefore runs here, in its own process, and the test only compares numbers.

Usage: ``python -m tests.sync_bn_worker layer|model``.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

MOMENTUM = 0.9


def _strategy() -> tf.distribute.MirroredStrategy:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def _per_replica(strategy, variable) -> list[list[float]]:
    return [v.numpy().tolist() for v in strategy.experimental_local_results(variable.value)]


def _stats(strategy, layer) -> dict[str, list]:
    return {"mean": _per_replica(strategy, layer.moving_mean), "var": _per_replica(strategy, layer.moving_variance)}


def layer_check() -> dict:
    """``norm_layer("bn")`` with and without ``synchronized``, one training call, unequal halves per replica."""
    from mrcnn_tf2.layers.norm import norm_layer

    rng = np.random.default_rng(0)
    halves = [rng.normal(0.0, 1.0, (2, 5, 5, 4)).astype(np.float32),
              rng.normal(3.0, 2.0, (3, 5, 5, 4)).astype(np.float32)]
    strategy = _strategy()
    out = {"halves": [h.tolist() for h in halves]}
    for sync in (True, False):
        with strategy.scope():
            layer = norm_layer("bn", "probe", synchronized=sync)
            layer.momentum = MOMENTUM
            layer.build((None, 5, 5, 4))
        inputs = strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(halves[ctx.replica_id_in_sync_group]))
        tf.function(lambda x: strategy.run(lambda t: layer(t, training=True), args=(x,)))(inputs)  # noqa: B023
        out[str(sync)] = _stats(strategy, layer)
    return out


def model_check() -> dict:
    """One real ``train_step`` of the shapes preset with ``model.sync_bn`` under MirroredStrategy, a different
    image per replica; the statistics of every trainable batch norm (backbone, FPN, mask head) and the input
    of the first one."""
    from mrcnn_tf2 import build_model, config
    from mrcnn_tf2.layers.norm import FrozenBatchNormalization
    from tests.helpers import two_object_batch

    strategy = _strategy()
    cfg = config.preset("shapes", overrides={
        "model.norm": "bn", "model.fpn_norm": "bn", "model.roi.head_norm": "bn", "model.sync_bn": True,
        "model.bn_momentum": MOMENTUM, "model.rpn.anchors_per_image": 64, "model.roi.rois_per_image": 16})
    batch = two_object_batch(batch=2)
    batch["images"][1] = batch["images"][1] * 0.5 + 60.0  # the second replica sees a darker, flatter image
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = build_model(cfg)
        optimizer = keras.optimizers.SGD(learning_rate=0.01)
        model.compile(optimizer=optimizer, jit_compile=False)
        optimizer.build(model.trainable_variables)
    probe = keras.Model(model.backbone.input, model.backbone.get_layer("conv").output)
    first_input = [probe(batch["images"][i:i + 1]).numpy().tolist() for i in range(2)]  # before the step
    data = tf.data.Dataset.from_tensors(batch).unbatch().batch(2)
    inputs = next(iter(strategy.experimental_distribute_dataset(data)))
    tf.function(lambda x: strategy.run(model.train_step, args=(x,)))(inputs)
    layers = [sub for sub in model._flatten_layers(include_self=False, recursive=True)
              if isinstance(sub, keras.layers.BatchNormalization) and not isinstance(sub, FrozenBatchNormalization)]
    return {"first_input": first_input, "first": _stats(strategy, model.backbone.get_layer("conv_bn")),
            "layers": {layer.name: _stats(strategy, layer) for layer in layers}}


if __name__ == "__main__":
    print(json.dumps({"layer": layer_check, "model": model_check}[sys.argv[1]]()))
