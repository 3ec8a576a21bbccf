"""Tests for mrcnn_tf2.layers.conv.Conv2D: Winograd at inference only, where it applies, same weights."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn_tf2.layers.conv import Conv2D
from mrcnn_tf2.layers.norm import FoldingConv2D, FrozenBatchNormalization
from mrcnn_tf2.ops.winograd import WINOGRAD_MIN_CHANNELS

CHANNELS = WINOGRAD_MIN_CHANNELS
MIN_PIXELS = 64  # small maps in tests: 8 x 8 and larger use Winograd


def _pair(**kwargs) -> tuple[Conv2D, keras.layers.Conv2D]:
    """Our Conv2D and a keras Conv2D with the same random weights."""
    ours = Conv2D(8, 3, padding="same", winograd_min_pixels=MIN_PIXELS, **kwargs)
    plain = keras.layers.Conv2D(8, 3, padding="same", **kwargs)
    for layer in (ours, plain):
        layer.build((None, None, None, CHANNELS))
    rng = np.random.default_rng(0)
    for a, b in zip(ours.weights, plain.weights):
        value = rng.normal(0, 0.05, size=tuple(a.shape)).astype(np.float32)
        a.assign(value)
        b.assign(value)
    return ours, plain


def _ops(layer, x: np.ndarray, training, dynamic: bool = False) -> set[str]:
    """The op types of the graph of ``layer(x, training=training)``."""
    spec = tf.TensorSpec([None, None, None, x.shape[-1]] if dynamic else x.shape)
    graph = tf.function(lambda t: layer(t, training=training)).get_concrete_function(spec).graph
    types = {op.type for op in graph.get_operations()}
    for function in graph._functions.values():  # the branches of a tf.cond
        types |= {node.op for node in function.definition.node_def}
    return types


def _x(hw: tuple[int, int], seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(2, *hw, CHANNELS)).astype(np.float32)


def test_inference_on_a_large_map_runs_winograd_and_matches_the_direct_convolution():
    ours, plain = _pair(activation="relu")
    x = _x((9, 12))
    assert "BatchMatMulV2" in _ops(ours, x, training=False)
    expected = plain(x).numpy()
    got = ours(x, training=False).numpy()
    assert np.abs(got - expected).max() < 1e-4 * np.abs(expected).max()
    assert not np.array_equal(got, expected)  # another algorithm: not bit-identical


@pytest.mark.parametrize("training", [True, None])
def test_training_or_unsaid_is_exactly_the_keras_convolution(training):
    ours, plain = _pair()
    x = _x((9, 12))
    assert "BatchMatMulV2" not in _ops(ours, x, training=training)
    np.testing.assert_array_equal(ours(x, training=training).numpy(), plain(x).numpy())


def test_small_maps_and_off_stay_direct():
    ours, _ = _pair()
    assert "BatchMatMulV2" not in _ops(ours, _x((7, 9)), training=False)  # 63 pixels < 64
    off = Conv2D(8, 3, padding="same")  # winograd_min_pixels=0
    off.build((None, None, None, CHANNELS))
    assert "BatchMatMulV2" not in _ops(off, _x((32, 32)), training=False)


def test_layers_it_does_not_apply_to_stay_direct():
    x = _x((16, 16))
    for kwargs in ({"strides": 2}, {"dilation_rate": 2}):
        layer = Conv2D(8, 3, padding="same", winograd_min_pixels=MIN_PIXELS, **kwargs)
        assert "BatchMatMulV2" not in _ops(layer, x, training=False)
    valid = Conv2D(8, 3, padding="valid", winograd_min_pixels=MIN_PIXELS)
    assert "BatchMatMulV2" not in _ops(valid, x, training=False)
    few = Conv2D(8, 3, padding="same", winograd_min_pixels=MIN_PIXELS)
    assert "BatchMatMulV2" not in _ops(few, x[..., :CHANNELS // 2], training=False)
    bf16 = Conv2D(8, 3, padding="same", winograd_min_pixels=MIN_PIXELS, dtype="mixed_bfloat16")
    assert "BatchMatMulV2" not in _ops(bf16, x, training=False)


def test_unknown_size_decides_per_call():
    ours, plain = _pair()
    types = _ops(ours, _x((9, 12)), training=False, dynamic=True)
    assert "BatchMatMulV2" in types and ({"If", "StatelessIf"} & types)
    f = tf.function(lambda t: ours(t, training=False),
                    input_signature=[tf.TensorSpec([None, None, None, CHANNELS])])
    for hw in [(4, 5), (9, 12)]:  # below and above the threshold
        x = _x(hw)
        expected = plain(x).numpy()
        assert np.abs(f(x).numpy() - expected).max() < 1e-4 * np.abs(expected).max()


def test_folded_batch_norm_with_winograd():
    conv = FoldingConv2D(8, 3, padding="same", use_bias=False, winograd_min_pixels=MIN_PIXELS)
    bn = FrozenBatchNormalization(epsilon=1e-5)
    x = _x((10, 10))
    reference = bn(conv(x, training=True)).numpy()  # built, unfolded, direct
    rng = np.random.default_rng(2)
    for v in bn.weights:
        v.assign(rng.uniform(0.5, 1.5, size=tuple(v.shape)).astype(np.float32))
    reference = bn(conv(x, training=True)).numpy()
    conv.fold(bn)
    assert "BatchMatMulV2" in _ops(conv, x, training=False)
    folded = bn(conv(x, training=False)).numpy()
    assert np.abs(folded - reference).max() < 1e-4 * np.abs(reference).max()


def test_same_variables_and_config_as_keras():
    ours, plain = _pair(use_bias=True)
    assert [v.path.split("/")[-1] for v in ours.weights] == [v.path.split("/")[-1] for v in plain.weights]
    config = ours.get_config()
    assert config["winograd_min_pixels"] == MIN_PIXELS
    assert Conv2D.from_config(config).winograd_min_pixels == MIN_PIXELS


@pytest.mark.parametrize("use_bias", [False, True])
def test_conv_norm_folds_a_trainable_batch_norm_at_inference_only(use_bias):
    from mrcnn_tf2.layers.norm import conv_norm

    conv = Conv2D(8, 3, padding="same", use_bias=use_bias)
    bn = keras.layers.BatchNormalization(epsilon=1e-5)
    x = _x((6, 6))[..., :16]
    bn(conv(x))  # build both
    rng = np.random.default_rng(4)
    for v in conv.weights + bn.weights:
        v.assign(rng.uniform(0.2, 1.5, size=tuple(v.shape)).astype(np.float32))
    expected = bn(conv(x), training=False).numpy()
    folded = conv_norm(conv, bn, tf.constant(x), training=False).numpy()
    assert np.abs(folded - expected).max() < 1e-5 * np.abs(expected).max()

    def full_size_ops(fn) -> list[str]:  # the ops that make a whole [2, 6, 6, 8] tensor
        graph = tf.function(fn).get_concrete_function(tf.TensorSpec(x.shape)).graph
        return sorted(op.type for op in graph.get_operations() if op.type not in ("Identity", "Placeholder")
                      and any(out.shape.as_list() == [2, 6, 6, 8] for out in op.outputs))

    assert full_size_ops(lambda t: conv_norm(conv, bn, t, training=False)) == ["BiasAdd", "Conv2D"]
    assert len(full_size_ops(lambda t: bn(conv(t), training=False))) > 2
    # Training: batch statistics, exactly the layers one after the other.
    np.testing.assert_array_equal(conv_norm(conv, bn, tf.constant(x), training=True).numpy(),
                                  bn(conv(x), training=True).numpy())


def test_the_builder_turns_it_on_for_cpu_inference_unless_configured_off():
    from mrcnn_tf2 import config
    from mrcnn_tf2.builder import winograd_min_pixels
    from mrcnn_tf2.ops.winograd import WINOGRAD_MIN_PIXELS

    assert not tf.config.list_logical_devices("GPU")  # CI and this machine: CPUs only
    assert winograd_min_pixels(config.preset("torchvision_r50_fpn")) == WINOGRAD_MIN_PIXELS
    off = config.preset("torchvision_r50_fpn", overrides={"eval.winograd": False})
    assert winograd_min_pixels(off) == 0


def test_box_head_runs_its_conv_tower_by_winograd_at_inference_only():
    from mrcnn_tf2.layers.box_head import BoxHead

    kwargs = dict(num_classes=5, fc_dim=32, num_fcs=1, num_convs=2, conv_dim=CHANNELS, norm="bn")
    fast, plain = BoxHead(winograd=True, **kwargs), BoxHead(**kwargs)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 3, 7, 7, CHANNELS)).astype(np.float32)
    fast(x), plain(x)
    for v in fast.weights:
        v.assign(rng.uniform(0.2, 1.2, size=tuple(v.shape)).astype(np.float32) * (0.05 if "kernel" in v.path else 1))
    plain.set_weights(fast.get_weights())

    graph = tf.function(lambda t: fast(t, training=False)).get_concrete_function(tf.TensorSpec(x.shape)).graph
    assert "BatchMatMulV2" in {op.type for op in graph.get_operations()}
    for ours, theirs in zip(fast(x, training=False), plain(x, training=False)):
        ours, theirs = ours.numpy(), theirs.numpy()
        assert np.abs(ours - theirs).max() < 1e-4 * np.abs(theirs).max()
        assert not np.array_equal(ours, theirs)
    for ours, theirs in zip(fast(x, training=True), plain(x, training=True)):  # batch statistics, direct
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    assert BoxHead.from_config(fast.get_config()).winograd
