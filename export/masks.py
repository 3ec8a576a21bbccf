"""Full-image instance masks from the SavedModel's box-relative masks (client side, NumPy only).

The SavedModel returns ``detection_masks [B, D, M, M]``: each mask covers its box
``detection_boxes [B, D, 4]`` (y1x1y2x2, original-image pixels). ``paste_masks_numpy`` is the
project's one pasting rule (``mrcnn_tf2.ops.mask_ops``: mask cell centres spread evenly over the
box, bilinear inside the box, 0 outside), re-exported here for clients.
"""

from __future__ import annotations

import numpy as np

from mrcnn_tf2.ops.mask_ops import paste_masks_numpy

__all__ = ["paste_masks_numpy", "instance_masks"]


def instance_masks(detection_boxes: np.ndarray, detection_masks: np.ndarray, num_detections: int,
                   height: int, width: int, threshold: float | None = 0.5) -> np.ndarray:
    """Pastes one image's detections into full-image masks.

    Args:
        detection_boxes: ``[D, 4]`` y1x1y2x2 in original-image pixels (one image of the batch).
        detection_masks: ``[D, M, M]`` box-relative probabilities.
        num_detections: how many leading rows are real detections.
        height: original image height in pixels.
        width: original image width in pixels.
        threshold: masks are ``probability >= threshold`` (bool); None returns the probabilities.

    Returns:
        ``[num_detections, height, width]`` bool (or float32 probabilities when ``threshold`` is None).
    """
    n = int(num_detections)
    probabilities = paste_masks_numpy(np.asarray(detection_masks)[:n], np.asarray(detection_boxes)[:n],
                                      int(height), int(width))
    return probabilities if threshold is None else probabilities >= threshold
