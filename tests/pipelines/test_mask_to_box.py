"""pipelines/mask_to_box.py against plain NumPy references."""

import numpy as np
import pytest
import tensorflow as tf
from mrcnn_tf2.pipelines.mask_to_box import crop_masks_to_boxes, mask_to_box, pack_instances


def np_mask_to_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]


def np_crop(mask: np.ndarray, box, size: int) -> np.ndarray:
    """Bilinear samples at the box's cell centres; pixel r covers [r, r+1); border values clamp."""
    h, w = mask.shape
    y1, x1, y2, x2 = box
    out = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            y = np.clip(y1 + (i + 0.5) * (y2 - y1) / size - 0.5, 0, h - 1)
            x = np.clip(x1 + (j + 0.5) * (x2 - x1) / size - 0.5, 0, w - 1)
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            y1_, x1_ = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            dy, dx = y - y0, x - x0
            out[i, j] = (mask[y0, x0] * (1 - dy) * (1 - dx) + mask[y0, x1_] * (1 - dy) * dx
                         + mask[y1_, x0] * dy * (1 - dx) + mask[y1_, x1_] * dy * dx)
    return out


def random_masks(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, h, w), np.uint8)
    for k in range(n):
        y0, x0 = rng.integers(0, h - 1), rng.integers(0, w - 1)
        y1, x1 = rng.integers(y0 + 1, h + 1), rng.integers(x0 + 1, w + 1)
        masks[k, y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < 0.7
    return masks


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, bool])
def test_mask_to_box_matches_numpy_including_empty(dtype):
    masks = random_masks(6, 13, 17)
    masks[2] = 0  # empty
    masks[4] = 0
    masks[4, 12, 16] = 1  # single bottom-right pixel
    masks[5] = 1  # full
    boxes = mask_to_box(tf.constant(masks.astype(dtype))).numpy()
    expected = np.array([np_mask_to_box(m) for m in masks], np.float32)
    np.testing.assert_array_equal(boxes, expected)
    assert boxes[4].tolist() == [12, 16, 13, 17] and boxes[5].tolist() == [0, 0, 13, 17]


def test_mask_to_box_batch_dims_and_zero_instances():
    masks = random_masks(6, 9, 11, seed=3).reshape(2, 3, 9, 11)
    boxes = mask_to_box(tf.constant(masks)).numpy()
    assert boxes.shape == (2, 3, 4)
    np.testing.assert_array_equal(boxes.reshape(6, 4), [np_mask_to_box(m) for m in masks.reshape(6, 9, 11)])
    assert mask_to_box(tf.zeros([0, 5, 5], tf.uint8)).shape == (0, 4)


def test_crop_masks_to_boxes_matches_numpy_bilinear():
    masks = random_masks(4, 20, 24, seed=1)
    boxes = np.array([np_mask_to_box(m) for m in masks], np.float32)
    boxes[3] = [2.5, 3.25, 7.75, 19.0]  # fractional box
    size = 7
    crops = crop_masks_to_boxes(tf.constant(masks), tf.constant(boxes), size).numpy()
    expected = np.stack([np_crop(m.astype(np.float64), b, size) for m, b in zip(masks, boxes)])
    np.testing.assert_allclose(crops, expected, atol=1e-5)
    assert crops.min() >= 0 and crops.max() <= 1


def test_crop_is_not_darkened_at_the_image_border():
    """Cells along an image border sample the border pixel (1), not an extrapolation value (0)."""
    masks = np.zeros((2, 10, 12), np.uint8)
    masks[0, 0:4, 0:5] = 1  # touches the top-left border
    masks[1, 6:10, 8:12] = 1  # touches the bottom-right border
    boxes = mask_to_box(tf.constant(masks))
    crops = crop_masks_to_boxes(tf.constant(masks), boxes, 6).numpy()
    np.testing.assert_allclose(crops[0, :-1, 0], 1.0)
    np.testing.assert_allclose(crops[0, 0, :-1], 1.0)
    np.testing.assert_allclose(crops[1, 1:, -1], 1.0)
    np.testing.assert_allclose(crops[1, -1, 1:], 1.0)
    assert crops[0, 0, -1] < 1.0  # the box's inner edge blends with the outside, as bilinear should


def test_pack_instances_keeps_largest_drops_empty_and_pads():
    masks = np.zeros((5, 30, 30), np.uint8)
    sizes = [3, 0, 9, 6, 12]  # instance 1 is empty (e.g. cropped away)
    for k, s in enumerate(sizes):
        masks[k, k:k + s, 2:2 + s] = 1
    classes = np.array([1, 2, 3, 4, 5], np.int32)
    out = pack_instances(tf.constant(masks), tf.constant(classes), tf.constant([2.0, 0.5]), 3, 4)
    np.testing.assert_array_equal(out["gt_classes"].numpy(), [5, 3, 4])  # by decreasing area
    expected = np.array([np_mask_to_box(masks[k]) for k in (4, 2, 3)]) * [2.0, 0.5, 2.0, 0.5]
    np.testing.assert_allclose(out["gt_boxes"].numpy(), expected)
    assert out["num_instances"].numpy() == 3
    np.testing.assert_allclose(out["gt_masks"].numpy(), 1.0)
    padded = pack_instances(tf.constant(masks), tf.constant(classes), tf.constant([1.0, 1.0]), 6, 4)
    np.testing.assert_array_equal(padded["gt_classes"].numpy(), [5, 3, 4, 1, -1, -1])
    np.testing.assert_array_equal(padded["gt_boxes"].numpy()[4:], 0)
    np.testing.assert_array_equal(padded["gt_masks"].numpy()[4:], 0)
    empty = pack_instances(tf.zeros([0, 8, 8], tf.uint8), tf.zeros([0], tf.int32), tf.ones([2]), 2, 4)
    np.testing.assert_array_equal(empty["gt_classes"].numpy(), [-1, -1])
    assert empty["gt_masks"].shape == (2, 4, 4)
