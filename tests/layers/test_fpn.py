"""Tests for mrcnn_tf2.layers.fpn: against a plain NumPy FPN, config round trip, checkpoints, shapes."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn_tf2.layers.fpn import FPN

_BACKBONE_CHANNELS = (4, 6, 8, 10)  # C2..C5


def _features(image_hw=(64, 64), batch=2, seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    h, w = image_hw
    return [rng.normal(size=(batch, h // 2**level, w // 2**level, c)).astype(np.float32)
            for level, c in zip(range(2, 6), _BACKBONE_CHANNELS)]


def _randomize(layer: keras.layers.Layer, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        w.assign(rng.normal(0.5, 0.3, size=tuple(w.shape)).astype(np.float32))


# --- NumPy reference ------------------------------------------------------------------------


def _np_conv(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """'same' convolution, stride 1, odd square kernel [k, k, Cin, Cout]."""
    k = kernel.shape[0]
    pad = k // 2
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    h, w = x.shape[1:3]
    out = np.zeros(x.shape[:3] + (kernel.shape[-1],), np.float64)
    for i in range(k):
        for j in range(k):
            out += xp[:, i:i + h, j:j + w, :] @ kernel[i, j]
    return out if bias is None else out + bias


def _np_group_norm(x: np.ndarray, groups: int, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    b, h, w, c = x.shape
    g = x.reshape(b, h, w, groups, c // groups)
    mean = g.mean(axis=(1, 2, 4), keepdims=True)
    var = g.var(axis=(1, 2, 4), keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(b, h, w, c) * gamma + beta


def _np_conv_norm(fpn: FPN, name: str, x: np.ndarray) -> np.ndarray:
    """Applies the FPN's sublayers ``{name}_conv`` (+ ``{name}_gn``) with their weights, in NumPy."""
    layers = {layer.name: layer for layer in fpn._flatten_layers(include_self=False)}
    conv = layers[f"{name}_conv"]
    y = _np_conv(x, conv.kernel.numpy(), conv.bias.numpy() if conv.use_bias else None)
    if fpn.norm == "gn":
        gn = layers[f"{name}_gn"]
        y = _np_group_norm(y, gn.groups, gn.gamma.numpy(), gn.beta.numpy(), gn.epsilon)
    return y


def _np_fpn(fpn: FPN, features: list[np.ndarray]) -> dict[int, np.ndarray]:
    """Lin et al. 2017, written out level by level."""
    c = dict(zip(range(2, 6), features))
    top = min(fpn.max_level, 5)
    merged = {top: _np_conv_norm(fpn, f"lateral_p{top}", c[top])}
    for level in range(top - 1, fpn.min_level - 1, -1):
        upsampled = merged[level + 1].repeat(2, axis=1).repeat(2, axis=2)
        merged[level] = _np_conv_norm(fpn, f"lateral_p{level}", c[level]) + upsampled
    out = {level: _np_conv_norm(fpn, f"output_p{level}", merged[level])
           for level in range(fpn.min_level, top + 1)}
    for level in range(top + 1, fpn.max_level + 1):
        out[level] = out[level - 1][:, ::2, ::2, :]  # max-pool, kernel 1, stride 2
    return out


# --- tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", [None, "gn"])
def test_matches_numpy_reference(norm):
    fpn = FPN(min_level=2, max_level=6, num_channels=8, norm=norm, gn_groups=4)
    features = _features()
    fpn(features)  # build
    _randomize(fpn)
    outputs = fpn(features)
    expected = _np_fpn(fpn, features)
    assert sorted(outputs) == [2, 3, 4, 5, 6]
    for level in range(2, 7):
        assert tuple(outputs[level].shape) == (2, 64 // 2**level, 64 // 2**level, 8)
        np.testing.assert_allclose(outputs[level].numpy(), expected[level], rtol=1e-4, atol=1e-4,
                                   err_msg=f"P{level}")
    if norm == "gn":
        assert not any(layer.use_bias for layer in fpn._flatten_layers(include_self=False)
                       if isinstance(layer, keras.layers.Conv2D))


def test_levels_2_to_5_as_in_shapes_preset():
    fpn = FPN(min_level=2, max_level=5, num_channels=16)
    outputs = fpn(_features(image_hw=(128, 128)))
    assert {level: tuple(t.shape) for level, t in outputs.items()} == {
        2: (2, 32, 32, 16), 3: (2, 16, 16, 16), 4: (2, 8, 8, 16), 5: (2, 4, 4, 16)}


def test_min_level_3_skips_c2_and_pools_two_extra_levels():
    fpn = FPN(min_level=3, max_level=7, num_channels=8)
    outputs = fpn(_features(image_hw=(128, 128)))
    assert {level: tuple(t.shape[1:3]) for level, t in outputs.items()} == {
        3: (16, 16), 4: (8, 8), 5: (4, 4), 6: (2, 2), 7: (1, 1)}
    assert not any(layer.name.startswith("lateral_p2") for layer in fpn._flatten_layers())


def test_config_round_trip_gives_same_layer():
    fpn = FPN(min_level=2, max_level=6, num_channels=8, norm="gn", gn_groups=2, name="fpn")
    config = fpn.get_config()
    expected = {"min_level": 2, "max_level": 6, "num_channels": 8, "backbone_min_level": 2,
                "backbone_max_level": 5, "norm": "gn", "gn_groups": 2}
    assert {k: config[k] for k in expected} == expected
    clone = FPN.from_config(config)
    assert clone.get_config() == config
    features = _features()
    fpn(features)
    clone(features)
    _randomize(fpn)
    clone.set_weights(fpn.get_weights())
    for level, tensor in fpn(features).items():
        np.testing.assert_allclose(clone(features)[level].numpy(), tensor.numpy(), rtol=1e-6)
    # Registered: a generic Keras deserializer finds it by name.
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(fpn))
    assert isinstance(restored, FPN) and restored.get_config() == config


def test_checkpoint_round_trip(tmp_path):
    features = _features()
    fpn = FPN(num_channels=8, norm="gn", gn_groups=4)
    fpn(features)
    _randomize(fpn)
    path = tf.train.Checkpoint(fpn=fpn).write(str(tmp_path / "fpn"))
    saved = [name for name, _ in tf.train.list_variables(path) if name.startswith("fpn/")]
    assert len(saved) == len(fpn.weights) == 4 * 2 * 3  # 4 levels x (lateral, output) x (kernel, gamma, beta)
    other = FPN(num_channels=8, norm="gn", gn_groups=4)
    other(features)
    tf.train.Checkpoint(fpn=other).read(path).assert_consumed()
    for level, tensor in fpn(features).items():
        np.testing.assert_array_equal(other(features)[level].numpy(), tensor.numpy())


def test_unknown_spatial_size_in_functional_model():
    inputs = [keras.Input((None, None, c)) for c in _BACKBONE_CHANNELS]
    outputs = FPN(num_channels=8)(inputs)
    assert all(tuple(t.shape) == (None, None, None, 8) for t in outputs.values())
    model = keras.Model(inputs, outputs)
    result = model(_features(image_hw=(64, 128), batch=1))
    assert {level: tuple(t.shape[1:3]) for level, t in result.items()} == {
        2: (16, 32), 3: (8, 16), 4: (4, 8), 5: (2, 4), 6: (1, 2)}


def test_invalid_arguments():
    with pytest.raises(ValueError, match="levels"):
        FPN(min_level=1)
    with pytest.raises(ValueError, match="divisible"):
        FPN(num_channels=20, norm="gn", gn_groups=8)
    with pytest.raises(ValueError, match="norm"):
        FPN(norm="layer")
    with pytest.raises(ValueError, match="expects 4 backbone features"):
        FPN(num_channels=8)(_features()[:3])


def test_builder_gives_the_fpn_batch_norms_the_model_momentum():
    """model.bn_momentum reaches the FPN's batch norms (as it reaches the heads'), through get_config too."""
    from mrcnn_tf2 import build_model, config

    cfg = config.preset("shapes", overrides={"model.fpn_norm": "bn", "model.bn_momentum": 0.8})
    fpn = build_model(cfg).fpn
    norms = [layer for layer in fpn._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) >= 6 and all(layer.momentum == 0.8 for layer in norms), [n.momentum for n in norms]
    assert fpn.get_config()["norm_momentum"] == 0.8
    assert config.preset("torchvision_r50_fpn_v2").model.bn_momentum == 0.9  # torch's momentum 0.1
