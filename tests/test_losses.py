"""Losses: hand-computed values and finite zeros on empty ground truth."""

import math

import numpy as np
import tensorflow as tf

from mrcnn_tf2 import losses


def _np_smooth_l1(x, beta):
    x = np.abs(x)
    return np.where(x < beta, 0.5 * x**2 / beta, x - 0.5 * beta)


def test_smooth_l1_matches_formula():
    x = np.array([-2.0, -0.05, 0.0, 0.05, 0.3, 4.0], np.float32)
    for beta in (1.0 / 9.0, 1.0):
        np.testing.assert_allclose(losses.smooth_l1(tf.constant(x), beta).numpy(), _np_smooth_l1(x, beta),
                                   rtol=1e-6)
    np.testing.assert_allclose(losses.smooth_l1(tf.constant(x), 0.0).numpy(), np.abs(x))


def test_rpn_losses_hand_computed():
    # One image, 4 anchors: anchor 0 positive, anchor 1 negative, 2 ignored, 3 not sampled.
    logits = tf.constant([[2.0, -1.0, 5.0, 0.3]])
    deltas = tf.constant([[[0.5, 0.0, 0.0, 0.0], [9.0] * 4, [9.0] * 4, [9.0] * 4]])
    positive = tf.constant([[True, False, False, False]])
    negative = tf.constant([[False, True, False, False]])
    targets = tf.zeros([1, 4, 4])
    out = losses.rpn_losses(logits, deltas, positive, negative, targets)
    cls = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(-1.0))) / 2  # -log(sig(2)), -log(1-sig(-1))
    box = (0.5 - 0.5 / 9.0) / 2  # smooth L1 of 0.5 with beta 1/9, normalised by 2 sampled anchors
    np.testing.assert_allclose(out["loss_rpn_cls"].numpy(), cls, rtol=1e-5)
    np.testing.assert_allclose(out["loss_rpn_box"].numpy(), box, rtol=1e-5)


def test_box_head_losses_hand_computed():
    # 3 sampled ROIs, K = 3: ROI 0 is class 2 (foreground), ROI 1 background, ROI 2 padding.
    logits = tf.constant([[[0.0, 1.0, 2.0], [3.0, 0.0, 0.0], [100.0, -100.0, 0.0]]])
    deltas = np.zeros([1, 3, 3, 4], np.float32)
    deltas[0, 0, 2] = [1.0, 0.0, 0.0, 0.0]  # only the gt class's deltas count
    deltas[0, 0, 1] = [50.0, 50.0, 50.0, 50.0]
    classes = tf.constant([[2, 0, -1]])
    box_targets = tf.zeros([1, 3, 4])
    valid = tf.constant([[True, True, False]])
    out = losses.box_head_losses(logits, tf.constant(deltas), classes, box_targets, valid)
    ce0 = -math.log(math.exp(2) / (1 + math.e + math.exp(2)))
    ce1 = -math.log(math.exp(3) / (math.exp(3) + 2))
    np.testing.assert_allclose(out["loss_cls"].numpy(), (ce0 + ce1) / 2, rtol=1e-5)
    np.testing.assert_allclose(out["loss_box"].numpy(), (1.0 - 0.5 / 9.0) / 2, rtol=1e-5)


def test_mask_loss_hand_computed_and_only_positives():
    logits = np.zeros([1, 2, 2, 2], np.float32)
    logits[0, 0] = [[0.0, 2.0], [-2.0, 0.0]]
    logits[0, 1] = 100.0  # not positive: must not count
    targets = np.zeros([1, 2, 2, 2], np.float32)
    targets[0, 0] = [[1.0, 1.0], [0.0, 0.0]]
    out = losses.mask_loss(tf.constant(logits), tf.constant(targets), tf.constant([[True, False]]))
    sp = lambda z: math.log(1 + math.exp(z))  # noqa: E731
    expected = (sp(-0.0) + sp(-2.0) + sp(-2.0) + sp(0.0)) / 4
    np.testing.assert_allclose(out["loss_mask"].numpy(), expected, rtol=1e-5)


def test_empty_ground_truth_gives_finite_zeros():
    rpn = losses.rpn_losses(tf.zeros([2, 5]), tf.zeros([2, 5, 4]), tf.zeros([2, 5], tf.bool),
                            tf.zeros([2, 5], tf.bool), tf.zeros([2, 5, 4]))
    box = losses.box_head_losses(tf.zeros([2, 3, 4]), tf.zeros([2, 3, 4, 4]), -tf.ones([2, 3], tf.int32),
                                 tf.zeros([2, 3, 4]), tf.zeros([2, 3], tf.bool))
    mask = losses.mask_loss(tf.zeros([2, 3, 4, 4]), tf.zeros([2, 3, 4, 4]), tf.zeros([2, 3], tf.bool))
    for value in [*rpn.values(), *box.values(), *mask.values()]:
        assert np.isfinite(value.numpy()) and value.numpy() == 0.0
    # Only negatives (an image without objects): classification still learns, box loss is 0.
    rpn = losses.rpn_losses(tf.fill([1, 3], 2.0), tf.zeros([1, 3, 4]), tf.zeros([1, 3], tf.bool),
                            tf.ones([1, 3], tf.bool), tf.zeros([1, 3, 4]))
    np.testing.assert_allclose(rpn["loss_rpn_cls"].numpy(), math.log(1 + math.exp(2.0)), rtol=1e-5)
    assert rpn["loss_rpn_box"].numpy() == 0.0
