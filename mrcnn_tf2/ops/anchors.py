"""Anchor boxes: one fixed grid of reference boxes per FPN level.

This module owns the anchor layout, which must match how the RPN head's conv outputs are reshaped:
a level-``l`` output ``[B, H_l, W_l, A * 4]`` reshaped to ``[B, H_l * W_l * A, 4]`` lists anchors row
(y) major, then column (x), then aspect ratio. Anchors are computed with NumPy when the graph is
traced and enter it as constants.

Conventions: float32 ``[y1, x1, y2, x2]`` absolute pixels of the padded (square) model input; level
``l`` has stride ``2**l``; anchor centres sit at pixel-cell centres ``((i + 0.5) * stride,
(j + 0.5) * stride)``; aspect ratio ``r = h / w`` with ``h = size * sqrt(r)``, ``w = size / sqrt(r)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

__all__ = ["generate_anchors", "generate_anchors_numpy", "concat_levels"]


def generate_anchors_numpy(
    image_size: int,
    min_level: int,
    max_level: int,
    sizes: Sequence[float],
    aspect_ratios: Sequence[float],
) -> dict[int, np.ndarray]:
    """NumPy version of :func:`generate_anchors` (same arguments, float32 arrays)."""
    num_levels = max_level - min_level + 1
    if num_levels < 1:
        raise ValueError(f"max_level ({max_level}) must be >= min_level ({min_level})")
    if len(sizes) != num_levels:
        raise ValueError(f"need one anchor size per level {min_level}..{max_level}, got {len(sizes)} sizes")
    if not aspect_ratios or any(r <= 0 for r in aspect_ratios):
        raise ValueError(f"aspect_ratios must be positive, got {tuple(aspect_ratios)}")
    ratios = np.asarray(aspect_ratios, np.float64)
    anchors = {}
    for level, size in zip(range(min_level, max_level + 1), sizes):
        stride = 2**level
        grid = image_size // stride
        centres = (np.arange(grid, dtype=np.float64) + 0.5) * stride
        half_h = 0.5 * size * np.sqrt(ratios)  # [A]
        half_w = 0.5 * size / np.sqrt(ratios)
        cy = centres[:, None, None]  # [H, 1, 1]
        cx = centres[None, :, None]  # [1, W, 1]
        shape = (grid, grid, len(ratios))
        boxes = np.stack(
            [
                np.broadcast_to(cy - half_h, shape),
                np.broadcast_to(cx - half_w, shape),
                np.broadcast_to(cy + half_h, shape),
                np.broadcast_to(cx + half_w, shape),
            ],
            axis=-1,
        )  # [H, W, A, 4]
        anchors[level] = boxes.reshape(-1, 4).astype(np.float32)
    return anchors


def generate_anchors(
    image_size: int,
    min_level: int,
    max_level: int,
    sizes: Sequence[float],
    aspect_ratios: Sequence[float],
) -> dict[int, tf.Tensor]:
    """Generates the anchors of every FPN level.

    Args:
        image_size: side of the square padded model input in pixels (a multiple of ``2**max_level``).
        min_level: first pyramid level (stride ``2**min_level``).
        max_level: last pyramid level, inclusive.
        sizes: one anchor side length in pixels per level, ``sizes[l - min_level]`` for level ``l``.
        aspect_ratios: ratios ``h / w``; ``A = len(aspect_ratios)`` anchors per location.

    Returns:
        ``{level: [H_l * W_l * A, 4] float32}`` with ``H_l = W_l = image_size // 2**level``, y1x1y2x2
        absolute pixels, ordered row (y) major, then column (x), then aspect ratio.
    """
    per_level = generate_anchors_numpy(image_size, min_level, max_level, sizes, aspect_ratios)
    return {level: tf.constant(boxes, tf.float32) for level, boxes in per_level.items()}


def concat_levels(per_level: Mapping[int, tf.Tensor], axis: int = 0) -> tf.Tensor:
    """Concatenates per-level tensors in increasing level order.

    Args:
        per_level: ``{level: tensor}``, e.g. anchors ``[N_l, 4]`` or head outputs ``[B, N_l, ...]``.
        axis: the axis to concatenate along (0 for anchors, 1 for batched head outputs).

    Returns:
        The concatenation, e.g. ``[sum_l N_l, 4]``.
    """
    if not per_level:
        raise ValueError("concat_levels needs at least one level")
    return tf.concat([per_level[level] for level in sorted(per_level)], axis=axis)
