"""Box head: ROI features -> class logits and class-specific box deltas (two shared FCs).

Shape shorthand: B = batch, R = ROIs per image, P = pool size (7), C = FPN channels,
K = num_classes including background.
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="mrcnn_tf2")
class BoxHead(keras.layers.Layer):
    """``num_fcs`` fully connected layers of ``fc_dim``, then class and box predictors.

    Args:
      num_classes: K, including the background class 0.
      fc_dim: width of the shared fully connected layers (1024 in the paper).
      num_fcs: number of shared fully connected layers.
    """

    def __init__(self, num_classes: int, fc_dim: int = 1024, num_fcs: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.fc_dim = fc_dim
        self.num_fcs = num_fcs
        # One attribute per sublayer: tf.train.Checkpoint does not see layers held in a list.
        for i in range(num_fcs):
            setattr(self, f"fc_{i}", keras.layers.Dense(fc_dim, activation="relu", name=f"fc_{i}"))
        self.class_logits = keras.layers.Dense(
            num_classes, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01), name="class_logits")
        self.box_deltas = keras.layers.Dense(
            4 * num_classes, kernel_initializer=keras.initializers.RandomNormal(stddev=0.001), name="box_deltas")

    def _fcs(self) -> list[keras.layers.Layer]:
        return [getattr(self, f"fc_{i}") for i in range(self.num_fcs)]

    def build(self, input_shape):
        flat = (None, None, input_shape[2] * input_shape[3] * input_shape[4])
        shape = flat
        for fc in self._fcs():
            fc.build(shape)
            shape = (None, None, self.fc_dim)
        self.class_logits.build(shape)
        self.box_deltas.build(shape)
        self.built = True

    def call(self, roi_features: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Args:
          roi_features: [B, R, P, P, C].

        Returns:
          class_logits: [B, R, K] float32; box_deltas: [B, R, K, 4] float32 (weighted dy, dx, dh, dw).
        """
        shape = tf.shape(roi_features)
        x = tf.reshape(roi_features, [shape[0], shape[1], -1])  # [B, R, P*P*C]
        for fc in self._fcs():
            x = fc(x)
        logits = tf.cast(self.class_logits(x), tf.float32)
        deltas = tf.cast(self.box_deltas(x), tf.float32)
        deltas = tf.reshape(deltas, [shape[0], shape[1], self.num_classes, 4])
        return logits, deltas

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(num_classes=self.num_classes, fc_dim=self.fc_dim, num_fcs=self.num_fcs)
        return config
