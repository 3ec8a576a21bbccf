"""Model-input pixels -> original-image pixels, in NumPy (no TensorFlow): one rule for evaluation and the Detector.

``image_info`` (``[4, 2]`` per image, from ``preprocess_image``) is ``[[orig_h, orig_w], [scaled_h, scaled_w],
[y_scale, x_scale], [y_offset, x_offset]]``: an original point ``p`` sits at ``q = p * scale - offset`` in the
model input, so ``p = (q + offset) / scale``. The SavedModel does the same in graph ops
(``mrcnn_tf2.export.serving``); ``tests/test_original_frame.py`` checks that the two agree.
"""

from __future__ import annotations

import numpy as np

__all__ = ["boxes_to_original"]


def boxes_to_original(boxes: np.ndarray, image_info: np.ndarray) -> np.ndarray:
    """Maps boxes from model-input pixels to original-image pixels, clipped to the image.

    Args:
        boxes: ``[..., D, 4]`` y1x1y2x2 in pixels of the (padded) model input.
        image_info: ``[..., 4, 2]`` with the same leading dimensions as ``boxes`` (``[4, 2]`` for ``[D, 4]``,
            ``[B, 4, 2]`` for ``[B, D, 4]``).

    Returns:
        ``[..., D, 4]`` float64 y1x1y2x2 original pixels, each coordinate clipped to ``[0, orig_h]`` or
        ``[0, orig_w]``.
    """
    boxes = np.asarray(boxes, np.float64)
    info = np.asarray(image_info, np.float64)
    if boxes.shape[-1] != 4 or info.shape[-2:] != (4, 2) or boxes.shape[:-2] != info.shape[:-2]:
        raise ValueError(f"boxes {boxes.shape} must be [..., D, 4] and image_info {info.shape} [..., 4, 2] with "
                         "the same leading dimensions")
    limit, scale, offset = (np.tile(info[..., row, :], 2)[..., None, :] for row in (0, 2, 3))  # [..., 1, 4] each
    return np.clip((boxes + offset) / scale, 0.0, limit)
