"""Mask head: ROI features -> class-specific mask logits at twice the pool size.

Layout: ``num_convs`` 3x3 convs (+ optional norm) with ReLU, a 2x2 stride-2 transposed conv with ReLU, a 1x1
conv to K channels (torchvision ``MaskRCNNHeads`` + ``MaskRCNNPredictor``; v2 has batch norm in the convs).
Kernel layouts for importers: ``Conv2D`` kernels are ``[kh, kw, in, out]`` (torch ``[out, in, kh, kw]``:
transpose (2, 3, 1, 0)); the ``Conv2DTranspose`` kernel is ``[kh, kw, out, in]`` (torch ``ConvTranspose2d``
weight ``[in, out, kh, kw]``: the same transpose (2, 3, 1, 0), no spatial flip).

Shape shorthand: B = batch, R = ROIs per image, P = mask pool size (14), M = 2P (28),
C = FPN channels, K = num_classes including background.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from mrcnn_tf2.layers.box_head import HEAD_NORMS, head_norm_layer
from mrcnn_tf2.layers.conv import Conv2D
from mrcnn_tf2.layers.norm import conv_norm


@keras.saving.register_keras_serializable(package="mrcnn_tf2")
class MaskHead(keras.layers.Layer):
    """``num_convs`` 3x3 convs, a stride-2 transposed conv, and a 1x1 conv with one channel per class.

    Args:
      num_classes: K, including background (its channel is never trained).
      num_convs: 3x3 convs before upsampling (4 in the paper).
      num_channels: their width (256 in the paper).
      norm: ``"none"``, ``"bn"`` or ``"gn"`` after each 3x3 conv (the conv then has no bias).
      norm_momentum: moving-average momentum of ``"bn"``.
      sync_bn: ``"bn"`` computes batch statistics over all replicas (``BatchNormalization(synchronized=True)``).
    """

    def __init__(self, num_classes: int, num_convs: int = 4, num_channels: int = 256, norm: str = "none",
                 norm_momentum: float = 0.99, sync_bn: bool = False, **kwargs):
        super().__init__(**kwargs)
        if norm not in HEAD_NORMS:
            raise ValueError(f"MaskHead norm must be one of {HEAD_NORMS}, got {norm!r}")
        self.num_classes = num_classes
        self.num_convs = num_convs
        self.num_channels = num_channels
        self.norm = norm
        self.norm_momentum = norm_momentum
        self.sync_bn = sync_bn
        init = keras.initializers.HeNormal()
        # One attribute per sublayer: tf.train.Checkpoint does not see layers held in a list.
        for i in range(num_convs):
            setattr(self, f"conv_{i}", Conv2D(
                num_channels, 3, padding="same", activation="relu" if norm == "none" else None,
                use_bias=norm == "none", kernel_initializer=init, name=f"conv_{i}"))
            if norm != "none":
                setattr(self, f"{norm}_{i}", head_norm_layer(norm, i, norm_momentum, synchronized=sync_bn))
        self.upsample = keras.layers.Conv2DTranspose(num_channels, 2, strides=2, activation="relu",
                                                     kernel_initializer=init, name="upsample")
        self.mask_logits = keras.layers.Conv2D(num_classes, 1, kernel_initializer=init, name="mask_logits")

    def _convs(self) -> list[tuple[keras.layers.Layer, keras.layers.Layer | None]]:
        return [(getattr(self, f"conv_{i}"), getattr(self, f"{self.norm}_{i}", None) if self.norm != "none"
                 else None) for i in range(self.num_convs)]

    def build(self, input_shape):
        shape = (None,) + tuple(input_shape[2:])
        for conv, norm in self._convs():
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            if norm is not None:
                norm.build(shape)
        self.upsample.build(shape)
        shape = self.upsample.compute_output_shape(shape)
        self.mask_logits.build(shape)
        self.built = True

    def call(self, roi_features: tf.Tensor, classes: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Args:
          roi_features: [B, R, P, P, C].
          classes: [B, R] int32, the class whose mask to return (clipped to [0, K-1]).
          training: batch statistics for ``norm="bn"``.

        Returns:
          mask_logits: [B, R, M, M] float32 for the given classes.
        """
        shape = tf.shape(roi_features)
        x = tf.reshape(roi_features, tf.concat([[-1], shape[2:]], axis=0))  # [B*R, P, P, C]
        for conv, norm in self._convs():
            x = conv_norm(conv, norm, x, training)  # batch norm folded at inference
            if norm is not None:
                x = tf.nn.relu(x)
        x = self.upsample(x)
        logits = tf.cast(self.mask_logits(x), tf.float32)  # [B*R, M, M, K]
        size = tf.shape(logits)[1]
        logits = tf.reshape(logits, [shape[0], shape[1], size, size, self.num_classes])
        logits = tf.transpose(logits, [0, 1, 4, 2, 3])  # [B, R, K, M, M]
        classes = tf.clip_by_value(tf.cast(classes, tf.int32), 0, self.num_classes - 1)
        return tf.gather(logits, classes, axis=2, batch_dims=2)  # [B, R, M, M]

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(num_classes=self.num_classes, num_convs=self.num_convs,
                      num_channels=self.num_channels, norm=self.norm, norm_momentum=self.norm_momentum,
                      sync_bn=self.sync_bn)
        return config
