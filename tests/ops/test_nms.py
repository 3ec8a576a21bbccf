"""Tests for mrcnn_tf2.ops.nms against a plain greedy NumPy NMS."""

import numpy as np
import pytest
import tensorflow as tf

from mrcnn_tf2.ops import nms


def _np_iou(a, b):
    ih = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iw = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ih * iw
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _np_nms(boxes, scores, max_out, iou_thr, score_thr=-np.inf, classes=None):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep = []
    for i in order:
        if scores[i] <= score_thr:
            continue
        if all((classes is not None and classes[i] != classes[j]) or _np_iou(boxes[i], boxes[j]) <= iou_thr
               for j in keep):
            keep.append(i)
        if len(keep) == max_out:
            break
    return keep


def _random_boxes(rng, b, n, size=100.0):
    yx = rng.uniform(0, size, (b, n, 2))
    hw = rng.uniform(5, size / 3, (b, n, 2))
    return np.concatenate([yx, yx + hw], -1).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_numpy_greedy(seed):
    rng = np.random.default_rng(seed)
    boxes = _random_boxes(rng, 2, 60)
    scores = rng.random((2, 60)).astype(np.float32)
    indices, num_valid = nms.nms_padded(boxes, scores, 25, 0.5)
    assert indices.shape == (2, 25) and indices.dtype == tf.int32 and num_valid.dtype == tf.int32
    for b in range(2):
        expected = _np_nms(boxes[b], scores[b], 25, 0.5)
        assert num_valid.numpy()[b] == len(expected)
        np.testing.assert_array_equal(indices.numpy()[b, : len(expected)], expected)
        assert np.all(indices.numpy()[b, len(expected):] == 0)


def test_padding_when_fewer_boxes_than_outputs():
    boxes = np.array([[[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60]]], np.float32)
    scores = np.array([[0.9, 0.8, 0.7]], np.float32)
    indices, num_valid = nms.nms_padded(boxes, scores, 8, 0.5)
    np.testing.assert_array_equal(indices.numpy(), [[0, 2, 0, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(num_valid.numpy(), [2])


def test_score_threshold_and_negative_infinity():
    rng = np.random.default_rng(5)
    boxes = _random_boxes(rng, 1, 40)
    scores = rng.random((1, 40)).astype(np.float32)
    indices, num_valid = nms.nms_padded(boxes, scores, 40, 0.6, score_threshold=0.5)
    expected = _np_nms(boxes[0], scores[0], 40, 0.6, 0.5)
    assert num_valid.numpy()[0] == len(expected)
    np.testing.assert_array_equal(indices.numpy()[0, : len(expected)], expected)
    assert np.all(scores[0, expected] > 0.5)
    scores[0, :20] = -np.inf
    indices, num_valid = nms.nms_padded(boxes, scores, 40, 0.6)
    assert np.all(indices.numpy()[0, : num_valid.numpy()[0]] >= 20)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_class_aware_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    boxes = _random_boxes(rng, 2, 80, size=60.0)
    scores = rng.random((2, 80)).astype(np.float32)
    classes = rng.integers(1, 4, (2, 80)).astype(np.int32)
    indices, num_valid = nms.batched_nms_padded(boxes, scores, classes, 80, 0.5)
    for b in range(2):
        expected = _np_nms(boxes[b], scores[b], 80, 0.5, classes=classes[b])
        assert num_valid.numpy()[b] == len(expected)
        np.testing.assert_array_equal(indices.numpy()[b, : len(expected)], expected)
    # Class-agnostic NMS keeps fewer boxes on the same input.
    _, agnostic_valid = nms.nms_padded(boxes, scores, 80, 0.5)
    assert np.all(agnostic_valid.numpy() < num_valid.numpy())


def test_identical_boxes_of_different_classes_survive():
    boxes = np.array([[[10, 10, 20, 20]] * 3], np.float32)
    scores = np.array([[0.9, 0.8, 0.7]], np.float32)
    indices, num_valid = nms.batched_nms_padded(boxes, scores, np.array([[1, 2, 1]], np.int32), 3, 0.5)
    np.testing.assert_array_equal(num_valid.numpy(), [2])
    np.testing.assert_array_equal(indices.numpy(), [[0, 1, 0]])


def test_in_tf_function():
    fn = tf.function(lambda b, s: nms.nms_padded(b, s, 10, 0.7))
    rng = np.random.default_rng(0)
    indices, num_valid = fn(_random_boxes(rng, 3, 30), rng.random((3, 30)).astype(np.float32))
    assert indices.shape == (3, 10) and num_valid.shape == (3,)
