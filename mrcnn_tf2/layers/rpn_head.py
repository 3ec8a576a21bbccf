"""Region proposal network head: objectness logits and box deltas for every anchor of every level.

Shape shorthand: B = batch, L = FPN levels, H_l/W_l = level size, A = anchors per location,
N_l = H_l * W_l * A anchors on level l, C = FPN channels.
"""

from __future__ import annotations

from collections.abc import Mapping

import keras
import tensorflow as tf

from mrcnn_tf2.layers.conv import Conv2D


@keras.saving.register_keras_serializable(package="mrcnn_tf2")
class RPNHead(keras.layers.Layer):
    """A small conv tower shared by all FPN levels, then 1x1 objectness and box-delta convs.

    Args:
      num_anchors: A, anchors per location (the number of aspect ratios).
      num_channels: channels of the shared 3x3 convs (usually the FPN width).
      num_convs: number of shared 3x3 convs.
      winograd_min_pixels: the 3x3 convs on levels of at least this many pixels run by Winograd at
        inference (``layers.conv.Conv2D``; 256+ channels); 0: never.
    """

    def __init__(self, num_anchors: int, num_channels: int = 256, num_convs: int = 1,
                 winograd_min_pixels: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.num_anchors = num_anchors
        self.num_channels = num_channels
        self.num_convs = num_convs
        self.winograd_min_pixels = winograd_min_pixels
        init = keras.initializers.RandomNormal(stddev=0.01)
        # One attribute per sublayer: tf.train.Checkpoint does not see layers held in a list.
        for i in range(num_convs):
            setattr(self, f"conv_{i}", Conv2D(
                num_channels, 3, padding="same", activation="relu", kernel_initializer=init,
                winograd_min_pixels=winograd_min_pixels, name=f"conv_{i}"))
        self.objectness = keras.layers.Conv2D(num_anchors, 1, kernel_initializer=init, name="objectness")
        self.deltas = keras.layers.Conv2D(4 * num_anchors, 1, kernel_initializer=init, name="deltas")

    def _convs(self) -> list[keras.layers.Layer]:
        return [getattr(self, f"conv_{i}") for i in range(self.num_convs)]

    def build(self, input_shape):
        shape = next(iter(input_shape.values())) if isinstance(input_shape, dict) else input_shape
        for conv in self._convs():
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
        self.objectness.build(shape)
        self.deltas.build(shape)
        self.built = True

    def call(self, features: Mapping[int, tf.Tensor], training: bool | None = None
             ) -> tuple[dict[int, tf.Tensor], dict[int, tf.Tensor]]:
        """Runs the head on each level.

        Args:
          features: {level: [B, H_l, W_l, C]}.
          training: False allows the Winograd convolutions (inference); True or None: direct ones.

        Returns:
          (objectness_logits {level: [B, N_l]}, deltas {level: [B, N_l, 4]} as (dy, dx, dh, dw)),
          anchor order (y, x, anchor) as in `ops.anchors.generate_anchors`; float32. Channel a of the
          objectness conv and channels 4a..4a+3 of the delta conv belong to anchor a of a location, the
          layout of torchvision's RPNHead after its (N, A, C, H, W) -> (N, H, W, A, C) permute (its
          deltas are ordered (dx, dy, dw, dh): an importer swaps the pairs).
        """
        logits, deltas = {}, {}
        for level, x in features.items():
            for conv in self._convs():
                x = conv(x, training=training)
            objectness = tf.cast(self.objectness(x), tf.float32)
            # [B, H, W, A] -> [B, H*W*A]; [B, H, W, 4A] -> [B, H*W*A, 4]. The anchor count stays static
            # even when the batch size is unknown (serving signatures): proposals need it for top-k.
            # Non-square inputs of unknown size: the anchor count is dynamic (proposals pad it).
            h, w = objectness.shape[1], objectness.shape[2]
            if h is not None and w is not None:
                batch, num = -1, h * w * self.num_anchors
            else:
                batch, num = tf.shape(objectness)[0], -1
            logits[level] = tf.reshape(objectness, [batch, num])
            deltas[level] = tf.reshape(tf.cast(self.deltas(x), tf.float32), [batch, num, 4])
        return logits, deltas

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(num_anchors=self.num_anchors, num_channels=self.num_channels,
                      num_convs=self.num_convs, winograd_min_pixels=self.winograd_min_pixels)
        return config
