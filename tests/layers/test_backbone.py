"""Tests for mrcnn_tf2.layers.backbone: structure vs keras.applications, weight loading, freezing."""


import h5py
import keras
import numpy as np
import pytest

from mrcnn_tf2.layers.backbone import (
    BACKBONE_CHANNELS,
    WeightsDownloadError,
    build_backbone,
    feature_channels,
    load_backbone_weights,
)
from mrcnn_tf2.layers.norm import FrozenBatchNormalization


def _weight_signature(model: keras.Model) -> set[tuple[str, tuple[tuple[int, ...], ...]]]:
    return {(layer.name, tuple(tuple(w.shape) for w in layer.weights))
            for layer in model.layers if layer.weights}


def _randomize(model: keras.Model, seed: int = 0) -> None:
    """Distinct random values in every weight (so a swapped gamma/variance cannot go unnoticed)."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        w.assign(rng.uniform(0.5, 1.5, size=tuple(w.shape)).astype(np.float32))


def _assert_all_loaded(ours: keras.Model, source: keras.Model, skipped: list[str]) -> int:
    src = {layer.name: layer.weights for layer in source.layers}
    checked = 0
    for layer in ours.layers:
        if not layer.weights or layer.name in skipped:
            continue
        for mine, theirs in zip(layer.weights, src[layer.name], strict=True):
            np.testing.assert_array_equal(mine.numpy(), theirs.numpy(), err_msg=mine.path)
            checked += 1
    return checked


@pytest.fixture(scope="module")
def resnet50() -> keras.Model:
    return build_backbone("resnet50")


# ---------------------------------------------------------------------------------------------
# (1) structure: names and weight shapes equal keras.applications'


def test_resnet50_weights_match_keras_applications(resnet50):
    reference = keras.applications.ResNet50(weights=None, include_top=False)
    assert _weight_signature(resnet50) == _weight_signature(reference)
    # Every other layer name too (pads, activations, adds, block outputs), bar the input layer.
    assert {layer.name for layer in reference.layers[1:]} == {layer.name for layer in resnet50.layers[1:]}


def test_resnet101_weights_match_keras_applications():
    ours = build_backbone("resnet101", image_size=64)
    reference = keras.applications.ResNet101(weights=None, include_top=False, input_shape=(64, 64, 3))
    assert _weight_signature(ours) == _weight_signature(reference)
    assert [t.shape[1] for t in ours(np.zeros((1, 64, 64, 3), np.float32))] == [16, 8, 4, 2]


# ---------------------------------------------------------------------------------------------
# (2) loading weights files of keras.applications models


def test_load_resnet50_weights_file(tmp_path, resnet50):
    source = keras.applications.ResNet50(weights=None, include_top=False)
    _randomize(source)
    path = str(tmp_path / "resnet50.weights.h5")
    source.save_weights(path)
    skipped = load_backbone_weights(resnet50, "resnet50", path)
    assert skipped == []
    assert _assert_all_loaded(resnet50, source, skipped) == len(source.weights) == len(resnet50.weights)


def test_load_mobilenetv3_weights_files(tmp_path):
    ours = build_backbone("mobilenetv3", norm="frozen_bn")
    # A full model with the classifier top, saved as .keras: the top is ignored.
    source = keras.applications.MobileNetV3Large(weights=None, include_top=True, include_preprocessing=True)
    _randomize(source, seed=1)
    path = str(tmp_path / "mobilenet.keras")
    source.save(path)
    assert load_backbone_weights(ours, "mobilenetv3", path) == []
    assert _assert_all_loaded(ours, source, []) == len(ours.weights)
    # A .weights.h5 of the include_top=False model.
    source = keras.applications.MobileNetV3Large(weights=None, include_top=False, include_preprocessing=True)
    _randomize(source, seed=2)
    path = str(tmp_path / "mobilenet.weights.h5")
    source.save_weights(path)
    assert load_backbone_weights(ours, "mobilenetv3", path) == []
    assert _assert_all_loaded(ours, source, []) == len(ours.weights)


def _write_legacy_h5(model: keras.Model, path: str) -> None:
    """Keras 2 HDF5 weights layout (that of the published ImageNet files), weights in reverse order."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [layer.name.encode() for layer in model.layers]
        for layer in model.layers:
            group = f.create_group(layer.name)
            names = [f"{layer.name}/{w.name}:0" for w in layer.weights][::-1]
            group.attrs["weight_names"] = [n.encode() for n in names]
            for n, w in zip(names, layer.weights[::-1]):
                group.create_dataset(n, data=w.numpy())


def test_load_legacy_h5_weights_by_layer_and_weight_name(tmp_path):
    ours = build_backbone("mobilenetv3", norm="bn", image_size=64)
    source = keras.applications.MobileNetV3Large(weights=None, include_top=False, include_preprocessing=True)
    _randomize(source, seed=4)
    path = str(tmp_path / "mobilenet_notop.h5")
    _write_legacy_h5(source, path)
    assert load_backbone_weights(ours, "mobilenetv3", path) == []
    assert _assert_all_loaded(ours, source, []) == len(ours.weights)


def test_load_into_group_norm_skips_norm_layers(tmp_path):
    ours = build_backbone("resnet50", norm="gn")
    source = keras.applications.ResNet50(weights=None, include_top=False)
    _randomize(source, seed=3)
    path = str(tmp_path / "resnet50.weights.h5")
    source.save_weights(path)
    skipped = load_backbone_weights(ours, "resnet50", path)
    assert sorted(skipped) == sorted(layer.name for layer in ours.layers if layer.name.endswith("_gn"))
    assert len(skipped) == 53  # one norm per convolution
    assert _assert_all_loaded(ours, source, skipped) == 2 * 53  # conv kernels and biases


def test_load_rejects_mismatched_files(tmp_path):
    ours = build_backbone("mobilenetv3", norm="bn")
    # Nothing in common: a ResNet stem.
    inputs = keras.Input((32, 32, 3))
    stem = keras.Model(inputs, keras.layers.Conv2D(64, 7, name="conv1_conv")(inputs))
    stem.save(str(tmp_path / "resnet.keras"))
    # Same layer names, other shapes (width multiplier 0.75): a clear shape error naming the layer.
    narrow = keras.applications.MobileNetV3Large(weights=None, include_top=False, alpha=0.75,
                                                 include_preprocessing=True, input_shape=(64, 64, 3))
    path = str(tmp_path / "narrow.keras")
    narrow.save(path)
    with pytest.raises(ValueError, match=r"layer '.*' has weight shapes .* but the file has"):
        load_backbone_weights(ours, "mobilenetv3", path)
    # A weights file of another architecture.
    path = str(tmp_path / "narrow.weights.h5")
    narrow.save_weights(path)
    with pytest.raises(ValueError, match="MobileNetV3Large"):
        load_backbone_weights(ours, "mobilenetv3", path)
    with pytest.raises(ValueError, match="share no layer name"):
        load_backbone_weights(ours, "mobilenetv3", str(tmp_path / "resnet.keras"))
    # Layers the backbone lacks (as a ResNet-101 file has for a ResNet-50: conv4_block7..23).
    stem = keras.Model(inputs, keras.layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False,
                                                   name="conv")(inputs))
    extra = keras.layers.Conv2D(4, 1, name="conv4_block7_1_conv")(stem.output)
    keras.Model(inputs, extra).save(str(tmp_path / "bigger.keras"))
    before = [w.numpy() for w in ours.weights]
    with pytest.raises(ValueError, match="lacks .*conv4_block7_1_conv"):
        load_backbone_weights(ours, "mobilenetv3", str(tmp_path / "bigger.keras"))
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, ours.weights))  # left untouched
    with pytest.raises(ValueError, match="neither 'imagenet' nor an existing file"):
        load_backbone_weights(ours, "mobilenetv3", str(tmp_path / "missing.weights.h5"))


# ---------------------------------------------------------------------------------------------
# (3) normalization modes and train_layers


def _bn_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


@pytest.mark.parametrize("name", ["resnet50", "mobilenetv3"])
def test_frozen_bn_is_frozen_and_uses_moving_statistics(name, resnet50):
    model = resnet50 if name == "resnet50" else build_backbone(name, norm="frozen_bn")
    bns = _bn_layers(model)
    assert bns and all(isinstance(bn, FrozenBatchNormalization) and not bn.trainable for bn in bns)
    trainable_ids = {id(w) for w in model.trainable_weights}
    assert not any(id(w) in trainable_ids for bn in bns for w in bn.weights)
    assert model.trainable_weights  # the convolutions still train ("all")
    for bn in bns:  # non-trivial statistics, so batch statistics would give other outputs
        bn.moving_mean.assign(np.full(bn.moving_mean.shape, 0.3, np.float32))
        bn.moving_variance.assign(np.full(bn.moving_variance.shape, 2.0, np.float32))
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    before = [bn.moving_mean.numpy().copy() for bn in bns]
    out_train = model(images, training=True)
    out_infer = model(images, training=False)
    for bn, mean in zip(bns, before):
        np.testing.assert_array_equal(bn.moving_mean.numpy(), mean)
    for a, b in zip(out_train, out_infer):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
    # Unfreezing the enclosing model does not unfreeze frozen batch norm.
    model.trainable = True
    assert not any(bn.trainable for bn in bns)
    assert len(model.trainable_weights) == len(model.weights) - 4 * len(bns)


def test_trainable_bn_updates_statistics():
    model = build_backbone("mobilenetv3", norm="bn")
    bns = _bn_layers(model)
    assert bns and all(type(bn) is keras.layers.BatchNormalization and bn.trainable for bn in bns)
    trainable_ids = {id(w) for w in model.trainable_weights}
    assert all(id(bn.gamma) in trainable_ids for bn in bns)
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    before = bns[0].moving_mean.numpy().copy()
    model(images, training=True)
    assert not np.allclose(bns[0].moving_mean.numpy(), before)


def test_train_layers_4plus_freezes_stem_conv2_conv3():
    model = build_backbone("resnet50", norm="bn", train_layers="4+")
    trainable = {w.path.split("/")[-2] for w in model.trainable_weights}
    frozen = [layer.name for layer in model.layers if layer.weights
              and layer.name.startswith(("conv1_", "conv2_", "conv3_"))]
    live = [layer.name for layer in model.layers if layer.weights
            and layer.name.startswith(("conv4_", "conv5_"))]
    assert frozen and live
    assert not trainable & set(frozen)
    assert set(live) <= trainable
    assert not any(model.get_layer(n).trainable for n in frozen)


@pytest.mark.parametrize("name", ["resnet50", "mobilenetv3"])
def test_train_layers_heads_freezes_everything(name):
    model = build_backbone(name, norm="bn", train_layers="heads")
    assert model.trainable_weights == []
    assert model.weights


def test_invalid_arguments():
    with pytest.raises(ValueError, match="train_layers"):
        build_backbone("mobilenetv3", train_layers="4+")
    with pytest.raises(ValueError, match="norm"):
        build_backbone("mobilenetv3", norm="gn")
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("resnet18")
    with pytest.raises(ValueError, match="multiple of 32"):
        build_backbone("resnet50", image_size=100)


# ---------------------------------------------------------------------------------------------
# (4) output shapes and strides, (5) group norm


@pytest.mark.parametrize("name,image_size", [("resnet50", None), ("mobilenetv3", None), ("mobilenetv3", 128)])
def test_output_shapes_and_strides(name, image_size, resnet50):
    model = resnet50 if name == "resnet50" else build_backbone(name, image_size=image_size)
    channels = BACKBONE_CHANNELS[name]
    assert tuple(model.feature_channels) == channels == tuple(feature_channels(model))
    assert tuple(model.feature_strides) == (4, 8, 16, 32)
    features = model(np.zeros((2, 128, 128, 3), np.float32))
    assert isinstance(features, list) and len(features) == 4
    for feature, stride, depth in zip(features, (4, 8, 16, 32), channels):
        assert tuple(feature.shape) == (2, 128 // stride, 128 // stride, depth)
        assert feature.dtype == "float32"
    if image_size is None:  # any multiple of 32, not only squares
        features = model(np.zeros((1, 64, 96, 3), np.float32))
        assert [tuple(f.shape[1:3]) for f in features] == [(16, 24), (8, 12), (4, 6), (2, 3)]


def test_group_norm_variant():
    model = build_backbone("resnet50", norm="gn", gn_groups=16, image_size=64)
    assert not _bn_layers(model)
    gns = [layer for layer in model.layers if isinstance(layer, keras.layers.GroupNormalization)]
    assert len(gns) == 53 and all(gn.groups == 16 and gn.trainable for gn in gns)
    features = model(np.random.default_rng(0).normal(size=(1, 64, 64, 3)).astype(np.float32))
    assert [tuple(f.shape) for f in features] == [(1, 16, 16, 256), (1, 8, 8, 512), (1, 4, 4, 1024),
                                                  (1, 2, 2, 2048)]
    assert all(np.isfinite(f.numpy()).all() for f in features)


# ---------------------------------------------------------------------------------------------
# (6) ImageNet weights without network


def test_imagenet_without_network_fails_fast_with_clear_message():
    model = build_backbone("mobilenetv3", image_size=64)
    try:
        load_backbone_weights(model, "mobilenetv3", "imagenet")
    except WeightsDownloadError as e:
        error = e
    else:
        pytest.skip("ImageNet weights are reachable here (network or cache); nothing to check")
    assert isinstance(error, RuntimeError)
    message = str(error)
    assert "ImageNet weights" in message and "failed" in message
    assert "--model=PATH" in message and "--model=none" in message


def test_imagenet_download_runs_under_a_socket_timeout(monkeypatch):
    """"Fails fast" without timing anything: the download runs with a finite socket timeout, restored after."""
    import socket

    from mrcnn_tf2.layers import backbone as backbone_lib

    seen = []

    def unreachable(**kwargs):
        seen.append(socket.getdefaulttimeout())
        raise Exception("URL fetch failure: [Errno -3] Temporary failure in name resolution")

    model = build_backbone("mobilenetv3", image_size=64)
    unreachable.__name__ = "MobileNetV3Large"
    monkeypatch.setitem(backbone_lib._APPLICATIONS, "mobilenetv3", unreachable)
    before = socket.getdefaulttimeout()
    with pytest.raises(WeightsDownloadError, match="name resolution"):
        load_backbone_weights(model, "mobilenetv3", "imagenet")
    assert seen == [backbone_lib._DOWNLOAD_TIMEOUT_S] and 0 < seen[0] <= 60
    assert socket.getdefaulttimeout() == before


def test_folded_frozen_bn_equals_conv_then_batch_norm():
    """frozen_bn ResNets fold each BN into its convolution; an unfolded rebuild must agree exactly."""
    import tensorflow as tf

    folded = build_backbone("resnet50", norm="frozen_bn", image_size=64)
    rng = np.random.default_rng(0)
    for layer in folded.layers:  # non-trivial statistics, so a wrong fold shows
        if isinstance(layer, FrozenBatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c), rng.normal(0, 0.1, c),
                               rng.uniform(0.5, 2.0, c)])
    unfolded = keras.Model.from_config(folded.get_config())  # the fold link is not serialized
    unfolded.set_weights(folded.get_weights())
    assert any(layer.__dict__.get("_folded") for layer in folded.layers)
    assert not any(layer.__dict__.get("_folded") for layer in unfolded.layers)
    images = tf.constant(rng.normal(0, 50, [2, 64, 64, 3]).astype(np.float32))
    for training in (False, True):
        for a, b in zip(folded(images, training=training), unfolded(images, training=training)):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-3, atol=2e-3 * float(tf.reduce_max(tf.abs(b))))
    # Gradients reach the convolution kernels the same way.
    kernel = folded.get_layer("conv3_block1_2_conv").kernel
    kernel_ref = unfolded.get_layer("conv3_block1_2_conv").kernel
    with tf.GradientTape(persistent=True) as tape:
        loss_a = tf.reduce_sum(folded(images, training=True)[-1])
        loss_b = tf.reduce_sum(unfolded(images, training=True)[-1])
    ga, gb = tape.gradient(loss_a, kernel), tape.gradient(loss_b, kernel_ref)
    np.testing.assert_allclose(ga.numpy(), gb.numpy(), rtol=2e-3, atol=2e-3 * float(tf.reduce_max(tf.abs(gb))))
