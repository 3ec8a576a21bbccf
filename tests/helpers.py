"""Shared test helpers: a tiny synthetic batch in the model's batch contract."""

from __future__ import annotations

import numpy as np


def _circle_crop(box, size):
    """The box-relative (size x size, aligned centres) mask of the circle inscribed in ``box``."""
    y1, x1, y2, x2 = box
    ys = y1 + (np.arange(size) + 0.5) * (y2 - y1) / size
    xs = x1 + (np.arange(size) + 0.5) * (x2 - x1) / size
    cy, cx, r = (y1 + y2) / 2, (x1 + x2) / 2, (y2 - y1) / 2
    return ((ys[:, None] - cy) ** 2 + (xs[None, :] - cx) ** 2 <= r * r).astype(np.float32)


def two_object_batch(image_size=128, max_instances=8, mask_size=28, batch=1, seed=0):
    """One image (repeated ``batch`` times) with a red square (class 1) and a green circle (class 2).

    Returns the batch dict (numpy) of DESIGN.md section 3 with ``pixel_normalization='none'``.
    """
    rng = np.random.default_rng(seed)
    image = np.full([image_size, image_size, 3], 40.0, np.float32) + rng.normal(0, 3, [image_size] * 2 + [3])
    square = (20.0, 16.0, 60.0, 56.0)
    circle = (64.0, 70.0, 112.0, 118.0)
    image[20:60, 16:56] = [220.0, 30.0, 30.0]
    yy, xx = np.mgrid[:image_size, :image_size] + 0.5
    inside = (yy - 88.0) ** 2 + (xx - 94.0) ** 2 <= 24.0**2
    image[inside] = [30.0, 220.0, 30.0]
    boxes = np.zeros([max_instances, 4], np.float32)
    classes = -np.ones([max_instances], np.int32)
    masks = np.zeros([max_instances, mask_size, mask_size], np.float32)
    boxes[0], classes[0], masks[0] = square, 1, 1.0
    boxes[1], classes[1], masks[1] = circle, 2, _circle_crop(circle, mask_size)
    s = float(image_size)
    info = np.array([[s, s], [s, s], [1.0, 1.0], [0.0, 0.0]], np.float32)
    rep = lambda x: np.repeat(x[None], batch, axis=0)  # noqa: E731
    return {"images": rep(image.astype(np.float32)), "image_info": rep(info), "gt_boxes": rep(boxes),
            "gt_classes": rep(classes), "gt_masks": rep(masks)}


def np_iou(a, b):
    """IoU of two yxyx boxes, plain NumPy."""
    ih = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iw = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ih * iw
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def gradient_image(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth gradient with a bright rectangle and a little noise: [h, w, 3] uint8 RGB."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    image = np.stack([yy * 255 / h, xx * 255 / w, np.full([h, w], 90.0)], -1)
    image[h // 4: h // 2, w // 3: 2 * w // 3] = (230, 40, 40)
    return np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
