"""Losses: pure functions returning dicts with fixed keys; never NaN on empty ground truth.

Keys: loss_rpn_cls, loss_rpn_box (from `rpn_losses`), loss_cls, loss_box (`box_head_losses`),
loss_mask (`mask_loss`). Each is a scalar float32 averaged over the per-replica batch; the
weighted sum and the division by the number of replicas happen in `MaskRCNN.train_step` only.

Shape shorthand: B = batch, N_a = anchors, S = sampled ROIs, K = classes incl. background,
R = mask ROIs, M = mask size.
"""

from __future__ import annotations

import tensorflow as tf

RPN_BOX_BETA = 1.0 / 9.0
BOX_BETA = 1.0 / 9.0


def smooth_l1(diff: tf.Tensor, beta: float) -> tf.Tensor:
    """Elementwise smooth L1 (Huber with transition at ``beta``); beta = 0 gives L1."""
    absdiff = tf.abs(diff)
    if beta <= 0:
        return absdiff
    return tf.where(absdiff < beta, 0.5 * tf.square(absdiff) / beta, absdiff - 0.5 * beta)


def _safe_mean(total: tf.Tensor, count: tf.Tensor) -> tf.Tensor:
    return tf.math.divide_no_nan(total, tf.maximum(tf.cast(count, tf.float32), 1.0))


def rpn_losses(objectness_logits: tf.Tensor, box_deltas: tf.Tensor, positive: tf.Tensor,
               negative: tf.Tensor, box_targets: tf.Tensor) -> dict[str, tf.Tensor]:
    """RPN objectness (sigmoid cross-entropy) and box (smooth L1) losses over the sampled anchors.

    Args:
      objectness_logits: [B, N_a] float32.
      box_deltas: [B, N_a, 4] float32 predicted deltas.
      positive, negative: [B, N_a] bool sampled anchors.
      box_targets: [B, N_a, 4] float32 target deltas (used where positive).

    Returns:
      {"loss_rpn_cls", "loss_rpn_box"}: both normalised by the number of sampled anchors.
    """
    objectness_logits = tf.cast(objectness_logits, tf.float32)
    sampled = positive | negative
    weights = tf.cast(sampled, tf.float32)
    xent = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(positive, tf.float32),
                                                   logits=objectness_logits)
    num_sampled = tf.reduce_sum(weights)
    loss_cls = _safe_mean(tf.reduce_sum(xent * weights), num_sampled)
    box = tf.reduce_sum(smooth_l1(tf.cast(box_deltas, tf.float32) - box_targets, RPN_BOX_BETA), axis=-1)
    loss_box = _safe_mean(tf.reduce_sum(box * tf.cast(positive, tf.float32)), num_sampled)
    return {"loss_rpn_cls": loss_cls, "loss_rpn_box": loss_box}


def box_head_losses(class_logits: tf.Tensor, box_deltas: tf.Tensor, classes: tf.Tensor,
                    box_targets: tf.Tensor, valid: tf.Tensor) -> dict[str, tf.Tensor]:
    """Second-stage classification (softmax cross-entropy) and class-specific box regression.

    Args:
      class_logits: [B, S, K] float32.
      box_deltas: [B, S, K, 4] float32.
      classes: [B, S] int32 target class (0 = background; ignored where not valid).
      box_targets: [B, S, 4] float32 (used where classes > 0).
      valid: [B, S] bool sampled (not padding).

    Returns:
      {"loss_cls", "loss_box"}: both normalised by the number of valid sampled ROIs.
    """
    valid_f = tf.cast(valid, tf.float32)
    labels = tf.maximum(classes, 0)
    xent = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels,
                                                          logits=tf.cast(class_logits, tf.float32))
    num_valid = tf.reduce_sum(valid_f)
    loss_cls = _safe_mean(tf.reduce_sum(xent * valid_f), num_valid)
    positive = tf.cast(valid & (classes > 0), tf.float32)
    deltas = tf.gather(tf.cast(box_deltas, tf.float32), labels, axis=2, batch_dims=2)  # [B, S, 4]
    box = tf.reduce_sum(smooth_l1(deltas - box_targets, BOX_BETA), axis=-1)
    loss_box = _safe_mean(tf.reduce_sum(box * positive), num_valid)
    return {"loss_cls": loss_cls, "loss_box": loss_box}


def mask_loss(mask_logits: tf.Tensor, mask_targets: tf.Tensor, positive: tf.Tensor) -> dict[str, tf.Tensor]:
    """Per-pixel sigmoid cross-entropy of the gt class's mask, averaged over positive ROIs' pixels.

    Args:
      mask_logits: [B, R, M, M] float32 logits of each ROI's gt class.
      mask_targets: [B, R, M, M] float32 in {0, 1}.
      positive: [B, R] bool, the ROIs that have a mask target.

    Returns:
      {"loss_mask"}: 0 when there is no positive ROI.
    """
    xent = tf.nn.sigmoid_cross_entropy_with_logits(labels=mask_targets,
                                                   logits=tf.cast(mask_logits, tf.float32))
    per_roi = tf.reduce_mean(xent, axis=[2, 3])
    weights = tf.cast(positive, tf.float32)
    return {"loss_mask": _safe_mean(tf.reduce_sum(per_roi * weights), tf.reduce_sum(weights))}
