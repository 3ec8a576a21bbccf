"""DetectionGenerator against torchvision's RoIHeads.postprocess_detections on the same box-head outputs.

Clustered proposals and spread logits give many candidates above the 0.05 threshold (several per ROI),
real suppression and more survivors than the 100 slots, so the comparison covers thresholding, clipping to
each image's own size, small-box removal, per-class NMS and the final top 100.
"""

import numpy as np
import pytest
import tensorflow as tf

from mrcnn_tf2.layers.detections import DetectionGenerator
from tests.torch_import import import_torch

torch, torchvision = import_torch()
from torchvision.models.detection.roi_heads import RoIHeads  # noqa: E402

K, R = 6, 150  # classes incl. background, ROIs per image
IMAGE_SIZES = [(96, 128), (80, 100)]  # real (unpadded) sizes; the padded input is 96 x 128


def _inputs(seed: int):
    rng = np.random.default_rng(seed)
    centres = rng.uniform([0, 0], [96, 128], size=(8, 2))  # a few clusters of overlapping proposals
    c = centres[rng.integers(0, 8, size=(2, R))] + rng.normal(0, 4, size=(2, R, 2))
    half = rng.uniform(2, 30, size=(2, R, 2))
    rois = np.concatenate([c - half, c + half], axis=-1).astype(np.float32)  # yxyx, some past the border
    rois[:, :5, 2:] = rois[:, :5, :2] + 0.004  # a few tiny ones: removed by min_size 1e-2
    logits = rng.normal(0, 2.0, size=(2, R, K)).astype(np.float32)
    deltas = rng.normal(0, 1.0, size=(2, R, K, 4)).astype(np.float32)
    deltas[:, :10, :, 2:] = 8.0  # dh, dw / 5 > log(1000 / 16): the clamp
    return rois, logits, deltas


@pytest.mark.parametrize("pre_nms_topk", [0, 100000])
def test_matches_torchvision_postprocess_detections(pre_nms_topk):
    rois, logits, deltas = _inputs(0)
    gen = DetectionGenerator(max_detections=100, score_threshold=0.05, nms_iou_threshold=0.5,
                             pre_nms_topk=pre_nms_topk, box_weights=(10.0, 10.0, 5.0, 5.0), image_size=128,
                             min_box_size=1e-2)
    info = np.zeros([2, 4, 2], np.float32)
    info[:, 0] = info[:, 1] = IMAGE_SIZES
    info[:, 2] = 1.0
    out = {k: v.numpy() for k, v in gen(tf.constant(logits), tf.constant(deltas), tf.constant(rois),
                                         tf.ones([2, R], tf.bool), tf.constant(info)).items()}

    heads = RoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, (10.0, 10.0, 5.0, 5.0), 0.05, 0.5, 100)
    tv_deltas = deltas[..., [1, 0, 3, 2]].reshape(2 * R, K * 4)  # (dy, dx, dh, dw) -> (dx, dy, dw, dh)
    tv_boxes, tv_scores, tv_labels = heads.postprocess_detections(
        torch.from_numpy(logits.reshape(2 * R, K)), torch.from_numpy(tv_deltas),
        [torch.from_numpy(r[:, [1, 0, 3, 2]]) for r in rois], IMAGE_SIZES)
    for b in range(2):
        n = int(out["num_detections"][b])
        assert n == len(tv_scores[b]) == 100  # more survivors than slots: the top-100 cut matters
        np.testing.assert_allclose(out["detection_scores"][b, :n], tv_scores[b].numpy(), rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(out["detection_classes"][b, :n], tv_labels[b].numpy())
        np.testing.assert_allclose(out["detection_boxes"][b, :n], tv_boxes[b].numpy()[:, [1, 0, 3, 2]],
                                   rtol=1e-5, atol=1e-4)
    assert out["detection_boxes"][1, :, 2].max() <= 80 and out["detection_boxes"][1, :, 3].max() <= 100


def test_min_box_size_and_strict_threshold():
    # One ROI, K = 2: its box is 0.005 px wide after decoding -> dropped with min_box_size 1e-2, kept with 0.
    rois = tf.constant([[[10.0, 10.0, 20.0, 10.005]]])
    logits = tf.constant([[[0.0, 3.0]]])
    deltas = tf.zeros([1, 1, 2, 4])
    info = tf.constant([[[64, 64], [64, 64], [1, 1], [0, 0]]], tf.float32)
    valid = tf.ones([1, 1], tf.bool)
    counts = [int(DetectionGenerator(5, 0.05, 0.5, 0, image_size=64, min_box_size=m)(
        logits, deltas, rois, valid, info)["num_detections"][0]) for m in (1e-2, 0.0)]
    assert counts == [0, 1]
    # Two classes with probability exactly 0.5: a threshold of 0.5 keeps neither (torchvision: score > thresh).
    out = DetectionGenerator(5, 0.5, 0.5, 0, image_size=64)(
        tf.zeros([1, 1, 3]) + [[[-30.0, 0.0, 0.0]]], tf.zeros([1, 1, 3, 4]),
        tf.constant([[[10.0, 10.0, 20.0, 20.0]]]), valid, info)
    assert int(out["num_detections"][0]) == 0
