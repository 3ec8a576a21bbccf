"""Box head: ROI features -> class logits and class-specific box deltas.

Two layouts, chosen by the arguments: ``num_fcs`` shared fully connected layers (the FPN paper's "2fc",
torchvision v1 ``TwoMLPHead``), or ``num_convs`` 3x3 convolutions (optionally normalized) followed by
``num_fcs`` FCs (detectron2's "4conv1fc", torchvision v2 ``FastRCNNConvFCHead``).

The features are flattened in NHWC order: input index ``(y * P + x) * C + c``. torchvision flattens
NCHW (``c * P * P + y * P + x``); a weight importer permutes the first FC's input rows accordingly.

Shape shorthand: B = batch, R = ROIs per image, P = pool size (7), C = FPN channels,
K = num_classes including background.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from mrcnn_tf2.config.choices import HEAD_NORMS
from mrcnn_tf2.layers.conv import Conv2D
from mrcnn_tf2.layers.norm import conv_norm, inference_kernel_bias
from mrcnn_tf2.ops import winograd


def head_norm_layer(norm: str, index: int, momentum: float = 0.99, gn_groups: int = 32,
                    synchronized: bool = False) -> keras.layers.Layer:
    """The normalization after head conv ``index``: ``bn_{index}`` (BatchNormalization, eps 1e-5) or ``gn_{index}``.

    Args:
        norm: ``"bn"`` or ``"gn"``.
        index: the conv's index (names the layer).
        momentum: moving-average momentum of ``bn`` (Keras convention: torch's 0.1 is 0.9).
        gn_groups: groups of ``gn``.
        synchronized: ``bn`` only: batch statistics over all replicas of a ``tf.distribute`` strategy.
    """
    if norm == "bn":
        return keras.layers.BatchNormalization(epsilon=1e-5, momentum=momentum, synchronized=synchronized,
                                               name=f"bn_{index}")
    if norm == "gn":
        return keras.layers.GroupNormalization(groups=gn_groups, epsilon=1e-5, name=f"gn_{index}")
    raise ValueError(f"head norm must be one of {HEAD_NORMS}, got {norm!r}")


@keras.saving.register_keras_serializable(package="mrcnn_tf2")
class BoxHead(keras.layers.Layer):
    """``num_convs`` 3x3 convs, then ``num_fcs`` fully connected layers of ``fc_dim``, then the predictors.

    Args:
      num_classes: K, including the background class 0.
      fc_dim: width of the shared fully connected layers (1024 in the paper).
      num_fcs: number of shared fully connected layers (2 for "2fc", 1 for "4conv1fc").
      num_convs: 3x3 convolutions before the FCs (0 for "2fc", 4 for "4conv1fc").
      conv_dim: their channels (256).
      norm: ``"none"``, ``"bn"`` or ``"gn"`` after each conv (the conv then has no bias); ReLU follows.
      norm_momentum: moving-average momentum of ``"bn"``.
      sync_bn: ``"bn"`` computes batch statistics over all replicas (``BatchNormalization(synchronized=True)``).
      winograd: at inference (``training=False``), in float32, with ``norm`` ``"none"`` or ``"bn"``, at least
        256 channels and ROI maps of at most ``ops.winograd.WINOGRAD_MAX_ROI_SIZE`` per side, the conv tower
        runs by Winograd F(4x4, 3x3) on pixel-major maps (batch norms folded in): 1.57x faster on CPUs for
        1000 ROIs of 7 x 7. The builder sets it as for ``layers.conv.Conv2D`` (``eval.winograd``).
    """

    def __init__(self, num_classes: int, fc_dim: int = 1024, num_fcs: int = 2, num_convs: int = 0,
                 conv_dim: int = 256, norm: str = "none", norm_momentum: float = 0.99, sync_bn: bool = False,
                 winograd: bool = False, **kwargs):
        super().__init__(**kwargs)
        if norm not in HEAD_NORMS:
            raise ValueError(f"BoxHead norm must be one of {HEAD_NORMS}, got {norm!r}")
        self.num_classes = num_classes
        self.fc_dim = fc_dim
        self.num_fcs = num_fcs
        self.num_convs = num_convs
        self.conv_dim = conv_dim
        self.norm = norm
        self.norm_momentum = norm_momentum
        self.sync_bn = sync_bn
        self.winograd = winograd
        # One attribute per sublayer: tf.train.Checkpoint does not see layers held in a list.
        for i in range(num_convs):
            setattr(self, f"conv_{i}", Conv2D(
                conv_dim, 3, padding="same", use_bias=norm == "none",
                kernel_initializer=keras.initializers.HeNormal(), name=f"conv_{i}"))
            if norm != "none":
                setattr(self, f"{norm}_{i}", head_norm_layer(norm, i, norm_momentum, synchronized=sync_bn))
        for i in range(num_fcs):
            setattr(self, f"fc_{i}", keras.layers.Dense(fc_dim, activation="relu", name=f"fc_{i}"))
        self.class_logits = keras.layers.Dense(
            num_classes, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01), name="class_logits")
        self.box_deltas = keras.layers.Dense(
            4 * num_classes, kernel_initializer=keras.initializers.RandomNormal(stddev=0.001), name="box_deltas")

    def _convs(self) -> list[tuple[keras.layers.Layer, keras.layers.Layer | None]]:
        return [(getattr(self, f"conv_{i}"), getattr(self, f"{self.norm}_{i}", None) if self.norm != "none"
                 else None) for i in range(self.num_convs)]

    def _fcs(self) -> list[keras.layers.Layer]:
        return [getattr(self, f"fc_{i}") for i in range(self.num_fcs)]

    def build(self, input_shape):
        shape = (None,) + tuple(input_shape[2:])  # [B*R, P, P, C]
        for conv, norm in self._convs():
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            if norm is not None:
                norm.build(shape)
        shape = (None, None, shape[1] * shape[2] * shape[3])
        for fc in self._fcs():
            fc.build(shape)
            shape = (None, None, self.fc_dim)
        self.class_logits.build(shape)
        self.box_deltas.build(shape)
        self.built = True

    def call(self, roi_features: tf.Tensor, training: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
        """Args:
          roi_features: [B, R, P, P, C].
          training: batch statistics for ``norm="bn"``.

        Returns:
          class_logits: [B, R, K] float32; box_deltas: [B, R, K, 4] float32 (weighted dy, dx, dh, dw).
        """
        shape = tf.shape(roi_features)
        x = roi_features
        if self.num_convs:
            x = tf.reshape(x, tf.concat([[-1], shape[2:]], axis=0))  # [B*R, P, P, C]
            if self._winograd_applies(x, training):
                x = self._winograd_convs(x)
            else:
                for conv, norm in self._convs():
                    x = tf.nn.relu(conv_norm(conv, norm, x, training))  # batch norm folded at inference
        x = tf.reshape(x, [shape[0], shape[1], -1])  # [B, R, P*P*C'] in HWC order
        for fc in self._fcs():
            x = fc(x)
        logits = tf.cast(self.class_logits(x), tf.float32)
        deltas = tf.cast(self.box_deltas(x), tf.float32)
        deltas = tf.reshape(deltas, [shape[0], shape[1], self.num_classes, 4])
        return logits, deltas

    def _winograd_applies(self, x: tf.Tensor, training: bool | None) -> bool:
        size = x.shape[1]
        return (self.winograd and training is not None and not training and self.norm in ("none", "bn")
                and self.compute_dtype == "float32" and x.dtype == tf.float32 and size is not None
                and size == x.shape[2] and size <= winograd.WINOGRAD_MAX_ROI_SIZE
                and x.shape[-1] is not None and x.shape[-1] >= winograd.WINOGRAD_MIN_CHANNELS)

    def _winograd_convs(self, x: tf.Tensor) -> tf.Tensor:
        """The conv tower at inference on ``x`` ``[N, P, P, C]``, pixel-major in between (no transposes)."""
        size = x.shape[1]
        x = tf.transpose(tf.reshape(x, [-1, size * size, x.shape[-1]]), [1, 0, 2])  # [P*P, N, C]
        for conv, norm in self._convs():
            kernel, bias = inference_kernel_bias(conv, norm)
            x = winograd.conv3x3_winograd_pixel_major(x, kernel, size)
            if bias is not None:
                x = tf.nn.bias_add(x, tf.cast(bias, x.dtype))
            x = tf.nn.relu(x)
        return tf.reshape(tf.transpose(x, [1, 0, 2]), [-1, size, size, x.shape[-1]])

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(num_classes=self.num_classes, fc_dim=self.fc_dim, num_fcs=self.num_fcs,
                      num_convs=self.num_convs, conv_dim=self.conv_dim, norm=self.norm,
                      norm_momentum=self.norm_momentum, sync_bn=self.sync_bn, winograd=self.winograd)
        return config
