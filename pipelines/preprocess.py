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
  ``none`` = RGB 0..255 as float32 (MobileNetV3 rescales inside the model); ``imagenet`` = RGB scaled to
  [0, 1], minus ``IMAGENET_MEAN_RGB``, divided by ``IMAGENET_STD_RGB`` (torchvision's weights).
- ``model.resize_mode="short_side"`` (:class:`SideResize`) replaces the square canvas with torchvision's
  ``GeneralizedRCNNTransform`` (eval): normalize, then scale by ``min(min_size / short, max_size / long)``
  to ``floor(side * scale)`` (float64, as torch's ``interpolate(scale_factor=..., recompute_scale_factor=True)``),
  bilinear with half-pixel centres and no antialiasing, then zero-pad each side on its own to a multiple
  of ``size_divisibility``: a non-square ``[H, W, 3]`` model input. A batch of such images is padded at the
  bottom/right to the largest in the batch (:func:`pad_batch`, ``padded_batch``), as torchvision batches.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import tensorflow as tf

from mrcnn_tf2.config.choices import PIXEL_NORMALIZATIONS

__all__ = ["CAFFE_MEAN_BGR", "IMAGENET_MEAN_RGB", "IMAGENET_STD_RGB", "PIXEL_NORMALIZATIONS", "SideResize",
           "normalize_image", "denormalize_image", "scaled_size", "side_scaled_size", "side_resize",
           "resize_and_pad", "resize_by_side", "build_image_info", "preprocess_image", "pad_batch"]

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)


class SideResize(NamedTuple):
    """torchvision's eval resize: short side ``min_size``, long side at most ``max_size``, pad each side
    to a multiple of ``size_divisibility``."""

    min_size: int = 800
    max_size: int = 1333
    size_divisibility: int = 32

    @property
    def max_padded_side(self) -> int:
        """The largest padded side any image can get (no side exceeds ``max_size``)."""
        return -(-self.max_size // self.size_divisibility) * self.size_divisibility


def side_resize(model_cfg: Any) -> SideResize | None:
    """The :class:`SideResize` of a ``ModelConfig`` in ``short_side`` mode, None in ``square`` mode."""
    if getattr(model_cfg, "resize_mode", "square") != "short_side":
        return None
    return SideResize(int(model_cfg.min_size), int(model_cfg.max_size), int(model_cfg.size_divisibility))


def _check_normalization(pixel_normalization: str) -> None:
    if pixel_normalization not in PIXEL_NORMALIZATIONS:
        raise ValueError(f"pixel_normalization must be one of {PIXEL_NORMALIZATIONS}, "
                         f"got {pixel_normalization!r}")


def normalize_image(image: tf.Tensor, pixel_normalization: str) -> tf.Tensor:
    """Applies the backbone's pixel normalization.

    Args:
        image: ``[..., 3]`` RGB in 0..255, any real or integer dtype.
        pixel_normalization: ``caffe``, ``none`` or ``imagenet``.

    Returns:
        ``[..., 3]`` float32: BGR minus ``CAFFE_MEAN_BGR`` (caffe), RGB 0..255 (none) or
        ``(RGB / 255 - IMAGENET_MEAN_RGB) / IMAGENET_STD_RGB`` (imagenet, the order of torchvision's
        ``to_tensor`` then ``GeneralizedRCNNTransform.normalize``).
    """
    _check_normalization(pixel_normalization)
    image = tf.cast(image, tf.float32)
    if pixel_normalization == "caffe":  # tf.reverse is ~7x faster than image[..., ::-1] on CPU
        image = tf.reverse(image, axis=[-1]) - tf.constant(CAFFE_MEAN_BGR, tf.float32)
    elif pixel_normalization == "imagenet":
        image = (image / 255.0 - tf.constant(IMAGENET_MEAN_RGB, tf.float32)) / tf.constant(IMAGENET_STD_RGB,
                                                                                           tf.float32)
    return image


def denormalize_image(image: tf.Tensor, pixel_normalization: str) -> tf.Tensor:
    """Inverse of :func:`normalize_image`: ``[..., 3]`` float32 RGB 0..255 (for visualization)."""
    _check_normalization(pixel_normalization)
    image = tf.cast(image, tf.float32)
    if pixel_normalization == "caffe":
        image = tf.reverse(image + tf.constant(CAFFE_MEAN_BGR, tf.float32), axis=[-1])
    elif pixel_normalization == "imagenet":
        image = (image * tf.constant(IMAGENET_STD_RGB, tf.float32) + tf.constant(IMAGENET_MEAN_RGB, tf.float32)) * 255.0
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


def side_scaled_size(height: tf.Tensor, width: tf.Tensor, min_size: int, max_size: int) -> tf.Tensor:
    """torchvision's resized size: ``floor(side * min(min_size / short, max_size / long))`` in float64.

    Args:
        height, width: int scalars.
        min_size, max_size: the short-side target and the long-side bound.

    Returns:
        ``[2]`` int32 ``(scaled_h, scaled_w)``, each at least 1.
    """
    hw = tf.cast(tf.stack([height, width]), tf.float64)
    scale = tf.minimum(float(min_size) / tf.reduce_min(hw), float(max_size) / tf.reduce_max(hw))
    return tf.cast(tf.maximum(tf.floor(hw * scale), 1.0), tf.int32)


def resize_by_side(image: tf.Tensor, resize: SideResize, pixel_normalization: str
                   ) -> tuple[tf.Tensor, tf.Tensor]:
    """torchvision's eval transform of one image: normalize, resize by side, pad each side on its own.

    Args:
        image: ``[h, w, 3]`` RGB 0..255, any dtype.
        resize: the :class:`SideResize` rule.
        pixel_normalization: one of ``PIXEL_NORMALIZATIONS``.

    Returns:
        ``image [H, W, 3]`` float32 (H, W the scaled size rounded up to ``size_divisibility``; content at the
        top-left, padding 0) and ``scaled_hw [2]`` int32.
    """
    shape = tf.shape(image)
    scaled = side_scaled_size(shape[0], shape[1], resize.min_size, resize.max_size)
    out = tf.image.resize(normalize_image(image, pixel_normalization), scaled, method="bilinear", antialias=False)
    div = resize.size_divisibility
    padded = (scaled + div - 1) // div * div
    pad = padded - scaled
    out = tf.pad(out, [[0, pad[0]], [0, pad[1]], [0, 0]])
    out.set_shape([None, None, 3])
    return out, scaled


def pad_batch(images: tf.Tensor, size_hw: tf.Tensor) -> tf.Tensor:
    """Crops or zero-pads a batch ``[B, H, W, 3]`` at the bottom/right to ``size_hw`` ``[2]`` int32."""
    hw = tf.shape(images)[1:3]
    images = images[:, :tf.minimum(hw[0], size_hw[0]), :tf.minimum(hw[1], size_hw[1])]
    pad = tf.maximum(size_hw - tf.shape(images)[1:3], 0)
    return tf.pad(images, [[0, 0], [0, pad[0]], [0, pad[1]], [0, 0]])


def preprocess_image(image: tf.Tensor, image_size: int, pixel_normalization: str,
                     resize: SideResize | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    """Eval/predict/export preprocessing of one image (no augmentation).

    Args:
        image: ``[H, W, 3]`` uint8 RGB (any H, W >= 1).
        image_size: S, the model input side (square mode).
        pixel_normalization: ``caffe``, ``none`` or ``imagenet``.
        resize: None for the square mode, or a :class:`SideResize` (``side_resize(cfg.model)``).

    Returns:
        ``image [S, S, 3]`` (square mode) or ``[H', W', 3]`` (each side padded to its own multiple of
        ``size_divisibility``) float32 (normalized, zero padding) and ``image_info [4, 2]`` float32 with
        ``scale = scaled / original`` per axis and offset 0.
    """
    if resize is not None:
        out, scaled = resize_by_side(image, resize, pixel_normalization)
        original = tf.cast(tf.shape(image)[:2], tf.float32)
        return out, build_image_info(original, scaled, tf.cast(scaled, tf.float32) / original)
    shape = tf.shape(image)
    scaled = scaled_size(shape[0], shape[1], image_size)
    out = resize_and_pad(image, scaled, image_size, pixel_normalization)
    original = tf.cast(shape[:2], tf.float32)
    info = build_image_info(original, scaled, tf.cast(scaled, tf.float32) / original)
    return out, info
