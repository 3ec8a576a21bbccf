"""Training targets computed inside the model: RPN anchor labels/deltas and mask targets.

Shape shorthand: B = batch, N_a = anchors over all levels, G = max_instances, R = mask ROIs,
S = gt mask size, M = predicted mask size.
"""

from __future__ import annotations

import tensorflow as tf

from mrcnn_tf2.ops import box_ops, mask_ops, matcher, sampler


def rpn_targets(anchors: tf.Tensor, gt_boxes: tf.Tensor, gt_classes: tf.Tensor, *,
                fg_iou_threshold: float = 0.7, bg_iou_threshold: float = 0.3,
                num_samples: int = 256, positive_fraction: float = 0.5,
                seed: tf.Tensor | int = 0) -> dict[str, tf.Tensor]:
    """Labels and box targets for every anchor; a balanced sample of them enters the loss.

    Args:
      anchors: [N_a, 4] float32 yxyx pixels, all levels concatenated in level order.
      gt_boxes: [B, G, 4] float32 yxyx pixels, padded rows 0.
      gt_classes: [B, G] int32, -1 for padding.
      seed: [2] int tensor (or an int) of the stateless anchor sample; training passes the step's seed.

    Returns:
      dict with positive [B, N_a] bool, negative [B, N_a] bool (the sampled anchors) and
      box_targets [B, N_a, 4] float32 (deltas with weights 1, zero where not positive).
    """
    batch = tf.shape(gt_boxes)[0]
    anchors_b = tf.broadcast_to(anchors[None], tf.concat([[batch], tf.shape(anchors)], axis=0))
    gt_valid = gt_classes >= 0
    iou = box_ops.box_iou(anchors_b, gt_boxes)  # [B, N_a, G]
    matched, labels = matcher.match(iou, gt_valid, fg_iou_threshold, bg_iou_threshold,
                                    allow_low_quality_matches=True)
    positive, negative = sampler.subsample_labels(labels, num_samples, positive_fraction, seed)
    matched_boxes = tf.gather(gt_boxes, matched, batch_dims=1)
    box_targets = box_ops.encode_boxes(matched_boxes, anchors_b)
    box_targets = tf.where(positive[..., None], box_targets, 0.0)
    return {"positive": positive, "negative": negative, "box_targets": box_targets}


def mask_targets(gt_masks: tf.Tensor, gt_boxes: tf.Tensor, rois: tf.Tensor, matched_gt: tf.Tensor,
                 mask_size: int) -> tf.Tensor:
    """Binary mask targets for ROIs: the matched instance's mask on the ROI's M x M grid.

    Args:
      gt_masks: [B, G, S, S] float32 in [0, 1], each instance cropped to its own gt box.
      gt_boxes: [B, G, 4] float32 yxyx pixels.
      rois: [B, R, 4] float32 yxyx pixels.
      matched_gt: [B, R] int32 index into G.
      mask_size: M.

    Returns:
      [B, R, M, M] float32 in {0, 1} (resampled masks thresholded at 0.5).
    """
    soft = mask_ops.mask_targets(gt_masks, gt_boxes, rois, matched_gt, mask_size)
    return tf.cast(soft >= 0.5, tf.float32)
