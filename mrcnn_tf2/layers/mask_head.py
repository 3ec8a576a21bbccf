"""Mask head: ROI features -> class-specific mask logits at twice the pool size.

Shape shorthand: B = batch, R = ROIs per image, P = mask pool size (14), M = 2P (28),
C = FPN channels, K = num_classes including background.
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="mrcnn_tf2")
class MaskHead(keras.layers.Layer):
    """``num_convs`` 3x3 convs, a stride-2 transposed conv, and a 1x1 conv with one channel per class.

    Args:
      num_classes: K, including background (its channel is never trained).
      num_convs: 3x3 convs before upsampling (4 in the paper).
      num_channels: their width (256 in the paper).
    """

    def __init__(self, num_classes: int, num_convs: int = 4, num_channels: int = 256, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.num_convs = num_convs
        self.num_channels = num_channels
        init = keras.initializers.HeNormal()
        # One attribute per sublayer: tf.train.Checkpoint does not see layers held in a list.
        for i in range(num_convs):
            setattr(self, f"conv_{i}", keras.layers.Conv2D(
                num_channels, 3, padding="same", activation="relu",
                kernel_initializer=init, name=f"conv_{i}"))
        self.upsample = keras.layers.Conv2DTranspose(num_channels, 2, strides=2, activation="relu",
                                                     kernel_initializer=init, name="upsample")
        self.mask_logits = keras.layers.Conv2D(num_classes, 1, kernel_initializer=init, name="mask_logits")

    def _convs(self) -> list[keras.layers.Layer]:
        return [getattr(self, f"conv_{i}") for i in range(self.num_convs)]

    def build(self, input_shape):
        shape = (None,) + tuple(input_shape[2:])
        for conv in self._convs():
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
        self.upsample.build(shape)
        shape = self.upsample.compute_output_shape(shape)
        self.mask_logits.build(shape)
        self.built = True

    def call(self, roi_features: tf.Tensor, classes: tf.Tensor) -> tf.Tensor:
        """Args:
          roi_features: [B, R, P, P, C].
          classes: [B, R] int32, the class whose mask to return (clipped to [0, K-1]).

        Returns:
          mask_logits: [B, R, M, M] float32 for the given classes.
        """
        shape = tf.shape(roi_features)
        x = tf.reshape(roi_features, tf.concat([[-1], shape[2:]], axis=0))  # [B*R, P, P, C]
        for conv in self._convs():
            x = conv(x)
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
                      num_channels=self.num_channels)
        return config
