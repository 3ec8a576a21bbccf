"""export.masks: box-relative masks pasted into full images, against a plain per-pixel NumPy reference."""

import numpy as np

from export import masks
from mrcnn_tf2.ops import mask_ops


def _paste_reference(mask: np.ndarray, box, height: int, width: int) -> np.ndarray:
    """Pixel (y, x) samples its centre (y + .5, x + .5); inside the box, bilinear on the cell centres
    y1 + (k + .5) * (y2 - y1) / M (clamped at the edge cells); outside, 0."""
    y1, x1, y2, x2 = box
    m = mask.shape[0]
    out = np.zeros([height, width], np.float64)
    for y in range(height):
        for x in range(width):
            cy, cx = y + 0.5, x + 0.5
            if not (y1 <= cy < y2 and x1 <= cx < x2):
                continue
            u = min(max((cy - y1) / (y2 - y1) * m - 0.5, 0.0), m - 1.0)
            v = min(max((cx - x1) / (x2 - x1) * m - 0.5, 0.0), m - 1.0)
            i0, j0 = int(np.floor(u)), int(np.floor(v))
            i1, j1 = min(i0 + 1, m - 1), min(j0 + 1, m - 1)
            fu, fv = u - i0, v - j0
            out[y, x] = ((1 - fu) * (1 - fv) * mask[i0, j0] + (1 - fu) * fv * mask[i0, j1]
                         + fu * (1 - fv) * mask[i1, j0] + fu * fv * mask[i1, j1])
    return out


def test_paste_helper_is_the_model_rule():
    assert masks.paste_masks_numpy is mask_ops.paste_masks_numpy


def test_instance_masks_match_per_pixel_reference():
    rng = np.random.default_rng(0)
    height, width, m = 19, 27, 4
    boxes = np.array([[2.0, 3.5, 12.2, 20.0],  # inside
                      [-3.0, 20.0, 8.0, 40.0],  # crosses the top and right borders
                      [5.0, 5.0, 5.3, 5.4],  # smaller than a pixel: no pixel centre inside
                      [0.0, 0.0, 0.0, 0.0]], np.float32)  # padding row past num_detections
    mask_probs = rng.uniform(0, 1, [4, m, m]).astype(np.float32)
    probabilities = masks.instance_masks(boxes, mask_probs, 3, height, width, threshold=None)
    assert probabilities.shape == (3, height, width) and probabilities.dtype == np.float32
    for n in range(3):
        expected = _paste_reference(mask_probs[n], boxes[n], height, width)
        np.testing.assert_allclose(probabilities[n], expected, atol=1e-5)
    assert probabilities[0].sum() > 0 and probabilities[1].sum() > 0 and probabilities[2].sum() == 0
    binary = masks.instance_masks(boxes, mask_probs, 3, height, width, threshold=0.5)
    assert binary.dtype == bool
    np.testing.assert_array_equal(binary, probabilities >= 0.5)


def test_instance_masks_with_no_detections():
    out = masks.instance_masks(np.zeros([5, 4]), np.zeros([5, 28, 28]), 0, 10, 12)
    assert out.shape == (0, 10, 12)
