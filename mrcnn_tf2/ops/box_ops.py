"""Box arithmetic: delta encoding/decoding, clipping, areas, pairwise IoU and format conversion.

This module owns the box-regression parameterisation shared by the RPN and the box head, and the
pairwise IoU used by the matchers. Every function is a pure TensorFlow function that works eagerly
and inside ``tf.function`` with static shapes.

Conventions: boxes are ``[..., 4]`` float32 ``[y1, x1, y2, x2]`` in absolute pixels; heights and
widths are ``y2 - y1`` and ``x2 - x1`` (no ``+1``). Deltas are ``[..., 4]`` float32
``[dy, dx, dh, dw]``. Inputs of other float dtypes are cast to float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import tensorflow as tf

__all__ = [
    "encode_boxes",
    "decode_boxes",
    "clip_boxes",
    "box_area",
    "box_iou",
]

# Smallest height/width used in divisions and logarithms, so degenerate boxes stay finite.
_MIN_SIZE = 1e-6

ImageShape = Sequence[float] | tf.Tensor


def _as_boxes(boxes: tf.Tensor, name: str = "boxes") -> tf.Tensor:
    """Converts to a float32 tensor and checks that the last dimension is 4."""
    boxes = tf.convert_to_tensor(boxes)
    if boxes.dtype != tf.float32:
        boxes = tf.cast(boxes, tf.float32)
    if boxes.shape.rank is not None and boxes.shape[-1] is not None and boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have a last dimension of 4, got shape {boxes.shape}")
    return boxes


def _centers_and_sizes(boxes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Returns (cy, cx, h, w), each ``[...]``, with h and w clamped to ``_MIN_SIZE``."""
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    h = tf.maximum(y2 - y1, _MIN_SIZE)
    w = tf.maximum(x2 - x1, _MIN_SIZE)
    return y1 + 0.5 * (y2 - y1), x1 + 0.5 * (x2 - x1), h, w


def encode_boxes(
    boxes: tf.Tensor,
    anchors: tf.Tensor,
    weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
) -> tf.Tensor:
    """Encodes target boxes as regression deltas relative to anchors (or proposals).

    ``dy = wy * (cy_b - cy_a) / h_a``, ``dx = wx * (cx_b - cx_a) / w_a``,
    ``dh = wh * log(h_b / h_a)``, ``dw = ww * log(w_b / w_a)``. Heights and widths are clamped to a
    tiny epsilon, so zero-size (e.g. padded) boxes give large but finite deltas.

    Args:
        boxes: ``[..., 4]`` float32, target boxes, y1x1y2x2 absolute pixels.
        anchors: ``[..., 4]`` float32, reference boxes (same frame), broadcastable against ``boxes``.
        weights: ``(wy, wx, wh, ww)`` scale factors, e.g. ``(10, 10, 5, 5)`` for the box head.

    Returns:
        ``[..., 4]`` float32 deltas ``(dy, dx, dh, dw)``.
    """
    boxes = _as_boxes(boxes)
    anchors = _as_boxes(anchors, "anchors")
    wy, wx, wh, ww = (float(w) for w in weights)
    cy_b, cx_b, h_b, w_b = _centers_and_sizes(boxes)
    cy_a, cx_a, h_a, w_a = _centers_and_sizes(anchors)
    dy = wy * (cy_b - cy_a) / h_a
    dx = wx * (cx_b - cx_a) / w_a
    dh = wh * tf.math.log(h_b / h_a)
    dw = ww * tf.math.log(w_b / w_a)
    return tf.stack([dy, dx, dh, dw], axis=-1)


def decode_boxes(
    deltas: tf.Tensor,
    anchors: tf.Tensor,
    weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    clip_log: float = math.log(1000.0 / 16),
) -> tf.Tensor:
    """Applies regression deltas to anchors (the inverse of :func:`encode_boxes`).

    Args:
        deltas: ``[..., 4]`` deltas ``(dy, dx, dh, dw)`` (any float dtype; computed in float32).
        anchors: ``[..., 4]`` float32, y1x1y2x2 absolute pixels, broadcastable against ``deltas``.
        weights: ``(wy, wx, wh, ww)``, the same values used for encoding.
        clip_log: upper bound applied to ``dh / wh`` and ``dw / ww`` before ``exp``, so a wild
            prediction cannot overflow.

    Returns:
        ``[..., 4]`` float32 boxes, y1x1y2x2 absolute pixels (not clipped to the image).
    """
    deltas = _as_boxes(deltas, "deltas")
    anchors = _as_boxes(anchors, "anchors")
    wy, wx, wh, ww = (float(w) for w in weights)
    cy_a, cx_a, h_a, w_a = _centers_and_sizes(anchors)
    dy, dx, dh, dw = tf.unstack(deltas, axis=-1)
    dh = tf.minimum(dh / wh, clip_log)
    dw = tf.minimum(dw / ww, clip_log)
    cy = cy_a + (dy / wy) * h_a
    cx = cx_a + (dx / wx) * w_a
    h = h_a * tf.exp(dh)
    w = w_a * tf.exp(dw)
    return tf.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)


def clip_boxes(boxes: tf.Tensor, image_shape: ImageShape) -> tf.Tensor:
    """Clamps boxes to the image: y to ``[0, h]`` and x to ``[0, w]``.

    Args:
        boxes: ``[..., N, 4]`` float32, y1x1y2x2 absolute pixels.
        image_shape: ``(h, w)`` as a Python pair or a ``[2]`` tensor (one size for all boxes), or a
            ``[B, 2]`` tensor with one size per image for boxes ``[B, N, 4]`` (or ``[B, ..., N, 4]``).

    Returns:
        ``[..., N, 4]`` float32 clipped boxes.
    """
    boxes = _as_boxes(boxes)
    image_shape = tf.cast(tf.convert_to_tensor(image_shape), tf.float32)
    if image_shape.shape.rank == 1:
        height, width = image_shape[0], image_shape[1]
    elif image_shape.shape.rank == 2:
        if boxes.shape.rank is None:
            raise ValueError("clip_boxes with a [B, 2] image_shape needs boxes of known rank")
        trailing = [1] * (boxes.shape.rank - 2)
        height = tf.reshape(image_shape[:, 0], [-1] + trailing)
        width = tf.reshape(image_shape[:, 1], [-1] + trailing)
    else:
        raise ValueError(f"image_shape must be (h, w), [2] or [B, 2], got shape {image_shape.shape}")
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    y1 = tf.minimum(tf.maximum(y1, 0.0), height)
    y2 = tf.minimum(tf.maximum(y2, 0.0), height)
    x1 = tf.minimum(tf.maximum(x1, 0.0), width)
    x2 = tf.minimum(tf.maximum(x2, 0.0), width)
    return tf.stack([y1, x1, y2, x2], axis=-1)


def box_area(boxes: tf.Tensor) -> tf.Tensor:
    """Areas of boxes; inverted boxes (``y2 < y1`` or ``x2 < x1``) have area 0.

    Args:
        boxes: ``[..., 4]`` float32, y1x1y2x2.

    Returns:
        ``[...]`` float32 areas in squared pixels.
    """
    boxes = _as_boxes(boxes)
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    return tf.maximum(y2 - y1, 0.0) * tf.maximum(x2 - x1, 0.0)


def box_iou(boxes1: tf.Tensor, boxes2: tf.Tensor) -> tf.Tensor:
    """Pairwise intersection over union.

    Works for ``[N, 4], [M, 4] -> [N, M]`` and batched ``[B, N, 4], [B, M, 4] -> [B, N, M]`` (any
    matching leading dimensions). Pairs whose union is 0 (e.g. two zero-area padded boxes) get IoU 0,
    never NaN.

    Args:
        boxes1: ``[..., N, 4]`` float32, y1x1y2x2.
        boxes2: ``[..., M, 4]`` float32, y1x1y2x2, same frame and leading dimensions.

    Returns:
        ``[..., N, M]`` float32 IoU in ``[0, 1]``.
    """
    boxes1 = _as_boxes(boxes1, "boxes1")
    boxes2 = _as_boxes(boxes2, "boxes2")
    area1 = box_area(boxes1)[..., :, None]  # [..., N, 1]
    area2 = box_area(boxes2)[..., None, :]  # [..., 1, M]
    a_y1, a_x1, a_y2, a_x2 = (c[..., :, None] for c in tf.unstack(boxes1, axis=-1))
    b_y1, b_x1, b_y2, b_x2 = (c[..., None, :] for c in tf.unstack(boxes2, axis=-1))
    inter_h = tf.maximum(tf.minimum(a_y2, b_y2) - tf.maximum(a_y1, b_y1), 0.0)
    inter_w = tf.maximum(tf.minimum(a_x2, b_x2) - tf.maximum(a_x1, b_x1), 0.0)
    intersection = inter_h * inter_w
    union = area1 + area2 - intersection
    return tf.math.divide_no_nan(intersection, union)
