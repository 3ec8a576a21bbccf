"""Feature pyramid network (Lin et al., 2017): backbone features C2..C5 -> pyramid P2..P6.

This module owns the FPN layer. Lateral 1x1 convolutions bring every backbone level to
``num_channels``; a top-down pass adds each coarser level, upsampled 2x (nearest neighbour), to the
next finer lateral; a 3x3 convolution smooths each sum. Levels above the backbone's coarsest (P6 for
Mask R-CNN) are max-pools with kernel 1 and stride 2 of the level below, as in the FPN paper and
Detectron.

Shape shorthand:
    B: batch size; H, W: padded model-input height and width.
    Ci: backbone feature of level i, ``[B, H / 2**i, W / 2**i, channels_i]``.
    Pi: pyramid feature of level i, ``[B, H / 2**i, W / 2**i, num_channels]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from mrcnn_tf2.layers.conv import Conv2D
from mrcnn_tf2.layers.norm import FoldingConv2D, conv_norm, norm_layer

__all__ = ["FPN"]

_NORMS = (None, "gn", "bn", "frozen_bn")


@keras.saving.register_keras_serializable(package="mrcnn_tf2")
class FPN(keras.layers.Layer):
    """Top-down feature pyramid with lateral connections.

    Args:
        min_level: finest output level (2 for P2, stride 4).
        max_level: coarsest output level (6 for P6, stride 64); levels above ``backbone_max_level``
            are max-pooled from the level below.
        num_channels: channels of every output level.
        backbone_min_level: level of the first backbone feature in the input list (2 for C2).
        backbone_max_level: level of the last backbone feature (5 for C5).
        norm: None, or a norm after every convolution (convolutions then have no bias): ``"gn"``
            (GroupNormalization), ``"bn"`` (trainable batch norm) or ``"frozen_bn"`` (batch norm with
            frozen statistics; torchvision's v2 FPN is ``norm_layer=BatchNorm2d``, eps 1e-5).
        gn_groups: groups of each GroupNormalization.
        sync_bn: ``norm="bn"`` computes batch statistics over all replicas (``synchronized=True``).
        norm_momentum: moving-average momentum of ``norm="bn"`` (Keras' convention: torch's 0.1 is 0.9).
        winograd_min_pixels: the 3x3 output convolutions on levels of at least this many pixels run by
            Winograd at inference (``layers.conv.Conv2D``; 256+ channels); 0: never.
        **kwargs: ``keras.layers.Layer`` arguments (name, dtype, trainable).
    """

    def __init__(
        self,
        min_level: int = 2,
        max_level: int = 6,
        num_channels: int = 256,
        backbone_min_level: int = 2,
        backbone_max_level: int = 5,
        norm: str | None = None,
        gn_groups: int = 32,
        sync_bn: bool = False,
        norm_momentum: float = 0.99,
        winograd_min_pixels: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not (backbone_min_level <= min_level <= max_level and min_level <= backbone_max_level):
            raise ValueError(
                f"FPN levels: need backbone_min_level ({backbone_min_level}) <= min_level ({min_level}) "
                f"<= max_level ({max_level}) and min_level <= backbone_max_level ({backbone_max_level})")
        if norm not in _NORMS:
            raise ValueError(f"FPN norm must be one of {_NORMS}, got {norm!r}")
        if norm == "gn" and num_channels % gn_groups:
            raise ValueError(f"FPN num_channels={num_channels} must be divisible by gn_groups={gn_groups}")
        self.min_level = min_level
        self.max_level = max_level
        self.num_channels = num_channels
        self.backbone_min_level = backbone_min_level
        self.backbone_max_level = backbone_max_level
        self.norm = norm
        self.gn_groups = gn_groups
        self.sync_bn = sync_bn
        self.norm_momentum = norm_momentum
        self.winograd_min_pixels = winograd_min_pixels
        # Levels computed from backbone features (the rest are pooled): min_level..top_level.
        self._top_level = min(max_level, backbone_max_level)
        # One attribute per sublayer (lateral_p2_conv, lateral_p2_gn, output_p2_conv, ...): Keras 3 keeps
        # sublayers held in lists or dicts out of tf.train.Checkpoint's object graph.
        for level in range(min_level, self._top_level + 1):
            for kind, kernel in (("lateral", 1), ("output", 3)):
                prefix = f"{kind}_p{level}"
                conv_cls = FoldingConv2D if norm == "frozen_bn" else Conv2D
                conv = conv_cls(num_channels, kernel, padding="same", use_bias=norm is None,
                                winograd_min_pixels=winograd_min_pixels, name=f"{prefix}_conv")
                setattr(self, f"{prefix}_conv", conv)
                if norm is not None:
                    layer = norm_layer(norm, prefix, channels=num_channels, gn_groups=gn_groups, synchronized=sync_bn)
                    if norm == "bn":
                        layer.momentum = norm_momentum
                    if norm == "frozen_bn":
                        conv.fold(layer)  # one convolution instead of conv + elementwise batch norm
                    setattr(self, layer.name, layer)
        # Nearest-neighbour upsampling; a layer, so it also works for unknown H and W.
        self._upsample = keras.layers.UpSampling2D(2, interpolation="nearest", name="upsample")
        self._pool = keras.layers.MaxPooling2D(pool_size=1, strides=2, padding="valid", name="pool")

    def _conv_norm(self, kind: str, level: int) -> list[keras.layers.Layer]:
        """The sublayers of ``{kind}_p{level}``: [conv] or [conv, norm]."""
        prefix = f"{kind}_p{level}"
        layers = [getattr(self, f"{prefix}_conv")]
        if self.norm is not None:
            layers.append(getattr(self, f"{prefix}_{'gn' if self.norm == 'gn' else 'bn'}"))
        return layers

    @staticmethod
    def _apply(layers: list[keras.layers.Layer], x: tf.Tensor, training: bool | None) -> tf.Tensor:
        # At inference (training=False) a batch norm is folded into the convolution (norm.conv_norm).
        return conv_norm(layers[0], layers[1] if len(layers) > 1 else None, x, training)

    def _check_num_features(self, num_features: int) -> None:
        expected = self.backbone_max_level - self.backbone_min_level + 1
        if num_features != expected:
            raise ValueError(f"FPN expects {expected} backbone features (levels {self.backbone_min_level}.."
                             f"{self.backbone_max_level}), got {num_features}")

    def build(self, input_shape: Sequence[Sequence[int | None]]) -> None:
        self._check_num_features(len(input_shape))
        for level in range(self.min_level, self._top_level + 1):
            shape = tuple(input_shape[level - self.backbone_min_level])
            lateral_shape = shape[:-1] + (self.num_channels,)
            for layer in self._conv_norm("lateral", level):
                layer.build(shape)
                shape = lateral_shape
            for layer in self._conv_norm("output", level):
                layer.build(lateral_shape)
        self.built = True

    def call(self, features: Sequence[tf.Tensor], training: bool | None = None) -> dict[int, tf.Tensor]:
        """Builds the pyramid.

        Args:
            features: backbone features ``[C_bmin, ..., C_bmax]`` (``backbone_min_level`` ..
                ``backbone_max_level``), each ``[B, H / 2**i, W / 2**i, channels_i]`` float.

        Returns:
            ``{level: P_level}`` for ``level`` in ``min_level..max_level``, each
            ``[B, H / 2**level, W / 2**level, num_channels]`` in the layer's compute dtype.
        """
        self._check_num_features(len(features))
        # Top-down: coarsest lateral first, then lateral(Ci) + upsample(top-down of level i+1).
        top_down: dict[int, tf.Tensor] = {}
        for level in range(self._top_level, self.min_level - 1, -1):
            lateral = self._apply(self._conv_norm("lateral", level), features[level - self.backbone_min_level],
                                  training)
            if level < self._top_level:
                lateral = lateral + self._upsample(top_down[level + 1])
            top_down[level] = lateral
        outputs = {level: self._apply(self._conv_norm("output", level), top_down[level], training)
                   for level in range(self.min_level, self._top_level + 1)}
        # Extra coarse levels (P6, ...): stride-2 subsampling of the level below.
        for level in range(self._top_level + 1, self.max_level + 1):
            outputs[level] = self._pool(outputs[level - 1])
        return dict(sorted(outputs.items()))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            min_level=self.min_level,
            max_level=self.max_level,
            num_channels=self.num_channels,
            backbone_min_level=self.backbone_min_level,
            backbone_max_level=self.backbone_max_level,
            norm=self.norm,
            gn_groups=self.gn_groups,
            sync_bn=self.sync_bn,
            norm_momentum=self.norm_momentum,
            winograd_min_pixels=self.winograd_min_pixels,
        )
        return config
