"""Full-image instance masks from the SavedModel's box-relative masks (client side, NumPy only, no TensorFlow).

The SavedModel returns ``detection_masks [B, D, M, M]``: each mask covers its box
``detection_boxes [B, D, 4]`` (y1x1y2x2, original-image pixels). The pasting rules live in
``mrcnn_tf2.mask_paste`` (re-exported here): ``paste_mode="box"`` is the project's rule
(``paste_masks_numpy``: mask cell centres spread evenly over the box, bilinear inside the box, 0 outside),
``"torchvision"`` is torchvision's ``paste_masks_in_image``; use the ``model.detection.paste_mode`` of the
config JSON written beside the SavedModel.
"""

from __future__ import annotations

import numpy as np

from mrcnn_tf2.mask_paste import paste_masks, paste_masks_numpy, paste_masks_torchvision

__all__ = ["paste_masks", "paste_masks_numpy", "paste_masks_torchvision", "instance_masks"]


def instance_masks(detection_boxes: np.ndarray, detection_masks: np.ndarray, num_detections: int,
                   height: int, width: int, threshold: float | None = 0.5, paste_mode: str = "box") -> np.ndarray:
    """Pastes one image's detections into full-image masks.

    Args:
        detection_boxes: ``[D, 4]`` y1x1y2x2 in original-image pixels (one image of the batch).
        detection_masks: ``[D, M, M]`` box-relative probabilities.
        num_detections: how many leading rows are real detections.
        height: original image height in pixels.
        width: original image width in pixels.
        threshold: masks are ``probability >= threshold`` (bool); None returns the probabilities.
        paste_mode: ``"box"`` or ``"torchvision"`` (the model's ``model.detection.paste_mode``).

    Returns:
        ``[num_detections, height, width]`` bool (or float32 probabilities when ``threshold`` is None).
    """
    n = int(num_detections)
    probabilities = paste_masks(np.asarray(detection_masks)[:n], np.asarray(detection_boxes)[:n],
                                int(height), int(width), mode=paste_mode)
    return probabilities if threshold is None else probabilities >= threshold
