"""mrcnn_tf2.export.masks: box-relative masks pasted into full images, against a plain per-pixel NumPy reference.

The reference is written here from the rule (mask cell centres spread evenly over the box, bilinear inside
the box, 0 outside); the client helper, the NumPy pasting the evaluator uses and the TF pasting all must
match it on fractional boxes that stick out of the image on every side.
"""

import numpy as np
import pytest
from mrcnn_tf2.export import masks

from mrcnn_tf2.ops import mask_ops

# Fractional boxes: inside, out past the top and right borders, out past the left and bottom borders,
# larger than the image on all sides, and one smaller than a pixel (no pixel centre inside).
BOXES = np.array([[2.3, 3.6, 12.2, 20.1],
                  [-3.4, 20.2, 8.7, 40.5],
                  [11.5, -6.25, 25.75, 9.4],
                  [-5.0, -4.5, 30.0, 33.3],
                  [5.0, 5.0, 5.3, 5.4]], np.float64)


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


def _smooth_masks(num: int, size: int, seed: int = 0) -> np.ndarray:
    """Non-trivial [num, size, size] probabilities: random, so any misplaced cell or weight shows."""
    return np.random.default_rng(seed).uniform(0, 1, [num, size, size]).astype(np.float32)


@pytest.mark.parametrize("mask_size", [4, 28])
def test_instance_masks_match_per_pixel_reference(mask_size):
    height, width = 19, 27
    boxes = np.concatenate([BOXES, np.zeros([1, 4])]).astype(np.float32)  # + a padding row
    mask_probs = _smooth_masks(len(boxes), mask_size)
    num = len(BOXES)
    probabilities = masks.instance_masks(boxes, mask_probs, num, height, width, threshold=None)
    assert probabilities.shape == (num, height, width) and probabilities.dtype == np.float32
    for n in range(num):
        expected = _paste_reference(mask_probs[n], boxes[n], height, width)
        np.testing.assert_allclose(probabilities[n], expected, atol=1e-5, err_msg=f"box {n}")
    assert all(probabilities[n].sum() > 0 for n in range(4)) and probabilities[4].sum() == 0
    binary = masks.instance_masks(boxes, mask_probs, num, height, width, threshold=0.5)
    assert binary.dtype == bool
    np.testing.assert_array_equal(binary, probabilities >= 0.5)


def test_numpy_and_tf_pasting_match_the_reference():
    """The evaluator's NumPy pasting and the graph's TF pasting follow the same rule as the client's."""
    height, width, m = 23, 17, 7
    mask_probs = _smooth_masks(len(BOXES), m, seed=1)
    boxes = BOXES.astype(np.float32)
    expected = np.stack([_paste_reference(mask_probs[n], boxes[n], height, width) for n in range(len(boxes))])
    np.testing.assert_allclose(mask_ops.paste_masks_numpy(mask_probs, boxes, height, width), expected, atol=1e-5)
    np.testing.assert_allclose(mask_ops.paste_masks(mask_probs, boxes, height, width).numpy(), expected, atol=1e-5)


def test_a_quadrant_mask_pastes_into_exactly_its_quadrant():
    """Worked out by hand: an M x M mask whose top-left M/2 x M/2 cells are 1, pasted into the integer
    box [4, 6, 4 + 2M, 6 + 2M], covers exactly the M x M pixels at its top left once thresholded at 0.5
    (the pixels at the edge sample 3/4 of the last 1 cell or 1/4 of it)."""
    m = 8
    quadrant = np.zeros([1, m, m], np.float32)
    quadrant[0, : m // 2, : m // 2] = 1.0
    box = np.array([[4.0, 6.0, 4.0 + 2 * m, 6.0 + 2 * m]], np.float32)
    got = masks.instance_masks(box, quadrant, 1, 30, 30, threshold=0.5)[0]
    expected = np.zeros([30, 30], bool)
    expected[4:4 + m, 6:6 + m] = True
    np.testing.assert_array_equal(got, expected)
    probabilities = masks.instance_masks(box, quadrant, 1, 30, 30, threshold=None)[0]
    assert probabilities[4 + m - 1, 6] == pytest.approx(0.75) and probabilities[4 + m, 6] == pytest.approx(0.25)


def test_instance_masks_with_no_detections():
    out = masks.instance_masks(np.zeros([5, 4]), np.zeros([5, 28, 28]), 0, 10, 12)
    assert out.shape == (0, 10, 12)
