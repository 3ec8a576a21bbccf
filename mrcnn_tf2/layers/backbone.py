"""Backbones: ResNet-50/101 and MobileNetV3-Large feature extractors, and loading their weights.

This module owns the backbone networks and the ImageNet/file weight loading. Each backbone is a
functional ``keras.Model`` mapping images to the four feature maps ``[C2, C3, C4, C5]`` that the FPN
consumes.

Shape shorthand:
    B: batch size; H, W: image height and width (multiples of 32, or ``None`` for any such size).
    Ci: feature map of level i, stride 2**i: ``[B, H / 2**i, W / 2**i, channels_i]`` float32.

Input normalization (done outside the backbone, by ``pipelines/preprocess.py``):
    ResNet: caffe style, BGR with the ImageNet mean subtracted, no scaling.
    MobileNetV3: raw RGB in 0..255; the model's own ``Rescaling`` layer maps it to [-1, 1].

ResNet layer names and weight shapes equal those of ``keras.applications.ResNet50/ResNet101
(include_top=False)`` (``conv1_conv``, ``conv2_block1_1_bn``, ..., ``conv5_block3_out``), so ImageNet
weights load by layer name. Under ``norm="gn"`` the norm layers are ``*_gn`` GroupNormalization layers:
the convolution weights still load, the norm weights are skipped.
"""

from __future__ import annotations

import contextlib
import os
import socket
import typing
import warnings
from collections.abc import Callable, Iterator, Sequence

import h5py
import keras
import numpy as np

from mrcnn_tf2.config.choices import BACKBONES, NORMS, TRAIN_LAYERS
from mrcnn_tf2.layers.conv import Conv2D
from mrcnn_tf2.layers.norm import FoldingConv2D, FrozenBatchNormalization, norm_layer

__all__ = [
    "BACKBONES",
    "BACKBONE_CHANNELS",
    "FEATURE_STRIDES",
    "WeightsDownloadError",
    "build_backbone",
    "feature_channels",
    "load_backbone_weights",
]

FEATURE_STRIDES = (4, 8, 16, 32)
BACKBONE_CHANNELS: dict[str, tuple[int, int, int, int]] = {
    "resnet50": (256, 512, 1024, 2048),
    "resnet101": (256, 512, 1024, 2048),
    "mobilenetv3": (24, 40, 112, 960),
}
# Blocks per stage conv2..conv5.
_RESNET_BLOCKS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}
# First ResNet stage that trains, per train_layers (matterport semantics; stage 1 = conv1 stem).
_FIRST_TRAINABLE_STAGE = {"heads": 6, "3+": 3, "4+": 4, "5+": 5, "all": 1}
# Last block outputs at strides 4, 8, 16 of keras.applications.MobileNetV3Large; stride 32 is its output.
_MOBILENET_ENDPOINTS = ("expanded_conv_2_add", "expanded_conv_5_add", "expanded_conv_11_add")
_APPLICATIONS: dict[str, Callable[..., keras.Model]] = {
    "resnet50": keras.applications.ResNet50,
    "resnet101": keras.applications.ResNet101,
    "mobilenetv3": keras.applications.MobileNetV3Large,
}
# Classifier layers of keras.applications models built with include_top=True (never in a backbone).
_TOP_LAYERS = frozenset({"predictions", "conv_2", "logits"})
_DOWNLOAD_TIMEOUT_S = 20.0


class WeightsDownloadError(RuntimeError):
    """The ImageNet weights could not be downloaded (no network, blocked host, bad cache)."""


def build_backbone(
    name: str,
    norm: str = "frozen_bn",
    train_layers: str = "all",
    image_size: int | None = None,
    gn_groups: int = 32,
    stride_in_1x1: bool = True,
    conv_bias: bool = True,
    bn_epsilon: float = 1.001e-5,
    sync_bn: bool = False,
    winograd_min_pixels: int = 0,
) -> keras.Model:
    """Builds a backbone with randomly initialized weights (see :func:`load_backbone_weights`).

    Args:
        name: ``"resnet50"``, ``"resnet101"`` or ``"mobilenetv3"``.
        norm: ``"frozen_bn"`` (batch norm in inference mode, never trained), ``"bn"`` (trainable batch
            norm) or ``"gn"`` (GroupNormalization; ResNet only).
        train_layers: which stages train: ``"heads"`` (none), ``"3+"``, ``"4+"``, ``"5+"`` (conv3..5,
            conv4..5, conv5) or ``"all"``. MobileNetV3 accepts ``"heads"`` and ``"all"`` only.
        image_size: static square input size (a multiple of 32), or None for any size that is a
            multiple of 32.
        gn_groups: groups of each GroupNormalization (``norm="gn"``).
        stride_in_1x1: ResNet only: the stride of a downsampling block sits on its first 1x1 convolution
            (keras.applications, caffe) or, when False, on its 3x3 convolution (torchvision, "ResNet v1.5";
            the 3x3 then pads 1 pixel on every side, as torch does, instead of Keras' asymmetric "same").
        conv_bias: ResNet only: convolutions carry a bias (keras.applications) or not (torchvision).
        bn_epsilon: ResNet only: batch-norm variance epsilon (keras.applications 1.001e-5, torchvision
            1e-5; its v1 COCO checkpoint uses 0). Group norm always uses 1e-5.
        sync_bn: ``norm="bn"``: batch statistics over all replicas of a ``tf.distribute`` strategy
            (``BatchNormalization(synchronized=True)``); frozen batch norm has none to synchronize.
        winograd_min_pixels: ResNet only: the 3x3 convolutions of at least 256 channels on maps of at
            least this many pixels run by Winograd at inference (``layers.conv.Conv2D``); 0: never.

    Returns:
        A functional ``keras.Model`` taking ``images [B, H, W, 3] float32`` (normalized as described in
        the module docstring) and returning the list ``[C2, C3, C4, C5]`` with strides 4, 8, 16, 32.
        ``model.feature_channels`` and ``model.feature_strides`` hold the channel counts and strides.

    Raises:
        ValueError: for an unknown or unsupported name, norm, train_layers or image_size.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone '{name}'; choose one of {BACKBONES}")
    if norm not in NORMS:
        raise ValueError(f"unknown norm '{norm}'; choose one of {NORMS}")
    if train_layers not in TRAIN_LAYERS:
        raise ValueError(f"unknown train_layers '{train_layers}'; choose one of {TRAIN_LAYERS}")
    if image_size is not None and (image_size <= 0 or image_size % 32):
        raise ValueError(f"backbone image_size={image_size} must be a positive multiple of 32")
    if name == "mobilenetv3":
        model = _build_mobilenetv3(norm, train_layers, image_size)
    else:
        model = _build_resnet(name, norm, train_layers, image_size, gn_groups,
                              _ResNetLayout(stride_in_1x1, conv_bias, bn_epsilon, winograd_min_pixels))
    for layer in model.layers:  # ResNet's norm_layer and keras.applications' MobileNetV3 alike
        if isinstance(layer, keras.layers.BatchNormalization) and not isinstance(layer, FrozenBatchNormalization):
            layer.synchronized = sync_bn
    model.feature_channels = BACKBONE_CHANNELS[name]
    model.feature_strides = FEATURE_STRIDES
    return model


# --------------------------------------------------------------------------------------------
# ResNet (v1; strides on the first 1x1 convolution as in keras.applications / caffe, or on the 3x3 as in
# torchvision)


class _ResNetLayout(typing.NamedTuple):
    stride_in_1x1: bool = True
    conv_bias: bool = True
    bn_epsilon: float = 1.001e-5
    winograd_min_pixels: int = 0


_KERAS_LAYOUT = _ResNetLayout()


def _conv_norm(x: keras.KerasTensor, filters: int, kernel: int, stride: int, prefix: str, norm: str,
               gn_groups: int, padding: str = "valid", zero_gamma: bool = False,
               layout: _ResNetLayout = _KERAS_LAYOUT) -> keras.KerasTensor:
    """Conv2D ``{prefix}_conv`` then the norm layer ``{prefix}_bn`` / ``{prefix}_gn``."""
    conv_cls = FoldingConv2D if norm == "frozen_bn" else Conv2D
    conv = conv_cls(filters, kernel, strides=stride, padding=padding, kernel_initializer="he_normal",
                    use_bias=layout.conv_bias, winograd_min_pixels=layout.winograd_min_pixels,
                    name=f"{prefix}_conv")
    epsilon = 1e-5 if norm == "gn" else layout.bn_epsilon
    normalize = norm_layer(norm, prefix, channels=filters, gn_groups=gn_groups, epsilon=epsilon,
                           gamma_initializer="zeros" if zero_gamma else "ones")
    if norm == "frozen_bn":
        conv.fold(normalize)  # frozen statistics: one convolution instead of conv + elementwise BN
    return normalize(conv(x))


def _bottleneck(x: keras.KerasTensor, filters: int, stride: int, shortcut_conv: bool, prefix: str,
                norm: str, gn_groups: int, layout: _ResNetLayout = _KERAS_LAYOUT) -> keras.KerasTensor:
    """Bottleneck block: 1x1 -> 3x3 -> 1x1 (4 * filters), plus a (projected) shortcut; the stride sits on
    the first 1x1 (``layout.stride_in_1x1``) or on the 3x3."""
    # From scratch, a zero scale on the branch's last norm starts each block as the identity.
    zero_gamma = norm != "frozen_bn"
    stride_1x1, stride_3x3 = (stride, 1) if layout.stride_in_1x1 else (1, stride)
    shortcut = x
    if shortcut_conv:
        shortcut = _conv_norm(x, 4 * filters, 1, stride, f"{prefix}_0", norm, gn_groups, layout=layout)
    y = _conv_norm(x, filters, 1, stride_1x1, f"{prefix}_1", norm, gn_groups, layout=layout)
    y = keras.layers.Activation("relu", name=f"{prefix}_1_relu")(y)
    if stride_3x3 == 1:
        y = _conv_norm(y, filters, 3, 1, f"{prefix}_2", norm, gn_groups, padding="same", layout=layout)
    else:  # Keras' "same" pads strided convs asymmetrically (0 before, 1 after); torch pads 1 on both sides
        y = keras.layers.ZeroPadding2D(((1, 1), (1, 1)), name=f"{prefix}_2_pad")(y)
        y = _conv_norm(y, filters, 3, stride_3x3, f"{prefix}_2", norm, gn_groups, layout=layout)
    y = keras.layers.Activation("relu", name=f"{prefix}_2_relu")(y)
    y = _conv_norm(y, 4 * filters, 1, 1, f"{prefix}_3", norm, gn_groups, zero_gamma=zero_gamma, layout=layout)
    y = keras.layers.Add(name=f"{prefix}_add")([shortcut, y])
    return keras.layers.Activation("relu", name=f"{prefix}_out")(y)


def _build_resnet(name: str, norm: str, train_layers: str, image_size: int | None,
                  gn_groups: int, layout: _ResNetLayout = _KERAS_LAYOUT) -> keras.Model:
    images = keras.Input(shape=(image_size, image_size, 3), name="images")
    x = keras.layers.ZeroPadding2D(((3, 3), (3, 3)), name="conv1_pad")(images)
    x = _conv_norm(x, 64, 7, 2, "conv1", norm, gn_groups, layout=layout)
    x = keras.layers.Activation("relu", name="conv1_relu")(x)
    x = keras.layers.ZeroPadding2D(((1, 1), (1, 1)), name="pool1_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)  # stride 4
    features = []
    for stage, (filters, blocks) in enumerate(zip((64, 128, 256, 512), _RESNET_BLOCKS[name]), start=2):
        for block in range(1, blocks + 1):
            stride = 2 if block == 1 and stage > 2 else 1
            x = _bottleneck(x, filters, stride, block == 1, f"conv{stage}_block{block}", norm, gn_groups, layout)
        features.append(x)  # C2..C5, strides 4..32
    model = keras.Model(images, features, name=name)
    first_trainable = _FIRST_TRAINABLE_STAGE[train_layers]
    for layer in model.layers:
        stage = _resnet_stage(layer.name)
        if stage is not None and stage < first_trainable:
            layer.trainable = False
    return model


def _resnet_stage(layer_name: str) -> int | None:
    """1 for the stem (``conv1_*``, ``pool1_*``), k for ``convk_*``; None for other layers (the input)."""
    head = layer_name.split("_", 1)[0]
    if head[:-1] in ("conv", "pool") and head[-1:].isdigit():
        return int(head[-1])
    return None


# --------------------------------------------------------------------------------------------
# MobileNetV3-Large (keras.applications)


def _build_mobilenetv3(norm: str, train_layers: str, image_size: int | None) -> keras.Model:
    if norm not in ("frozen_bn", "bn"):
        raise ValueError(f"backbone 'mobilenetv3' supports norm 'frozen_bn' or 'bn', not '{norm}'")
    if train_layers not in ("heads", "all"):
        raise ValueError(f"backbone 'mobilenetv3' supports train_layers 'heads' or 'all', not '{train_layers}'")
    full = keras.applications.MobileNetV3Large(
        input_shape=(image_size, image_size, 3), include_top=False, weights=None,
        include_preprocessing=True)
    if norm == "frozen_bn":
        # Same graph and weight shapes, every BatchNormalization replaced by a frozen one.
        def _freeze_bn(layer: keras.layers.Layer) -> keras.layers.Layer:
            if isinstance(layer, keras.layers.BatchNormalization):
                return FrozenBatchNormalization.from_config(layer.get_config())
            return layer.__class__.from_config(layer.get_config())

        full = keras.models.clone_model(full, clone_function=_freeze_bn)
    outputs = [full.get_layer(n).output for n in _MOBILENET_ENDPOINTS] + [full.output]
    model = keras.Model(full.input, outputs, name="mobilenetv3")
    if train_layers == "heads":
        model.trainable = False
    return model


# --------------------------------------------------------------------------------------------
# Weights


def load_backbone_weights(backbone: keras.Model, name: str, weights: str) -> list[str]:
    """Copies ImageNet or file weights into ``backbone``, layer by layer, matched by layer name.

    Args:
        backbone: a model from :func:`build_backbone`.
        name: its backbone name (``"resnet50"``, ``"resnet101"``, ``"mobilenetv3"``).
        weights: ``"imagenet"`` (downloaded by ``keras.applications``, cached in ``~/.keras/models``) or
            the path of a weights file of the matching ``keras.applications`` model: a ``.weights.h5``
            written by ``model.save_weights`` (with or without the classifier top), a ``.keras`` model,
            or a legacy HDF5 ``.h5`` file (weights only, like the published ImageNet files, or a whole
            model).

    Returns:
        Names of the backbone's layers with weights that received none (e.g. the ``*_gn`` layers of a
        GroupNormalization backbone); every other weight was overwritten.

    Raises:
        WeightsDownloadError: ``"imagenet"`` could not be downloaded.
        ValueError: unknown name, missing or unreadable file, a file of another architecture, or a
            shape mismatch. The backbone is left unchanged.
    """
    if name not in _APPLICATIONS:
        raise ValueError(f"unknown backbone '{name}'; choose one of {BACKBONES}")
    app_name = f"keras.applications.{_APPLICATIONS[name].__name__}"
    source = _source_weights(name, weights)
    ours = {layer.name for layer in backbone.layers if layer.weights}
    if not ours & source.keys():
        raise ValueError(f"weights '{weights}' share no layer name with backbone '{name}'; pass a weights "
                         f"file of {app_name}")
    # A source layer we lack is fine only for the classifier top and batch norms replaced by group
    # norms; anything else means another architecture (e.g. a ResNet-101 file for a ResNet-50).
    foreign = [n for n in source
               if n not in ours and n not in _TOP_LAYERS and not (n.endswith("_bn") and n[:-3] + "_gn" in ours)]
    if foreign:
        raise ValueError(f"weights '{weights}' hold {len(foreign)} layers that backbone '{name}' lacks "
                         f"(e.g. {', '.join(foreign[:3])}); pass a weights file of {app_name}")
    skipped, pairs = [], []
    for layer in backbone.layers:
        if not layer.weights:
            continue
        if layer.name not in source:
            skipped.append(layer.name)
            continue
        values = _align(layer.weights, source[layer.name])
        ours_shapes = [tuple(v.shape) for v in layer.weights]
        src_shapes = [tuple(a.shape) for a in values]
        if ours_shapes != src_shapes:
            raise ValueError(
                f"cannot load weights '{weights}' into backbone '{name}': layer '{layer.name}' has weight "
                f"shapes {ours_shapes} but the file has {src_shapes}; is it a weights file of {app_name}?")
        pairs.extend(zip(layer.weights, values))
    # Assign only once everything matched, so a failed load leaves the backbone untouched.
    for variable, value in pairs:
        variable.assign(value)
    return skipped


_NamedArrays = list[tuple[str, np.ndarray]]


def _align(variables: Sequence[keras.Variable], named: _NamedArrays) -> list[np.ndarray]:
    """Source arrays in the order of ``variables``: by variable name when the names agree, else as stored."""
    by_name = dict(named)
    if len(by_name) == len(named) == len(variables) and {v.name for v in variables} == by_name.keys():
        return [by_name[v.name] for v in variables]
    return [array for _, array in named]


def _source_weights(name: str, weights: str) -> dict[str, _NamedArrays]:
    """``{layer name: [(weight name, array), ...]}`` of ``weights`` (downloaded or read from a file)."""
    if weights != "imagenet" and not os.path.isfile(weights):
        raise ValueError(f"weights '{weights}' is neither 'imagenet' nor an existing file; pass "
                         f"--model=imagenet, --model=none or the path of a weights file")
    if weights.endswith(".h5") and not weights.endswith(".weights.h5"):
        legacy = _read_legacy_h5(weights)
        if legacy is not None:
            return legacy
    model = _reference_model(name, weights)
    return {layer.name: [(v.name, keras.ops.convert_to_numpy(v)) for v in layer.weights]
            for layer in model.layers if layer.weights}


def _read_legacy_h5(path: str) -> dict[str, _NamedArrays] | None:
    """Reads a Keras 2-style HDF5 file (weights only, or a whole model) by layer name; None if not one.

    Layout: a ``layer_names`` attribute (at the root, or on the ``model_weights`` group of a whole model)
    and one group per layer whose ``weight_names`` attribute lists its datasets, e.g.
    ``conv1_bn/gamma:0``.
    """
    try:
        with h5py.File(path, "r") as f:
            root = f["model_weights"] if "model_weights" in f else f
            if "layer_names" not in root.attrs:
                return None
            out = {}
            for layer_name in _decode(root.attrs["layer_names"]):
                group = root[layer_name]
                names = _decode(group.attrs.get("weight_names", []))
                if names:
                    out[layer_name] = [(n.split("/")[-1].split(":")[0], np.asarray(group[n])) for n in names]
            return out
    except OSError as e:
        raise ValueError(f"could not read the HDF5 weights file '{path}': {e}") from e


def _decode(values: Sequence[bytes | str]) -> list[str]:
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _reference_model(name: str, weights: str) -> keras.Model:
    """The keras.applications model for ``name`` holding ``weights`` ("imagenet", .keras, .weights.h5)."""
    app = _APPLICATIONS[name]
    extra = {"include_preprocessing": True, "input_shape": (224, 224, 3)} if name == "mobilenetv3" else {}
    if weights == "imagenet":
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)  # fail fast instead of hanging on a dead network
        try:
            return app(weights="imagenet", include_top=False, **extra)
        except Exception as e:  # noqa: BLE001 - keras raises a bare Exception for URL failures
            raise WeightsDownloadError(
                f"Downloading the ImageNet weights of {name} (keras.applications.{app.__name__}) failed: "
                f"{e}. Without network access, pass a local weights file of that model instead "
                f"(--model=PATH: a .weights.h5, .h5 or .keras file, e.g. one saved with "
                f"keras.applications.{app.__name__}(weights='imagenet').save_weights(...) on a machine "
                f"with network access), or train from scratch with --model=none.") from e
        finally:
            socket.setdefaulttimeout(previous)
    if weights.endswith(".keras"):
        try:
            with _quiet_keras_loading():
                return keras.saving.load_model(weights, compile=False)
        except Exception as e:  # noqa: BLE001 - any reader error becomes one clear message
            raise ValueError(f"could not read the model file '{weights}': {e}") from e
    errors = []
    for include_top in (False, True):  # save_weights files list every layer, so the top must match
        try:
            with _quiet_keras_loading():
                return app(weights=weights, include_top=include_top, **extra)
        except Exception as e:  # noqa: BLE001
            errors.append(f"include_top={include_top}: {e}")
    raise ValueError(f"could not load '{weights}' into keras.applications.{app.__name__} "
                     f"({'; '.join(errors)}); is it a weights file of that model?")


@contextlib.contextmanager
def _quiet_keras_loading() -> Iterator[None]:
    """Silences Keras 3.15's warnings about its internal op containers when it reads a functional model."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipping nested container")
        yield


def feature_channels(backbone: keras.Model) -> Sequence[int]:
    """Channel counts of the backbone's outputs ``[C2, C3, C4, C5]``, read from its output shapes."""
    return [int(t.shape[-1]) for t in backbone.outputs]
