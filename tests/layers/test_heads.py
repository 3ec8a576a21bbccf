"""RPN head, proposals, ROI sampler, box/mask heads and the detection generator on hand-made inputs."""

import numpy as np
import pytest
import tensorflow as tf

from mrcnn_tf2.layers.box_head import BoxHead
from mrcnn_tf2.layers.detections import DetectionGenerator
from mrcnn_tf2.layers.mask_head import MaskHead
from mrcnn_tf2.layers.proposals import ProposalGenerator
from mrcnn_tf2.layers.roi_sampler import ROISampler
from mrcnn_tf2.layers.rpn_head import RPNHead

LAYERS = [
    RPNHead(num_anchors=3, num_channels=8, num_convs=2),
    ProposalGenerator(pre_nms_topk=50, post_nms_topk=20, nms_iou_threshold=0.6, min_box_size=1.0, image_size=64),
    ROISampler(num_samples=16, positive_fraction=0.5, fg_iou_threshold=0.6, bg_iou_threshold=0.4,
               box_weights=(10.0, 10.0, 5.0, 5.0)),
    BoxHead(num_classes=5, fc_dim=32, num_fcs=2),
    MaskHead(num_classes=5, num_convs=2, num_channels=8),
    DetectionGenerator(max_detections=7, score_threshold=0.1, nms_iou_threshold=0.4, pre_nms_topk=30,
                       box_weights=(10.0, 10.0, 5.0, 5.0), image_size=64),
]


@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: type(layer).__name__)
def test_get_config_round_trip(layer):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    own = {k: v for k, v in config.items() if k not in ("name", "trainable", "dtype")}
    for key, value in own.items():
        got = getattr(clone, key)
        assert (list(got) if isinstance(got, tuple) else got) == value, key


def test_rpn_head_shapes_per_level():
    head = RPNHead(num_anchors=3, num_channels=8)
    feats = {2: tf.zeros([2, 16, 16, 8]), 3: tf.zeros([2, 8, 8, 8])}
    logits, deltas = head(feats)
    assert logits[2].shape == (2, 16 * 16 * 3) and deltas[2].shape == (2, 16 * 16 * 3, 4)
    assert logits[3].shape == (2, 8 * 8 * 3) and deltas[3].shape == (2, 8 * 8 * 3, 4)


def test_proposals_pick_best_scores_decode_and_pad():
    # Level 2: 4 anchors; two overlapping high-scoring ones (NMS keeps one), one tiny, one low score.
    anchors = {2: tf.constant([[0, 0, 20, 20], [1, 1, 21, 21], [30, 30, 30.5, 30.5], [40, 40, 60, 60]], tf.float32)}
    logits = {2: tf.constant([[5.0, 4.0, 9.0, 1.0]])}
    deltas = {2: tf.zeros([1, 4, 4])}
    info = tf.constant([[[64, 64], [50, 64], [1, 1], [0, 0]]], tf.float32)
    gen = ProposalGenerator(pre_nms_topk=4, post_nms_topk=6, nms_iou_threshold=0.5, min_box_size=1.0, image_size=64)
    boxes, scores, valid = gen(logits, deltas, anchors, info)
    assert boxes.shape == (1, 6, 4) and valid.shape == (1, 6)
    assert valid.numpy().tolist() == [[True, True, False, False, False, False]]
    np.testing.assert_allclose(boxes[0, 0].numpy(), [0, 0, 20, 20])
    np.testing.assert_allclose(boxes[0, 1].numpy(), [40, 40, 50, 60])  # clipped to scaled height 50
    np.testing.assert_allclose(scores[0, :2].numpy(), [5.0, 1.0])
    assert np.all(boxes[0, 2:].numpy() == 0)


def test_roi_sampler_adds_gt_balances_and_encodes_targets():
    proposals = tf.constant([[[0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 9, 10], [20, 20, 30, 30]]], tf.float32)
    valid = tf.constant([[True, True, True, False]])
    gt_boxes = tf.constant([[[0, 0, 10, 10], [0, 0, 0, 0]]], tf.float32)
    gt_classes = tf.constant([[3, -1]])
    sampler = ROISampler(num_samples=4, positive_fraction=0.5, fg_iou_threshold=0.5, bg_iou_threshold=0.5)
    out = sampler(proposals, valid, gt_boxes, gt_classes)
    positive, cls, ok = out["positive"].numpy()[0], out["classes"].numpy()[0], out["valid"].numpy()[0]
    # Positives: proposal 0, proposal 2 (IoU 0.9) and the appended gt box; capped at 2, first in the row.
    assert positive.tolist() == [True, True, False, False]
    assert cls[:2].tolist() == [3, 3] and cls[2] == 0  # one negative: proposal 1 (proposal 3 is invalid)
    assert ok.tolist() == [True, True, True, False] and cls[3] == -1
    rois = out["rois"].numpy()[0]
    for roi, target in zip(rois[:2], out["box_targets"].numpy()[0][:2]):
        h, w = roi[2] - roi[0], roi[3] - roi[1]
        expected = [10 * ((0 + 10) / 2 - (roi[0] + roi[2]) / 2) / h, 10 * ((0 + 10) / 2 - (roi[1] + roi[3]) / 2) / w,
                    5 * np.log(10 / h), 5 * np.log(10 / w)]
        np.testing.assert_allclose(target, expected, atol=1e-5)
    np.testing.assert_allclose(rois[2], [50, 50, 60, 60])


def test_box_and_mask_head_shapes_and_class_selection():
    feats = tf.random.normal([2, 3, 7, 7, 4])
    logits, deltas = BoxHead(num_classes=5, fc_dim=16)(feats)
    assert logits.shape == (2, 3, 5) and deltas.shape == (2, 3, 5, 4)
    head = MaskHead(num_classes=5, num_convs=1, num_channels=4)
    mask_feats = tf.random.normal([2, 3, 14, 14, 4])
    all_classes = [head(mask_feats, tf.fill([2, 3], c)).numpy() for c in range(5)]
    assert all_classes[0].shape == (2, 3, 28, 28)
    mixed = head(mask_feats, tf.constant([[1, 4, 2], [0, 3, 3]])).numpy()
    np.testing.assert_allclose(mixed[0, 1], all_classes[4][0, 1], atol=1e-5)
    np.testing.assert_allclose(mixed[1, 0], all_classes[0][1, 0], atol=1e-5)
    assert not np.allclose(all_classes[1], all_classes[2])


def test_detection_generator_decodes_per_class_and_suppresses():
    # K = 3 classes (background + 2); 3 ROIs. ROI 0 -> class 1 strongly; ROI 1 duplicates ROI 0 with class 1
    # (suppressed); ROI 2 -> class 2, shifted by its class-2 deltas; plus an invalid ROI.
    big = 10.0
    logits = tf.constant([[[0, big, 0], [0, big - 1, 0], [0, 0, big], [0, big, 0]]], tf.float32)
    deltas = np.zeros([1, 4, 3, 4], np.float32)
    deltas[0, 2, 2] = [10 * 0.1, 0, 0, 0]  # class-2 delta for ROI 2: move down by 0.1 * height (weights 10)
    deltas[0, 2, 1] = [10 * 5.0, 0, 0, 0]  # class-1 delta of ROI 2 must not be used for class 2
    rois = tf.constant([[[0, 0, 10, 10], [0, 0, 10, 11], [20, 20, 40, 40], [5, 5, 6, 6]]], tf.float32)
    valid = tf.constant([[True, True, True, False]])
    info = tf.constant([[[64, 64], [64, 64], [1, 1], [0, 0]]], tf.float32)
    gen = DetectionGenerator(max_detections=5, score_threshold=0.5, nms_iou_threshold=0.5, pre_nms_topk=12,
                             image_size=64)
    out = gen(logits, tf.constant(deltas), rois, valid, info)
    n = int(out["num_detections"][0])
    assert n == 2
    classes = out["detection_classes"][0, :n].numpy().tolist()
    boxes = out["detection_boxes"][0, :n].numpy()
    assert sorted(classes) == [1, 2]
    np.testing.assert_allclose(boxes[classes.index(2)], [22, 20, 42, 40], atol=1e-4)
    np.testing.assert_allclose(boxes[classes.index(1)], [0, 0, 10, 10], atol=1e-4)
    p = np.exp(big) / (np.exp(big) + 2)
    np.testing.assert_allclose(out["detection_scores"][0, :n].numpy(), [p, p], rtol=1e-5)
    assert np.all(out["detection_boxes"][0, n:].numpy() == 0) and np.all(out["detection_classes"][0, n:] == 0)


@pytest.mark.parametrize("make, args", [
    (lambda: RPNHead(num_anchors=3, num_channels=8, num_convs=2), lambda: ({2: tf.zeros([1, 8, 8, 8])},)),
    (lambda: BoxHead(num_classes=3, fc_dim=8, num_fcs=2), lambda: (tf.zeros([1, 2, 7, 7, 4]),)),
    (lambda: MaskHead(num_classes=3, num_convs=2, num_channels=4),
     lambda: (tf.zeros([1, 2, 14, 14, 4]), tf.zeros([1, 2], tf.int32))),
], ids=["rpn_head", "box_head", "mask_head"])
def test_checkpoint_saves_every_weight(make, args, tmp_path):
    layer = make()
    layer(*args())
    path = tf.train.Checkpoint(layer=layer).save(str(tmp_path / "ckpt"))
    saved = [name for name, _ in tf.train.list_variables(path) if "OPTIMIZER_SLOT" not in name
             and not name.startswith("_CHECKPOINTABLE") and name != "save_counter/.ATTRIBUTES/VARIABLE_VALUE"]
    assert len(saved) == len(layer.weights)
    clone = make()
    clone(*args())
    tf.train.Checkpoint(layer=clone).restore(path).assert_consumed()
    for a, b in zip(layer.weights, clone.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
