"""On-graph joint image + instance-mask augmentation (pure TF ops, stateless random ops).

Everything runs inside ``Dataset.map`` and is deterministic for a given ``seed`` (a ``[2]`` int tensor,
one per example): the same seed always gives the same augmentation, whatever the map parallelism.

Geometry happens at the image's original resolution, jointly on ``image [H, W, 3]`` and
``masks [N, H, W]`` uint8 {0, 1}; masks stay binary (flips and nearest-neighbour rotation):

1. horizontal / vertical flip, rotation about the image centre (image bilinear, masks nearest, the frame
   keeps its size, outside pixels 0);
2. :func:`plan_window` picks ONE integer crop window of that frame and the resize that maps it into the
   S x S model input. It combines the random crop that keeps a randomly chosen instance whole (each side
   keeps at least ``crop_min_fraction``) and scale jitter (``scale_min..scale_max`` times the fit-to-S
   scale; 0.1-2.0 gives large-scale jitter): when the jittered content would exceed S, the visible part is
   a random S x S window, again placed to keep the chosen instance when it fits.

Colour augmentation (brightness, contrast, saturation, hue, optional blur and noise) acts on the image
only. Configuration: ``mrcnn_tf2.config.AugmentConfig`` (each transform has a probability or range; 0 =
off, and transforms that are off add no ops to the graph).
"""

from __future__ import annotations

import math
from typing import Any

import tensorflow as tf

__all__ = ["check_augment_config", "flip_left_right", "flip_up_down", "rotate", "random_flip_rotate",
           "plan_window", "color_augment"]


def check_augment_config(aug: Any) -> None:
    """Raises ValueError for out-of-range ``AugmentConfig`` values not checked by ``config.validate``."""
    checks = [
        (0 < aug.crop_min_fraction <= 1, f"data.augment.crop_min_fraction={aug.crop_min_fraction} must be in (0, 1]"),
        (0 <= aug.hue <= 0.5, f"data.augment.hue={aug.hue} must be in [0, 0.5]"),
        (0 <= aug.contrast < 1, f"data.augment.contrast={aug.contrast} must be in [0, 1)"),
        (0 <= aug.saturation < 1, f"data.augment.saturation={aug.saturation} must be in [0, 1)"),
        (0 <= aug.brightness <= 1, f"data.augment.brightness={aug.brightness} must be in [0, 1]"),
        (aug.rotation_max_degrees >= 0, "data.augment.rotation_max_degrees must be >= 0"),
        (aug.blur_max_sigma >= 0.1, f"data.augment.blur_max_sigma={aug.blur_max_sigma} must be >= 0.1"),
        (aug.noise_stddev >= 0, "data.augment.noise_stddev must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def _seed(seed: tf.Tensor, k: int) -> tf.Tensor:
    return tf.random.experimental.stateless_fold_in(seed, k)


def _uniform(seed: tf.Tensor, k: int, low: float = 0.0, high: float = 1.0) -> tf.Tensor:
    return tf.random.stateless_uniform([], _seed(seed, k), low, high)


def flip_left_right(image: tf.Tensor, masks: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Mirrors ``image [H, W, C]`` and ``masks [N, H, W]`` horizontally."""
    return tf.reverse(image, axis=[1]), tf.reverse(masks, axis=[2])


def flip_up_down(image: tf.Tensor, masks: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Mirrors ``image [H, W, C]`` and ``masks [N, H, W]`` vertically."""
    return tf.reverse(image, axis=[0]), tf.reverse(masks, axis=[1])


def rotate(image: tf.Tensor, masks: tf.Tensor, angle: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Rotates image and masks about the image centre, keeping the frame size.

    Output pixel (row y, column x) takes the input at ``c + R (p - c)`` with ``p = (x, y)``,
    ``c = ((W - 1) / 2, (H - 1) / 2)`` and ``R = [[cos a, -sin a], [sin a, cos a]]``: with rows pointing
    down, the content turns counter-clockwise on screen for ``a > 0``. Pixels from outside are 0.

    Args:
        image: ``[H, W, 3]`` uint8 or float; bilinear, returned as float32.
        masks: ``[N, H, W]`` uint8; nearest neighbour, stays binary.
        angle: scalar float32, radians.

    Returns:
        ``image [H, W, 3]`` float32 and ``masks [N, H, W]`` uint8.
    """
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    cy, cx = (h - 1.0) / 2.0, (w - 1.0) / 2.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    transform = tf.stack([cos, -sin, cx - cos * cx + sin * cy,
                          sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0])[None]
    out_shape = shape[:2]

    def warp(x: tf.Tensor, interpolation: str) -> tf.Tensor:
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=x, transforms=transform, output_shape=out_shape, fill_value=0.0,
            interpolation=interpolation, fill_mode="CONSTANT")

    image = warp(tf.cast(image, tf.float32)[None], "BILINEAR")[0]
    # Masks as channels of one image; a zero channel keeps N = 0 valid.
    stacked = tf.concat([tf.transpose(masks, [1, 2, 0]), tf.zeros_like(image[..., :1], masks.dtype)], axis=-1)
    masks = tf.transpose(warp(stacked[None], "NEAREST")[0, :, :, :-1], [2, 0, 1])
    return image, masks


def random_flip_rotate(image: tf.Tensor, masks: tf.Tensor, aug: Any, seed: tf.Tensor
                       ) -> tuple[tf.Tensor, tf.Tensor]:
    """Random flips and rotation per ``aug`` (``hflip_prob``, ``vflip_prob``, ``rotation_prob``).

    Args:
        image: ``[H, W, 3]`` uint8 or float.
        masks: ``[N, H, W]`` uint8.
        aug: an ``AugmentConfig``.
        seed: ``[2]`` int, this example's seed.

    Returns:
        ``image [H, W, 3]`` float32 and ``masks [N, H, W]`` uint8.
    """
    image = tf.cast(image, tf.float32)
    if aug.hflip_prob > 0:
        image, masks = tf.cond(_uniform(seed, 1) < aug.hflip_prob,
                               lambda: flip_left_right(image, masks), lambda: (image, masks))
    if aug.vflip_prob > 0:
        image, masks = tf.cond(_uniform(seed, 2) < aug.vflip_prob,
                               lambda: flip_up_down(image, masks), lambda: (image, masks))
    if aug.rotation_prob > 0 and aug.rotation_max_degrees > 0:
        limit = math.radians(aug.rotation_max_degrees)
        angle = _uniform(seed, 4, -limit, limit)
        image, masks = tf.cond(_uniform(seed, 3) < aug.rotation_prob,
                               lambda: rotate(image, masks, angle), lambda: (image, masks))
    return image, masks


def _offset(u: tf.Tensor, size: tf.Tensor, window: tf.Tensor, keep_lo: tf.Tensor, keep_hi: tf.Tensor,
            has_keep: tf.Tensor) -> tf.Tensor:
    """A random integer start in ``[0, size - window]`` whose window covers ``[keep_lo, keep_hi)`` if it can.

    When the kept interval is longer than the window, the window lies inside it instead.
    """
    room = size - window
    lo = tf.clip_by_value(keep_hi - window, 0, room)
    hi = tf.clip_by_value(keep_lo, 0, room)
    a = tf.where(has_keep, tf.minimum(lo, hi), 0)
    b = tf.where(has_keep, tf.maximum(lo, hi), room)
    pick = a + tf.cast(tf.floor(u * tf.cast(b - a + 1, tf.float32)), tf.int32)
    return tf.minimum(pick, b)


def plan_window(boxes: tf.Tensor, frame_hw: tf.Tensor, image_size: int, aug: Any, seed: tf.Tensor
                ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Chooses the crop window of the frame and the size its content is resized to (see module doc).

    Args:
        boxes: ``[N, 4]`` float32 tight yxyx boxes of the instances in frame pixels (empty = zeros).
        frame_hw: ``[2]`` int32, frame (image) size.
        image_size: S.
        aug: an ``AugmentConfig`` (``crop_prob``, ``crop_min_fraction``, ``scale_min``, ``scale_max``).
        seed: ``[2]`` int, this example's seed.

    Returns:
        ``window_yx [2]`` int32 (top-left), ``window_hw [2]`` int32 (>= 1) and ``scaled_hw [2]`` int32
        (content size in the model input, each in ``[1, S]``).
    """
    frame_hw = tf.cast(frame_hw, tf.int32)
    boxes = tf.cast(tf.round(boxes), tf.int32)
    valid = boxes[:, 2] > boxes[:, 0]
    valid_idx = tf.cast(tf.where(valid)[:, 0], tf.int32)
    num_valid = tf.shape(valid_idx)[0]
    has_keep = num_valid > 0
    choice = tf.minimum(tf.cast(_uniform(seed, 10) * tf.cast(num_valid, tf.float32), tf.int32),
                        tf.maximum(num_valid - 1, 0))
    keep = tf.cond(has_keep, lambda: tf.gather(boxes, valid_idx[choice]), lambda: tf.zeros([4], tf.int32))
    keep_lo, keep_hi = keep[:2], keep[2:]

    window_yx = tf.zeros([2], tf.int32)
    window_hw = frame_hw
    if aug.crop_prob > 0 and aug.crop_min_fraction < 1:
        fractions = tf.random.stateless_uniform([2], _seed(seed, 11), aug.crop_min_fraction, 1.0)
        crop_hw = tf.cast(tf.round(fractions * tf.cast(frame_hw, tf.float32)), tf.int32)
        crop_hw = tf.clip_by_value(tf.maximum(crop_hw, tf.where(has_keep, keep_hi - keep_lo, 1)), 1, frame_hw)
        u = tf.random.stateless_uniform([2], _seed(seed, 12))
        crop_yx = _offset(u, frame_hw, crop_hw, keep_lo, keep_hi, has_keep)
        do_crop = _uniform(seed, 13) < aug.crop_prob
        window_yx = tf.where(do_crop, crop_yx, window_yx)
        window_hw = tf.where(do_crop, crop_hw, window_hw)

    jitter = _uniform(seed, 14, aug.scale_min, aug.scale_max) if aug.scale_max > aug.scale_min else aug.scale_min
    window_f = tf.cast(window_hw, tf.float32)
    scale = float(image_size) / tf.reduce_max(window_f) * jitter
    if aug.scale_max > 1:
        # Content larger than S: keep a random S x S part (covering the chosen instance when it fits).
        visible = tf.cast(tf.floor(float(image_size) / scale * (1.0 + 1e-6)), tf.int32)
        visible_hw = tf.minimum(tf.maximum(visible, 1), window_hw)
        u = tf.random.stateless_uniform([2], _seed(seed, 15))
        inner = _offset(u, window_hw, visible_hw, keep_lo - window_yx, keep_hi - window_yx, has_keep)
        window_yx, window_hw = window_yx + inner, visible_hw
    scaled = tf.round(tf.cast(window_hw, tf.float32) * scale)
    scaled_hw = tf.cast(tf.clip_by_value(scaled, 1.0, float(image_size)), tf.int32)
    return window_yx, window_hw, scaled_hw


def _gaussian_blur(image: tf.Tensor, sigma: tf.Tensor, radius: int) -> tf.Tensor:
    """Separable Gaussian blur of ``image [h, w, 3]`` float32 with symmetric borders."""
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-0.5 * tf.square(x / sigma))
    kernel = kernel / tf.reduce_sum(kernel)
    padded = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="SYMMETRIC")
    ky = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, 3, 1])
    kx = tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, 3, 1])
    out = tf.nn.depthwise_conv2d(padded, ky, [1, 1, 1, 1], "VALID")
    out = tf.nn.depthwise_conv2d(out, kx, [1, 1, 1, 1], "VALID")
    return out[0]


def color_augment(image: tf.Tensor, aug: Any, seed: tf.Tensor) -> tf.Tensor:
    """Brightness, contrast, saturation, hue, then optional Gaussian blur and noise.

    Args:
        image: ``[h, w, 3]`` RGB 0..255 (uint8 or float).
        aug: an ``AugmentConfig``; ``brightness`` is a fraction of full range, ``contrast`` and
            ``saturation`` are ``1 +/- value`` factors, ``hue`` a fraction of the hue circle.
        seed: ``[2]`` int, this example's seed.

    Returns:
        ``[h, w, 3]`` float32 RGB 0..255.
    """
    x = tf.cast(image, tf.float32) / 255.0
    if aug.brightness > 0:
        x = tf.image.stateless_random_brightness(x, aug.brightness, _seed(seed, 20))
    if aug.contrast > 0:
        x = tf.image.stateless_random_contrast(x, 1 - aug.contrast, 1 + aug.contrast, _seed(seed, 21))
    if aug.saturation > 0:
        x = tf.image.stateless_random_saturation(x, 1 - aug.saturation, 1 + aug.saturation, _seed(seed, 22))
    if aug.hue > 0:
        x = tf.image.stateless_random_hue(x, aug.hue, _seed(seed, 23))
    x = tf.clip_by_value(x, 0.0, 1.0) * 255.0
    if aug.blur_prob > 0:
        radius = int(math.ceil(2 * aug.blur_max_sigma))
        sigma = _uniform(seed, 25, 0.1, aug.blur_max_sigma)
        fits = tf.reduce_min(tf.shape(x)[:2]) > radius
        x = tf.cond(tf.logical_and(_uniform(seed, 24) < aug.blur_prob, fits),
                    lambda: _gaussian_blur(x, sigma, radius), lambda: x)
    if aug.noise_prob > 0 and aug.noise_stddev > 0:
        def add_noise() -> tf.Tensor:
            noise = tf.random.stateless_normal(tf.shape(x), _seed(seed, 27), stddev=aug.noise_stddev)
            return tf.clip_by_value(x + noise, 0.0, 255.0)

        x = tf.cond(_uniform(seed, 26) < aug.noise_prob, add_noise, lambda: x)
    return x
