"""Pasting box-relative masks into full images, in NumPy (evaluation, predict, SavedModel clients).

No TensorFlow: ``export/masks.py`` (a serving client's helper) and ``mrcnn_tf2/evaluation.py`` import it
without loading TF. Two rules, chosen by ``model.detection.paste_mode``:

- ``"box"`` (the project's rule, shared with the in-graph ``ops.mask_ops.paste_masks`` and the training
  targets): an ``M x M`` mask covers exactly its box ``[y1, x1, y2, x2]``; mask cell ``k`` has its centre at
  ``y1 + (k + 0.5) * (y2 - y1) / M``. Pixel ``(y, x)`` samples the point ``(y + 0.5, x + 0.5)``: bilinear
  (coordinates clamped to ``[0, M - 1]``) when ``y1 <= y + 0.5 < y2`` and ``x1 <= x + 0.5 < x2``, else 0.
- ``"torchvision"`` (``torchvision.models.detection.roi_heads.paste_masks_in_image``): the mask gets one
  cell of zeros on each side and its box grows by ``(M + 2) / M`` about its centre; the grown box's corners
  are truncated to integers ``bx1 <= bx2``, the padded mask is resized to ``(by2 - by1 + 1) x
  (bx2 - bx1 + 1)`` pixels by bilinear interpolation with ``align_corners=False`` (source coordinate
  ``(d + 0.5) * in / out - 0.5``, clamped below at 0), and placed with its top-left pixel at ``(by1, bx1)``;
  what falls outside the image is cut off.

Values are probabilities, not thresholded. Shape shorthand: N masks, M mask size.
"""

from __future__ import annotations

import numpy as np

from mrcnn_tf2.config.choices import PASTE_MODES

__all__ = ["PASTE_MODES", "paste_masks", "paste_masks_numpy", "paste_masks_torchvision"]

_MIN_SIZE = 1e-6


def _axis_box_rule(points: np.ndarray, start: float, end: float, cells: int):
    inside = ((points >= start) & (points < end)).astype(np.float32)
    coord = (points - start) / max(end - start, _MIN_SIZE) * cells - 0.5
    coord = np.clip(coord, 0.0, cells - 1.0)
    low = np.floor(coord)
    high = np.minimum(low + 1.0, cells - 1.0)
    frac = (coord - low).astype(np.float32)
    return low.astype(np.int64), high.astype(np.int64), (1.0 - frac) * inside, frac * inside


def paste_masks_numpy(masks: np.ndarray, boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """The ``"box"`` rule (module docstring); NumPy twin of ``ops.mask_ops.paste_masks`` (same results).

    Only the pixels under each box are computed: 100 masks of 28 x 28 pasted into 640 x 480 take about
    0.08 s on one CPU core, most of it filling the 123 MB output.

    Args:
        masks: ``[N, M, M]`` box-relative probabilities.
        boxes: ``[N, 4]`` y1x1y2x2 pixels of the target image.
        height: output image height.
        width: output image width.

    Returns:
        ``[N, height, width]`` float32 probabilities.
    """
    masks = np.asarray(masks, np.float32)
    boxes = np.asarray(boxes, np.float64)
    num, mask_size = masks.shape[0], masks.shape[-1]
    out = np.zeros((num, height, width), np.float32)
    for n in range(num):
        y1, x1, y2, x2 = boxes[n]
        # Pixels whose centre c = p + 0.5 can satisfy start <= c < end.
        row0, row1 = max(int(np.ceil(y1 - 0.5)), 0), min(int(np.ceil(y2 - 0.5)), height)
        col0, col1 = max(int(np.ceil(x1 - 0.5)), 0), min(int(np.ceil(x2 - 0.5)), width)
        if row1 <= row0 or col1 <= col0:
            continue
        ys = np.arange(row0, row1, dtype=np.float64) + 0.5
        xs = np.arange(col0, col1, dtype=np.float64) + 0.5
        y_low, y_high, wy_low, wy_high = _axis_box_rule(ys, y1, y2, mask_size)
        x_low, x_high, wx_low, wx_high = _axis_box_rule(xs, x1, x2, mask_size)
        rows = wy_low[:, None] * masks[n, y_low] + wy_high[:, None] * masks[n, y_high]  # [h, M]
        out[n, row0:row1, col0:col1] = wx_low * rows[:, x_low] + wx_high * rows[:, x_high]
    return out


def _resize_axis(dst: np.ndarray, in_size: int, out_size: int):
    """Bilinear taps along one axis for a resize ``in_size -> out_size`` (align_corners=False).

    Args:
        dst: output pixel indices to compute (a subset of ``0 .. out_size - 1``).

    Returns:
        ``(low, high, w_low, w_high)`` per entry of ``dst``.
    """
    src = np.maximum((dst + 0.5) * (in_size / out_size) - 0.5, 0.0)
    low = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    frac = (src - low).astype(np.float32)
    return low, high, 1.0 - frac, frac


def paste_masks_torchvision(masks: np.ndarray, boxes: np.ndarray, height: int, width: int,
                            padding: int = 1) -> np.ndarray:
    """The ``"torchvision"`` rule (module docstring): ``paste_masks_in_image(masks, boxes, (h, w), padding)``.

    Args:
        masks: ``[N, M, M]`` box-relative probabilities.
        boxes: ``[N, 4]`` y1x1y2x2 pixels of the target image (float; grown and truncated as torchvision does,
            in float32).
        height: output image height.
        width: output image width.
        padding: zero cells added on each side of the mask (torchvision: 1).

    Returns:
        ``[N, height, width]`` float32 probabilities.
    """
    masks = np.asarray(masks, np.float32)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    num, mask_size = masks.shape[0], masks.shape[-1]
    out = np.zeros((num, height, width), np.float32)
    if num == 0:
        return out
    padded = np.pad(masks, ((0, 0), (padding, padding), (padding, padding)))
    cells = mask_size + 2 * padding
    scale = np.float32(cells / mask_size)
    half = (boxes[:, 2:] - boxes[:, :2]) * np.float32(0.5) * scale  # [N, 2] (h/2, w/2), float32 as torch
    centre = (boxes[:, 2:] + boxes[:, :2]) * np.float32(0.5)
    grown = np.trunc(np.concatenate([centre - half, centre + half], axis=1)).astype(np.int64)  # toward zero
    for n in range(num):
        by1, bx1, by2, bx2 = (int(v) for v in grown[n])
        box_h, box_w = max(by2 - by1 + 1, 1), max(bx2 - bx1 + 1, 1)
        row0, row1 = max(by1, 0), min(by2 + 1, height)
        col0, col1 = max(bx1, 0), min(bx2 + 1, width)
        if row1 <= row0 or col1 <= col0:
            continue
        y_low, y_high, wy_low, wy_high = _resize_axis(np.arange(row0, row1) - by1, cells, box_h)
        x_low, x_high, wx_low, wx_high = _resize_axis(np.arange(col0, col1) - bx1, cells, box_w)
        rows = wy_low[:, None] * padded[n, y_low] + wy_high[:, None] * padded[n, y_high]  # [h, M + 2]
        out[n, row0:row1, col0:col1] = wx_low * rows[:, x_low] + wx_high * rows[:, x_high]
    return out


def paste_masks(masks: np.ndarray, boxes: np.ndarray, height: int, width: int, mode: str = "box") -> np.ndarray:
    """Pastes ``[N, M, M]`` masks at ``[N, 4]`` y1x1y2x2 boxes into ``[N, height, width]`` float32 images.

    Args:
        mode: ``"box"`` or ``"torchvision"`` (``model.detection.paste_mode``; see the module docstring).

    Raises:
        ValueError: an unknown ``mode``.
    """
    if mode == "box":
        return paste_masks_numpy(masks, boxes, height, width)
    if mode == "torchvision":
        return paste_masks_torchvision(masks, boxes, height, width)
    raise ValueError(f"paste mode '{mode}' is not one of {PASTE_MODES} (model.detection.paste_mode)")
