"""Drawing detections on images: translucent masks, box outlines and "name 0.93" labels (OpenCV).

This module owns the pictures made for users: the PNGs of ``--mode=predict`` and the validation images
sent to TensorBoard. It works on host NumPy arrays in original-image pixels, RGB channel order.
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Sequence

import cv2
import numpy as np

__all__ = ["class_color", "draw_detections", "save_png"]

_MASK_ALPHA = 0.45


def class_color(label: int) -> tuple[int, int, int]:
    """A bright, stable RGB colour for a class label (hues spread by the golden ratio)."""
    hue = (0.13 + 0.618033988749895 * int(label)) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def _label_text(label: int, score: float, class_names: Sequence[str]) -> str:
    name = class_names[label - 1] if 1 <= label <= len(class_names) else str(label)
    return f"{name} {score:.2f}"


def draw_detections(image: np.ndarray, boxes: np.ndarray, classes: np.ndarray, scores: np.ndarray,
                    masks: np.ndarray | None, class_names: Sequence[str],
                    score_threshold: float = 0.5) -> np.ndarray:
    """Draws the detections scoring at least ``score_threshold`` on a copy of ``image``.

    Lower-scoring detections are drawn first, so the most confident ones end up on top.

    Args:
        image: [H, W, 3] uint8 RGB; not modified.
        boxes: [N, 4] float, y1x1y2x2 pixels of ``image``.
        classes: [N] int contiguous labels 1..K; label i is named ``class_names[i - 1]`` (other labels
            are shown as numbers).
        scores: [N] float in [0, 1].
        masks: [N, H, W] bool (or 0/1) masks in ``image`` pixels, or None to draw boxes only.
        class_names: the K category names.
        score_threshold: detections below it are not drawn.

    Returns:
        [H, W, 3] uint8 RGB image with translucent masks, mask contours, box outlines and labels.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    classes = np.asarray(classes).reshape(-1).astype(np.int64)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if masks is not None:
        masks = np.asarray(masks).astype(bool)
        if masks.shape != (len(boxes), height, width):
            raise ValueError(f"masks must be [N, H, W] = {(len(boxes), height, width)}, got {masks.shape}")
    canvas = image.copy()
    order = [i for i in np.argsort(scores, kind="stable") if scores[i] >= score_threshold]
    if not order:
        return canvas

    if masks is not None:
        for i in order:
            color = np.array(class_color(classes[i]), np.float32)
            region = masks[i]
            blended = canvas[region].astype(np.float32) * (1 - _MASK_ALPHA) + color * _MASK_ALPHA
            canvas[region] = np.clip(np.round(blended), 0, 255).astype(np.uint8)
            contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(canvas, contours, -1, class_color(classes[i]), 1, cv2.LINE_AA)

    font = cv2.FONT_HERSHEY_SIMPLEX
    font_scale = float(np.clip(min(height, width) / 600.0, 0.3, 0.8))
    thickness = 1 if min(height, width) < 600 else 2
    for i in order:
        color = class_color(classes[i])
        y1, x1, y2, x2 = (int(round(v)) for v in boxes[i])
        x1, x2 = int(np.clip(x1, 0, width - 1)), int(np.clip(x2, 0, width - 1))
        y1, y2 = int(np.clip(y1, 0, height - 1)), int(np.clip(y2, 0, height - 1))
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, thickness, cv2.LINE_AA)
        text = _label_text(int(classes[i]), float(scores[i]), class_names)
        (tw, th), baseline = cv2.getTextSize(text, font, font_scale, 1)
        # Label above the box when there is room, else inside its top edge.
        top = y1 - th - baseline - 2 if y1 - th - baseline - 2 >= 0 else y1
        left = min(x1, max(width - tw - 2, 0))
        cv2.rectangle(canvas, (left, top), (left + tw + 2, top + th + baseline + 2), color, cv2.FILLED)
        cv2.putText(canvas, text, (left + 1, top + th + 1), font, font_scale, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def save_png(path: str, image: np.ndarray) -> str:
    """Writes an [H, W, 3] uint8 RGB image as PNG (creating parent directories); returns ``path``.

    Raises:
        OSError: the file could not be encoded or written.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode a PNG for '{path}'")
    with open(path, "wb") as f:
        f.write(encoded.tobytes())
    return path
