"""Tests for mrcnn_tf2.ops.mask_ops against plain per-point NumPy references."""

import numpy as np
import pytest
import tensorflow as tf

from mrcnn_tf2.ops import mask_ops


def _np_sample(mask, box, y, x):
    """Value of a box-relative mask at pixel-space point (y, x): bilinear inside the box, else 0."""
    y1, x1, y2, x2 = (float(v) for v in box)
    if not (y1 <= y < y2 and x1 <= x < x2):
        return 0.0
    size = mask.shape[0]
    my = min(max((y - y1) / (y2 - y1) * size - 0.5, 0.0), size - 1.0)
    mx = min(max((x - x1) / (x2 - x1) * size - 0.5, 0.0), size - 1.0)
    y0, x0 = int(np.floor(my)), int(np.floor(mx))
    y_1, x_1 = min(y0 + 1, size - 1), min(x0 + 1, size - 1)
    fy, fx = my - y0, mx - x0
    return ((1 - fy) * (1 - fx) * mask[y0, x0] + (1 - fy) * fx * mask[y0, x_1]
            + fy * (1 - fx) * mask[y_1, x0] + fy * fx * mask[y_1, x_1])


def _np_mask_targets(gt_masks, gt_boxes, rois, matched, size):
    b_, r_ = matched.shape
    out = np.zeros((b_, r_, size, size))
    for b in range(b_):
        for r in range(r_):
            g = matched[b, r]
            y1, x1, y2, x2 = rois[b, r]
            for i in range(size):
                for j in range(size):
                    y = y1 + (i + 0.5) * (y2 - y1) / size
                    x = x1 + (j + 0.5) * (x2 - x1) / size
                    out[b, r, i, j] = _np_sample(gt_masks[b, g], gt_boxes[b, g], y, x)
    return out


def _np_paste(masks, boxes, height, width):
    out = np.zeros((len(masks), height, width))
    for n in range(len(masks)):
        for y in range(height):
            for x in range(width):
                out[n, y, x] = _np_sample(masks[n], boxes[n], y + 0.5, x + 0.5)
    return out


def test_mask_targets_matches_numpy():
    rng = np.random.default_rng(0)
    gt_masks = rng.random((2, 3, 6, 6)).astype(np.float32)
    gt_boxes = np.array([[[2, 3, 14, 12], [5, 5, 9, 20], [0, 0, 0, 0]],
                         [[1.5, 2.5, 7.5, 9.5], [10, 0, 20, 6], [3, 3, 23, 23]]], np.float32)
    rois = np.array([[[2, 3, 14, 12], [0, 0, 16, 16], [6, 4, 8, 22], [-4, -4, 10, 10], [1, 1, 5, 5]],
                     [[1, 2, 8, 10], [12, 1, 18, 5], [0, 0, 30, 30], [4, 4, 5, 5], [3, 3, 23, 23]]], np.float32)
    matched = np.array([[0, 0, 1, 0, 2], [0, 1, 2, 2, 2]], np.int32)
    got = mask_ops.mask_targets(gt_masks, gt_boxes, rois, matched, 5).numpy()
    assert got.shape == (2, 5, 5, 5) and got.dtype == np.float32
    np.testing.assert_allclose(got, _np_mask_targets(gt_masks, gt_boxes, rois, matched, 5), atol=1e-5)
    assert np.all(got[0, 4] == 0.0)  # matched to a padded (zero) gt box


def test_mask_targets_roi_equal_to_gt_box_returns_the_mask():
    rng = np.random.default_rng(1)
    gt_masks = rng.random((1, 2, 8, 8)).astype(np.float32)
    gt_boxes = np.array([[[4.0, 6.0, 20.0, 30.0], [0.0, 0.0, 8.0, 8.0]]], np.float32)
    got = mask_ops.mask_targets(gt_masks, gt_boxes, gt_boxes, np.array([[0, 1]], np.int32), 8).numpy()
    np.testing.assert_allclose(got[0], gt_masks[0], atol=1e-5)
    # Half the resolution: each target sample falls between 2 x 2 mask cells, so it is their mean.
    half = mask_ops.mask_targets(gt_masks, gt_boxes, gt_boxes, np.array([[0, 1]], np.int32), 4).numpy()
    pooled = gt_masks[0].reshape(2, 4, 2, 4, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(half[0], pooled, atol=1e-5)


def test_mask_targets_roi_half_outside_gives_zeros():
    gt_masks = np.ones((1, 1, 4, 4), np.float32)
    gt_boxes = np.array([[[0.0, 0.0, 10.0, 10.0]]], np.float32)
    rois = np.array([[[0.0, 5.0, 10.0, 15.0]]], np.float32)  # right half outside the gt box
    got = mask_ops.mask_targets(gt_masks, gt_boxes, rois, np.zeros((1, 1), np.int32), 4).numpy()[0, 0]
    np.testing.assert_allclose(got[:, :2], 1.0)
    np.testing.assert_allclose(got[:, 2:], 0.0)


def test_mask_targets_in_tf_function():
    fn = tf.function(lambda m, g, r, i: mask_ops.mask_targets(m, g, r, i, 7))
    out = fn(tf.zeros([2, 4, 14, 14]), tf.zeros([2, 4, 4]), tf.zeros([2, 9, 4]), tf.zeros([2, 9], tf.int32))
    assert out.shape == (2, 9, 7, 7)


BOXES = np.array([[2.0, 3.0, 9.0, 10.0], [-3.0, 4.5, 6.2, 20.0], [5.3, 5.1, 5.9, 5.8], [1.0, 1.0, 1.0, 5.0]],
                 np.float32)


def test_paste_masks_matches_numpy_reference():
    rng = np.random.default_rng(2)
    masks = rng.random((4, 5, 5)).astype(np.float32)
    expected = _np_paste(masks, BOXES, 12, 16)
    got_tf = mask_ops.paste_masks(masks, BOXES, 12, 16).numpy()
    got_np = mask_ops.paste_masks_numpy(masks, BOXES, 12, 16)
    assert got_tf.shape == (4, 12, 16) and got_np.shape == (4, 12, 16)
    assert got_np.dtype == np.float32
    np.testing.assert_allclose(got_tf, expected, atol=1e-5)
    np.testing.assert_allclose(got_np, expected, atol=1e-5)
    assert np.all(got_tf[3] == 0.0)  # zero-height box


def test_paste_all_ones_covers_exactly_the_box():
    masks = np.ones((2, 7, 7), np.float32)
    boxes = np.array([[2.0, 3.0, 6.0, 11.0], [0.4, 0.6, 3.4, 2.6]], np.float32)
    for got in (mask_ops.paste_masks(masks, boxes, 10, 12).numpy(), mask_ops.paste_masks_numpy(masks, boxes, 10, 12)):
        expected = np.zeros((2, 10, 12), np.float32)
        expected[0, 2:6, 3:11] = 1.0
        expected[1, 0:3, 1:3] = 1.0  # row centres 0.5..2.5 in [0.4, 3.4), column centres 1.5, 2.5 in [0.6, 2.6)
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_paste_masks_in_tf_function_with_dynamic_count():
    fn = tf.function(lambda m, b: mask_ops.paste_masks(m, b, 20, 30),
                     input_signature=[tf.TensorSpec([None, 14, 14]), tf.TensorSpec([None, 4])])
    out = fn(tf.ones([3, 14, 14]), tf.constant([[0.0, 0.0, 10.0, 10.0]] * 3))
    assert out.shape == (3, 20, 30)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_paste_masks_accepts_other_dtypes(dtype):
    out = mask_ops.paste_masks(np.ones((1, 4, 4), dtype), np.array([[0, 0, 4, 4]], dtype), 4, 4)
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), 1.0)
