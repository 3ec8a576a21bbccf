"""Anchor boxes: one fixed grid of reference boxes per FPN level.

This module owns the anchor layout, which must match how the RPN head's conv outputs are reshaped:
a level-``l`` output ``[B, H_l, W_l, A * 4]`` reshaped to ``[B, H_l * W_l * A, 4]`` lists anchors row
(y) major, then column (x), then aspect ratio. Anchors are computed with NumPy when the graph is
traced and enter it as constants.

Conventions: float32 ``[y1, x1, y2, x2]`` absolute pixels of the padded model input; level ``l`` has
stride ``2**l`` on a square input whose side is a multiple of ``2**max_level``; in general (non-square
inputs, :func:`grid_anchors`) the stride of each axis is ``input size // feature size`` with integer
division, as torchvision's ``AnchorGenerator`` computes it. The anchor of cell ``(i, j)`` is a cell anchor
shifted to ``((i + offset) * stride_y, (j + offset) * stride_x)``: ``offset = 0.5`` centres it in the cell,
``offset = 0`` puts it on the cell's top-left corner (torchvision). Aspect ratio ``r = h / w`` with
``h = size * sqrt(r)``, ``w = size / sqrt(r)``; with ``rounded`` the cell anchor's half-extents are rounded
to integers (torchvision rounds ``(-w/2, -h/2, w/2, h/2)``, half to even, in float32).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

__all__ = ["cell_anchors", "generate_anchors", "generate_anchors_numpy", "grid_anchors", "concat_levels"]


def _check_levels(min_level: int, max_level: int, sizes: Sequence[float], aspect_ratios: Sequence[float]) -> None:
    num_levels = max_level - min_level + 1
    if num_levels < 1:
        raise ValueError(f"max_level ({max_level}) must be >= min_level ({min_level})")
    if len(sizes) != num_levels:
        raise ValueError(f"need one anchor size per level {min_level}..{max_level}, got {len(sizes)} sizes")
    if not aspect_ratios or any(r <= 0 for r in aspect_ratios):
        raise ValueError(f"aspect_ratios must be positive, got {tuple(aspect_ratios)}")


def cell_anchors(size: float, aspect_ratios: Sequence[float], rounded: bool = False) -> np.ndarray:
    """The ``A`` anchors of one cell relative to its shift point: ``[A, 4]`` float64 y1x1y2x2.

    ``[-h/2, -w/2, h/2, w/2]`` per ratio ``r`` (``h = size * sqrt(r)``, ``w = size / sqrt(r)``), in the order
    of ``aspect_ratios``. ``rounded`` reproduces torchvision: the half-extents are computed in float32 and
    rounded half to even.
    """
    if rounded:
        ratios = np.asarray(aspect_ratios, np.float32)
        h_ratios = np.sqrt(ratios)
        w_ratios = np.float32(1.0) / h_ratios
        hs = h_ratios * np.float32(size)
        ws = w_ratios * np.float32(size)
        half = np.stack([-hs, -ws, hs, ws], axis=1) / np.float32(2.0)
        return np.round(half).astype(np.float64)
    ratios = np.asarray(aspect_ratios, np.float64)
    half_h = 0.5 * size * np.sqrt(ratios)
    half_w = 0.5 * size / np.sqrt(ratios)
    return np.stack([-half_h, -half_w, half_h, half_w], axis=1)


def generate_anchors_numpy(
    image_size: int,
    min_level: int,
    max_level: int,
    sizes: Sequence[float],
    aspect_ratios: Sequence[float],
    offset: float = 0.5,
    rounded: bool = False,
) -> dict[int, np.ndarray]:
    """NumPy version of :func:`generate_anchors` (same arguments, float32 arrays)."""
    _check_levels(min_level, max_level, sizes, aspect_ratios)
    anchors = {}
    for level, size in zip(range(min_level, max_level + 1), sizes):
        stride = 2**level
        grid = image_size // stride
        shifts = (np.arange(grid, dtype=np.float64) + offset) * stride
        cell = cell_anchors(size, aspect_ratios, rounded)  # [A, 4]
        sy, sx = np.meshgrid(shifts, shifts, indexing="ij")  # [H, W]
        shift = np.stack([sy, sx, sy, sx], axis=-1)[:, :, None, :]  # [H, W, 1, 4]
        boxes = shift + cell[None, None]  # [H, W, A, 4]
        anchors[level] = boxes.reshape(-1, 4).astype(np.float32)
    return anchors


def grid_anchors(
    image_hw: tf.Tensor,
    feature_hw: Mapping[int, tf.Tensor],
    sizes: Sequence[float],
    aspect_ratios: Sequence[float],
    offset: float = 0.5,
    rounded: bool = False,
) -> dict[int, tf.Tensor]:
    """Anchors for the feature grids a model actually produced (on the graph; any, non-square, size).

    Args:
        image_hw: ``[2]`` int, height and width of the padded model input.
        feature_hw: ``{level: [2] int}``, height and width of each level's feature map, levels in
            increasing order; ``sizes[k]`` belongs to the k-th level.
        sizes: one anchor side length in pixels per level.
        aspect_ratios: ratios ``h / w``; ``A = len(aspect_ratios)``.
        offset: shift of the anchors within a cell, in strides (0.5 = cell centre, 0 = torchvision).
        rounded: round the cell anchors as torchvision does.

    Returns:
        ``{level: [H_l * W_l * A, 4] float32}`` y1x1y2x2 pixels, row (y) major, then column (x), then
        ratio; the stride of each axis is ``image size // feature size`` (integer division).
    """
    levels = sorted(feature_hw)
    if len(sizes) != len(levels):
        raise ValueError(f"need one anchor size per level {levels}, got {len(sizes)} sizes")
    if not aspect_ratios or any(r <= 0 for r in aspect_ratios):
        raise ValueError(f"aspect_ratios must be positive, got {tuple(aspect_ratios)}")
    image_hw = tf.cast(image_hw, tf.int32)
    anchors = {}
    for level, size in zip(levels, sizes):
        grid = tf.cast(feature_hw[level], tf.int32)
        stride = tf.cast(image_hw // grid, tf.float64)  # [2]
        # float64 keeps the non-rounded anchors equal to generate_anchors' constants.
        sy = (tf.range(grid[0], dtype=tf.float64) + offset) * stride[0]
        sx = (tf.range(grid[1], dtype=tf.float64) + offset) * stride[1]
        sy, sx = tf.meshgrid(sy, sx, indexing="ij")  # [H, W]
        shift = tf.stack([sy, sx, sy, sx], axis=-1)[:, :, None, :]  # [H, W, 1, 4]
        cell = tf.constant(cell_anchors(size, aspect_ratios, rounded), tf.float64)  # [A, 4]
        boxes = shift + cell[None, None]
        anchors[level] = tf.cast(tf.reshape(boxes, [-1, 4]), tf.float32)
    return anchors


def generate_anchors(
    image_size: int,
    min_level: int,
    max_level: int,
    sizes: Sequence[float],
    aspect_ratios: Sequence[float],
    offset: float = 0.5,
    rounded: bool = False,
) -> dict[int, tf.Tensor]:
    """Generates the anchors of every FPN level.

    Args:
        image_size: side of the square padded model input in pixels (a multiple of ``2**max_level``).
        min_level: first pyramid level (stride ``2**min_level``).
        max_level: last pyramid level, inclusive.
        sizes: one anchor side length in pixels per level, ``sizes[l - min_level]`` for level ``l``.
        aspect_ratios: ratios ``h / w``; ``A = len(aspect_ratios)`` anchors per location.
        offset: anchor shift within a cell, in strides (0.5 = centre; torchvision 0).
        rounded: round the cell anchors to integers as torchvision does.

    Returns:
        ``{level: [H_l * W_l * A, 4] float32}`` with ``H_l = W_l = image_size // 2**level``, y1x1y2x2
        absolute pixels, ordered row (y) major, then column (x), then aspect ratio.
    """
    per_level = generate_anchors_numpy(image_size, min_level, max_level, sizes, aspect_ratios, offset, rounded)
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
