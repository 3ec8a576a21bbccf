"""The one resize/normalize path: training, evaluation, predict and the SavedModel export all use it.

Pure TensorFlow ops only (the functions go into exported serving graphs) that work for images of any
size. Conventions:

- the image is resized keeping its aspect ratio so that its long side fits ``image_size`` (S), placed
  at the top-left of an S x S canvas and zero-padded; padding is 0 *after* normalization;
- ``image_info [4, 2]`` float32 = ``[[orig_h, orig_w], [scaled_h, scaled_w], [y_scale, x_scale],
  [y_offset, x_offset]]``: a point ``p`` (y, x) of the original image lies at ``p * scale - offset`` in
  the model input; ``scaled_h/w`` is the extent of real image content in the model input (the rest is
  padding); the offset is non-zero only after a training-time random crop;
- pixel normalization follows ``model.pixel_normalization``: ``caffe`` = BGR channel order with the
  ImageNet mean ``CAFFE_MEAN_BGR`` subtracted and no scaling (keras.applications ResNet weights);
  ``none`` = RGB 0..255 as float32 (MobileNetV3 rescales inside the model).
"""

from __future__ import annotations

import tensorflow as tf

from mrcnn_tf2.config.choices import PIXEL_NORMALIZATIONS

__all__ = ["CAFFE_MEAN_BGR", "PIXEL_NORMALIZATIONS", "normalize_image", "denormalize_image", "scaled_size",
           "resize_and_pad", "build_image_info", "preprocess_image"]

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def _check_normalization(pixel_normalization: str) -> None:
    if pixel_normalization not in PIXEL_NORMALIZATIONS:
        raise ValueError(f"pixel_normalization must be one of {PIXEL_NORMALIZATIONS}, "
                         f"got {pixel_normalization!r}")


def normalize_image(image: tf.Tensor, pixel_normalization: str) -> tf.Tensor:
    """Applies the backbone's pixel normalization.

    Args:
        image: ``[..., 3]`` RGB in 0..255, any real or integer dtype.
        pixel_normalization: ``caffe`` or ``none``.

    Returns:
        ``[..., 3]`` float32: BGR minus ``CAFFE_MEAN_BGR`` (caffe) or RGB 0..255 (none).
    """
    _check_normalization(pixel_normalization)
    image = tf.cast(image, tf.float32)
    if pixel_normalization == "caffe":  # tf.reverse is ~7x faster than image[..., ::-1] on CPU
        image = tf.reverse(image, axis=[-1]) - tf.constant(CAFFE_MEAN_BGR, tf.float32)
    return image


def denormalize_image(image: tf.Tensor, pixel_normalization: str) -> tf.Tensor:
    """Inverse of :func:`normalize_image`: ``[..., 3]`` float32 RGB 0..255 (for visualization)."""
    _check_normalization(pixel_normalization)
    image = tf.cast(image, tf.float32)
    if pixel_normalization == "caffe":
        image = tf.reverse(image + tf.constant(CAFFE_MEAN_BGR, tf.float32), axis=[-1])
    return image


def scaled_size(height: tf.Tensor, width: tf.Tensor, image_size: int, scale: tf.Tensor | float = 1.0
                ) -> tf.Tensor:
    """Size of the resized image content: the long side fits ``image_size``, times ``scale``.

    Args:
        height, width: int scalars, the size of the image to resize.
        image_size: S, the model input side.
        scale: extra factor (scale jitter); the result is clipped to ``[1, S]``.

    Returns:
        ``[2]`` int32 ``(scaled_h, scaled_w)``.
    """
    hw = tf.cast(tf.stack([height, width]), tf.float32)
    factor = float(image_size) / tf.reduce_max(hw) * tf.cast(scale, tf.float32)
    return tf.cast(tf.clip_by_value(tf.round(hw * factor), 1.0, float(image_size)), tf.int32)


def resize_and_pad(image: tf.Tensor, size_hw: tf.Tensor, image_size: int, pixel_normalization: str
                   ) -> tf.Tensor:
    """Resizes to ``size_hw`` (bilinear; antialiased when shrinking), normalizes and zero-pads to S x S.

    Args:
        image: ``[h, w, 3]`` RGB 0..255, any dtype.
        size_hw: ``[2]`` int32, the target content size, each at most S.
        image_size: S.
        pixel_normalization: ``caffe`` or ``none``.

    Returns:
        ``[S, S, 3]`` float32, content at the top-left, padding 0.
    """
    image = tf.cast(image, tf.float32)
    size_hw = tf.cast(size_hw, tf.int32)
    shrinking = tf.reduce_any(size_hw < tf.shape(image)[:2])
    # Normalization is affine per channel and resize weights sum to 1, so the two commute: normalize
    # whichever image is smaller (a pass over 1024 x 1024 floats costs more than the resize itself).
    image = tf.cond(shrinking,
                    lambda: normalize_image(tf.image.resize(image, size_hw, antialias=True), pixel_normalization),
                    lambda: tf.image.resize(normalize_image(image, pixel_normalization), size_hw))
    pad = image_size - size_hw
    image = tf.pad(image, [[0, pad[0]], [0, pad[1]], [0, 0]])
    image.set_shape([image_size, image_size, 3])
    return image


def build_image_info(original_hw: tf.Tensor, scaled_hw: tf.Tensor, scale_yx: tf.Tensor,
                     offset_yx: tf.Tensor | None = None) -> tf.Tensor:
    """Stacks ``[[orig_h, orig_w], [scaled_h, scaled_w], [y_scale, x_scale], [y_offset, x_offset]]``.

    Args:
        original_hw, scaled_hw, scale_yx, offset_yx: ``[2]`` each, any real dtype; offset default 0.

    Returns:
        ``[4, 2]`` float32.
    """
    rows = [original_hw, scaled_hw, scale_yx, tf.zeros([2]) if offset_yx is None else offset_yx]
    return tf.stack([tf.cast(r, tf.float32) for r in rows])


def preprocess_image(image: tf.Tensor, image_size: int, pixel_normalization: str
                     ) -> tuple[tf.Tensor, tf.Tensor]:
    """Eval/predict/export preprocessing of one image (no augmentation).

    Args:
        image: ``[H, W, 3]`` uint8 RGB (any H, W >= 1).
        image_size: S, the model input side.
        pixel_normalization: ``caffe`` or ``none``.

    Returns:
        ``image [S, S, 3]`` float32 (normalized, zero padding) and ``image_info [4, 2]`` float32 with
        ``scale = scaled / original`` per axis and offset 0.
    """
    shape = tf.shape(image)
    scaled = scaled_size(shape[0], shape[1], image_size)
    out = resize_and_pad(image, scaled, image_size, pixel_normalization)
    original = tf.cast(shape[:2], tf.float32)
    info = build_image_info(original, scaled, tf.cast(scaled, tf.float32) / original)
    return out, info
