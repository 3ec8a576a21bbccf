"""Tests for mrcnn_tf2.ops.box_ops against plain NumPy references."""

import math

import numpy as np
import pytest
import tensorflow as tf

from mrcnn_tf2.ops import box_ops


def _random_boxes(rng: np.random.Generator, n: int, size: float = 100.0) -> np.ndarray:
    y1 = rng.uniform(0, size, n)
    x1 = rng.uniform(0, size, n)
    h = rng.uniform(1, size / 2, n)
    w = rng.uniform(1, size / 2, n)
    return np.stack([y1, x1, y1 + h, x1 + w], axis=-1).astype(np.float32)


def _np_encode(b, a, weights):
    wy, wx, wh, ww = weights
    ha, wa = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    hb, wb = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    cya, cxa = a[:, 0] + ha / 2, a[:, 1] + wa / 2
    cyb, cxb = b[:, 0] + hb / 2, b[:, 1] + wb / 2
    return np.stack(
        [wy * (cyb - cya) / ha, wx * (cxb - cxa) / wa, wh * np.log(hb / ha), ww * np.log(wb / wa)], -1)


def _np_iou(a, b):
    out = np.zeros((len(a), len(b)), np.float64)
    for i in range(len(a)):
        for j in range(len(b)):
            ih = max(0.0, min(a[i, 2], b[j, 2]) - max(a[i, 0], b[j, 0]))
            iw = max(0.0, min(a[i, 3], b[j, 3]) - max(a[i, 1], b[j, 1]))
            inter = ih * iw
            area_a = max(0.0, a[i, 2] - a[i, 0]) * max(0.0, a[i, 3] - a[i, 1])
            area_b = max(0.0, b[j, 2] - b[j, 0]) * max(0.0, b[j, 3] - b[j, 1])
            union = area_a + area_b - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_encode_matches_numpy(weights):
    rng = np.random.default_rng(0)
    boxes, anchors = _random_boxes(rng, 20), _random_boxes(rng, 20)
    got = box_ops.encode_boxes(boxes, anchors, weights).numpy()
    np.testing.assert_allclose(got, _np_encode(boxes.astype(np.float64), anchors.astype(np.float64), weights),
                               rtol=1e-4, atol=1e-4)


def test_decode_matches_hand_computed():
    anchors = np.array([[10.0, 20.0, 30.0, 60.0]], np.float32)  # cy=20, cx=40, h=20, w=40
    deltas = np.array([[0.5, -0.25, math.log(2.0), 0.0]], np.float32)
    got = box_ops.decode_boxes(deltas, anchors).numpy()
    # cy = 20 + 0.5*20 = 30, cx = 40 - 0.25*40 = 30, h = 40, w = 40.
    np.testing.assert_allclose(got, [[10.0, 10.0, 50.0, 50.0]], atol=1e-4)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_round_trip(weights):
    rng = np.random.default_rng(1)
    boxes = _random_boxes(rng, 50).reshape(2, 25, 4)
    anchors = _random_boxes(rng, 50).reshape(2, 25, 4)
    deltas = box_ops.encode_boxes(boxes, anchors, weights)
    np.testing.assert_allclose(box_ops.decode_boxes(deltas, anchors, weights).numpy(), boxes, atol=1e-3)


def test_decode_clips_log_scale():
    anchors = np.array([[0.0, 0.0, 16.0, 16.0]], np.float32)
    deltas = np.array([[0.0, 0.0, 100.0, 100.0]], np.float32)
    got = box_ops.decode_boxes(deltas, anchors).numpy()
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got[0, 2] - got[0, 0], 1000.0, rtol=1e-4)


def test_encode_zero_size_is_finite():
    boxes = np.zeros((3, 4), np.float32)
    anchors = np.array([[0.0, 0.0, 0.0, 0.0], [5.0, 5.0, 5.0, 9.0], [0.0, 0.0, 8.0, 8.0]], np.float32)
    assert np.all(np.isfinite(box_ops.encode_boxes(boxes, anchors).numpy()))


def test_encode_casts_float16():
    rng = np.random.default_rng(2)
    boxes, anchors = _random_boxes(rng, 5), _random_boxes(rng, 5)
    got = box_ops.encode_boxes(tf.constant(boxes, tf.float16), anchors)
    assert got.dtype == tf.float32


def test_clip_boxes_python_pair_and_tensors():
    boxes = np.array([[-5.0, -3.0, 50.0, 120.0], [10.0, 10.0, 20.0, 20.0]], np.float32)
    expected = np.array([[0.0, 0.0, 40.0, 100.0], [10.0, 10.0, 20.0, 20.0]], np.float32)
    np.testing.assert_allclose(box_ops.clip_boxes(boxes, (40, 100)).numpy(), expected)
    np.testing.assert_allclose(box_ops.clip_boxes(boxes, tf.constant([40, 100])).numpy(), expected)


def test_clip_boxes_per_image():
    boxes = np.array([[[-5.0, -3.0, 50.0, 120.0]], [[-5.0, -3.0, 50.0, 120.0]]], np.float32)
    shapes = np.array([[40.0, 100.0], [30.0, 60.0]], np.float32)
    got = box_ops.clip_boxes(boxes, shapes).numpy()
    np.testing.assert_allclose(got, [[[0, 0, 40, 100]], [[0, 0, 30, 60]]])


def test_box_area():
    boxes = np.array([[0, 0, 2, 3], [5, 5, 5, 9], [4, 4, 2, 8]], np.float32)
    np.testing.assert_allclose(box_ops.box_area(boxes).numpy(), [6.0, 0.0, 0.0])


def test_box_iou_matches_numpy():
    rng = np.random.default_rng(3)
    a, b = _random_boxes(rng, 7, 30.0), _random_boxes(rng, 5, 30.0)
    b[0] = a[0]  # identical pair: IoU 1
    got = box_ops.box_iou(a, b).numpy()
    np.testing.assert_allclose(got, _np_iou(a, b), atol=1e-6)
    assert got[0, 0] == pytest.approx(1.0)


def test_box_iou_batched_and_zero_area():
    rng = np.random.default_rng(4)
    a = _random_boxes(rng, 12, 30.0).reshape(2, 6, 4)
    b = _random_boxes(rng, 8, 30.0).reshape(2, 4, 4)
    b[1, 3] = 0.0  # padded ground truth
    a[0, 2] = [5.0, 5.0, 5.0, 5.0]  # zero-area proposal
    got = box_ops.box_iou(a, b).numpy()
    assert got.shape == (2, 6, 4)
    assert np.all(np.isfinite(got))
    for i in range(2):
        np.testing.assert_allclose(got[i], _np_iou(a[i], b[i]), atol=1e-6)
    assert np.all(got[1, :, 3] == 0.0)
    zero_pair = box_ops.box_iou(np.zeros((1, 4), np.float32), np.zeros((1, 4), np.float32)).numpy()
    assert zero_pair[0, 0] == 0.0


def test_rejects_wrong_last_dimension():
    with pytest.raises(ValueError):
        box_ops.box_area(np.zeros((3, 5), np.float32))


def test_works_in_tf_function():
    fn = tf.function(lambda b, a: box_ops.decode_boxes(box_ops.encode_boxes(b, a), a))
    rng = np.random.default_rng(5)
    boxes, anchors = _random_boxes(rng, 4), _random_boxes(rng, 4)
    np.testing.assert_allclose(fn(boxes, anchors).numpy(), boxes, atol=1e-3)
