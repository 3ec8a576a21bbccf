"""mrcnn_tf2.original_frame.boxes_to_original: hand-computed values, and the same mapping as the SavedModel's."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from mrcnn_tf2.export.serving import detections_to_original

from mrcnn_tf2.original_frame import boxes_to_original

# Two images: 300 x 400 scaled by 0.32 (short side 96 of a 128 canvas), offset 0; 50 x 80 scaled by (2, 1.5)
# with an offset (a crop that starts at 3, 4 in the scaled image).
INFO = np.array([[[300, 400], [96, 128], [0.32, 0.32], [0, 0]],
                 [[50, 80], [100, 120], [2.0, 1.5], [3.0, 4.0]]], np.float32)
BOXES = np.array([[[16, 32, 48, 64], [0, 0, 200, 200]],
                  [[7, 8, 27, 38], [-10, -10, 5, 5]]], np.float32)


def test_hand_computed_values():
    got = boxes_to_original(BOXES, INFO)
    want = np.array([[[50, 100, 150, 200], [0, 0, 300, 400]],  # q / 0.32; the second clipped to 300 x 400
                     [[5, 8, 15, 28], [0, 0, 4, 6]]])  # (q + (3, 4)) / (2, 1.5); clipped at 0
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    for b in range(2):  # one image at a time: what evaluation does
        np.testing.assert_allclose(boxes_to_original(BOXES[b], INFO[b]), want[b], rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="leading dimensions"):
        boxes_to_original(BOXES, INFO[0])


def test_agrees_with_the_savedmodel_graph():
    rng = np.random.default_rng(0)
    boxes = rng.uniform(-20, 160, (2, 5, 4)).astype(np.float32)
    detections = {"detection_boxes": tf.constant(boxes), "detection_scores": tf.ones([2, 5]),
                  "detection_classes": tf.ones([2, 5], tf.int32), "detection_masks": tf.zeros([2, 5, 4, 4]),
                  "num_detections": tf.constant([5, 5], tf.int32)}
    graph = detections_to_original(detections, tf.constant(INFO), [])["detection_boxes"].numpy()
    np.testing.assert_allclose(boxes_to_original(boxes, INFO), graph, rtol=1e-5, atol=1e-4)
