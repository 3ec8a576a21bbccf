"""The project's 2-D convolution layer: ``keras.layers.Conv2D`` plus Winograd for large 3x3 maps at inference.

:class:`Conv2D` has the weights, names and config of ``keras.layers.Conv2D`` (checkpoints and imported
weights load unchanged) and computes the same function. One thing differs: with
``winograd_min_pixels > 0``, a 3x3, stride-1, "same", float32 convolution with at least
``ops.winograd.WINOGRAD_MIN_CHANNELS`` input channels on a map of at least ``winograd_min_pixels`` pixels
runs by Winograd F(4x4, 3x3) (``ops/winograd.py``) when called with ``training=False``: about 2x faster
on CPUs for the FPN and RPN convolutions of P2-P4, with a float32 error of about 2e-5 of the output's
scale instead of 2e-6. Training (``training=True``, or ``None``: not said) always runs the direct
convolution, so gradients and training are exactly those of ``keras.layers.Conv2D``. When the map size
is only known at run time (exported serving signatures), a ``tf.cond`` picks the algorithm per call.

The builder turns it on (``model.winograd``) for models that run on CPUs: float32 inference, no GPU or
TPU visible; ``export --format=tflite`` builds with it off (the TFLite runtime has its own convolutions).
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from mrcnn_tf2.ops import winograd

__all__ = ["Conv2D"]


@keras.saving.register_keras_serializable(package="mrcnn_tf2")
class Conv2D(keras.layers.Conv2D):
    """``keras.layers.Conv2D`` with Winograd inference for large 3x3 maps (see the module docstring).

    Args:
        winograd_min_pixels: maps of at least this many pixels (H * W, per image) use Winograd at
            inference; 0 (default) never.
        *args, **kwargs: those of ``keras.layers.Conv2D``.
    """

    def __init__(self, *args: Any, winograd_min_pixels: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.winograd_min_pixels = int(winograd_min_pixels)

    def _winograd_possible(self) -> bool:
        return (self.winograd_min_pixels > 0 and self.rank == 2 and tuple(self.kernel_size) == (3, 3)
                and tuple(self.strides) == (1, 1) and tuple(self.dilation_rate) == (1, 1)
                and self.padding == "same" and self.data_format == "channels_last" and self.groups == 1
                and self.compute_dtype == "float32")

    def convolve(self, inputs: tf.Tensor, kernel: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        """The convolution of ``inputs`` ``[B, H, W, C]`` with ``kernel`` ``[kh, kw, C, K]``, without bias."""
        if training is None or training or not self._winograd_possible() or inputs.dtype != tf.float32:
            return self.convolution_op(inputs, kernel)
        use = winograd.winograd_applies(inputs.shape[-1], inputs.shape[1], inputs.shape[2],
                                        self.winograd_min_pixels)
        if use is None:  # size known at run time only
            pixels = tf.shape(inputs)[1] * tf.shape(inputs)[2]
            return tf.cond(pixels >= self.winograd_min_pixels,
                           lambda: winograd.conv3x3_winograd(inputs, kernel),
                           lambda: self.convolution_op(inputs, kernel))
        return winograd.conv3x3_winograd(inputs, kernel) if use else self.convolution_op(inputs, kernel)

    def finish(self, outputs: tf.Tensor, bias: tf.Tensor | None) -> tf.Tensor:
        """Adds ``bias`` ``[K]`` (None: none) and applies the activation."""
        if bias is not None:
            outputs = tf.nn.bias_add(outputs, tf.cast(bias, outputs.dtype))
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def call(self, inputs: tf.Tensor, training: bool | None = None) -> tf.Tensor:
        outputs = self.convolve(inputs, self.kernel, training)
        return self.finish(outputs, self.bias if self.use_bias else None)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["winograd_min_pixels"] = self.winograd_min_pixels
        return config
