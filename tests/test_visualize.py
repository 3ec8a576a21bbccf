"""Tests for mrcnn_tf2.visualize: drawing detections and writing PNGs."""

import cv2
import numpy as np
import pytest

from mrcnn_tf2 import visualize

NAMES = ("square", "circle")


def _scene():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    boxes = np.array([[10, 12, 40, 50], [30, 40, 60, 76], [0, 0, 5, 5]], np.float32)
    masks = np.zeros((3, 64, 80), bool)
    masks[0, 20:35, 20:45] = True
    masks[1, 40:55, 50:70] = True
    masks[2, 1:4, 1:4] = True
    return image, boxes, np.array([1, 2, 1]), np.array([0.93, 0.7, 0.2]), masks


def test_draw_detections_shape_masks_and_no_input_change():
    image, boxes, classes, scores, masks = _scene()
    original = image.copy()
    out = visualize.draw_detections(image, boxes, classes, scores, masks, NAMES, score_threshold=0.5)
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(image, original)
    # Interior mask pixels (away from box lines, contours and labels) move toward the class colour.
    for k, (ys, xs) in enumerate([(slice(31, 35), slice(22, 38)), (slice(44, 51), slice(55, 66))]):
        color = np.array(visualize.class_color(classes[k]), np.float64)
        before = np.abs(original[ys, xs].astype(np.float64) - color).sum(axis=-1)
        after = np.abs(out[ys, xs].astype(np.float64) - color).sum(axis=-1)
        assert np.all(after < before + 1e-9) and after.mean() < 0.7 * before.mean()
    # The detection below the threshold is not drawn: its mask region is unchanged.
    np.testing.assert_array_equal(out[2:3, 2:3], original[2:3, 2:3])
    # Far from every detection nothing changes.
    np.testing.assert_array_equal(out[0:4, 60:80], original[0:4, 60:80])


def test_draw_detections_boxes_only_and_nothing_above_threshold():
    image, boxes, classes, scores, _ = _scene()
    out = visualize.draw_detections(image, boxes, classes, scores, None, NAMES)
    assert not np.array_equal(out, image)
    color = np.array(visualize.class_color(1))
    assert np.any(np.all(out[:, 50] == color, axis=-1))  # the right edge of box 0 at x = 50
    same = visualize.draw_detections(image, boxes, classes, scores * 0.1, None, NAMES)
    np.testing.assert_array_equal(same, image)
    with pytest.raises(ValueError):
        visualize.draw_detections(image.astype(np.float32), boxes, classes, scores, None, NAMES)


def test_save_png_roundtrip(tmp_path):
    image, *_ = _scene()
    path = visualize.save_png(str(tmp_path / "sub" / "out.png"), image)
    read = cv2.cvtColor(cv2.imread(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(read, image)
