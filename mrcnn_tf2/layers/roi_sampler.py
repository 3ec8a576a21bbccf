"""Training-time ROI sampling: match proposals (plus the ground truth) to gt and draw a balanced set.

Shape shorthand: B = batch, P = proposals per image, G = max_instances, S = sampled ROIs per image.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from mrcnn_tf2.ops import box_ops, matcher, sampler


@keras.saving.register_keras_serializable(package="mrcnn_tf2")
class ROISampler(keras.layers.Layer):
    """Samples S ROIs per image with at most ``positive_fraction`` foreground.

    The ground-truth boxes are appended to the proposals (as detectron2 and Model Garden do), so
    the box and mask heads see positives from the first step on.

    Args:
      num_samples: S.
      positive_fraction: cap on the foreground share of S.
      fg_iou_threshold: IoU with a gt box at or above which a ROI is foreground.
      bg_iou_threshold: IoU below which a ROI is background (between: ignored).
      box_weights: (wy, wx, wh, ww) for the box-regression targets.
    """

    def __init__(self, num_samples: int = 512, positive_fraction: float = 0.25, fg_iou_threshold: float = 0.5,
                 bg_iou_threshold: float = 0.5, box_weights=(10.0, 10.0, 5.0, 5.0), **kwargs):
        # Box decoding, matching, top-k and NMS stay float32 under a mixed-precision policy.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.num_samples = num_samples
        self.positive_fraction = positive_fraction
        self.fg_iou_threshold = fg_iou_threshold
        self.bg_iou_threshold = bg_iou_threshold
        self.box_weights = tuple(float(w) for w in box_weights)

    def call(self, proposals: tf.Tensor, proposal_valid: tf.Tensor, gt_boxes: tf.Tensor,
             gt_classes: tf.Tensor, seed: tf.Tensor | int | None = None) -> dict[str, tf.Tensor]:
        """Samples ROIs and their targets.

        Args:
          proposals: [B, P, 4] float32 yxyx pixels (no gradient flows through them).
          proposal_valid: [B, P] bool.
          gt_boxes: [B, G, 4] float32 yxyx pixels, padded rows 0.
          gt_classes: [B, G] int32, 1..K-1 for objects, -1 for padding.
          seed: [2] int tensor (or an int) for the stateless draw; training passes the step's seed
            (``MaskRCNN.step_seed``). None = seed 0: reproducible, but the same draw on every call.

        Returns:
          dict with
            rois: [B, S, 4] float32 yxyx pixels,
            classes: [B, S] int32 target class (0 = background, gt class for foreground),
            box_targets: [B, S, 4] float32 encoded deltas against the matched gt (weighted),
            matched_gt: [B, S] int32 index into G,
            positive: [B, S] bool, valid: [B, S] bool (False for padding when too few candidates).
          Sampled foreground comes first in each row.
        """
        gt_valid = gt_classes >= 0
        candidates = tf.concat([proposals, gt_boxes], axis=1)  # [B, P+G, 4]
        candidate_valid = tf.concat([proposal_valid, gt_valid], axis=1)
        iou = box_ops.box_iou(candidates, gt_boxes)  # [B, P+G, G]
        matched, labels = matcher.match(iou, gt_valid, self.fg_iou_threshold, self.bg_iou_threshold,
                                        allow_low_quality_matches=False, valid_rows=candidate_valid)
        indices, valid = sampler.sample_indices(labels, self.num_samples, self.positive_fraction,
                                                0 if seed is None else seed)
        rois = tf.gather(candidates, indices, batch_dims=1)
        sampled_labels = tf.gather(labels, indices, batch_dims=1)
        matched_gt = tf.gather(matched, indices, batch_dims=1)
        positive = valid & tf.equal(sampled_labels, matcher.POSITIVE)
        gt_class = tf.gather(gt_classes, matched_gt, batch_dims=1)
        classes = tf.where(positive, gt_class, 0)
        classes = tf.where(valid, classes, -1)
        matched_boxes = tf.gather(gt_boxes, matched_gt, batch_dims=1)
        box_targets = box_ops.encode_boxes(matched_boxes, rois, weights=self.box_weights)
        box_targets = tf.where(positive[..., None], box_targets, 0.0)
        rois = tf.where(valid[..., None], rois, 0.0)
        return {"rois": rois, "classes": classes, "box_targets": box_targets, "matched_gt": matched_gt,
                "positive": positive, "valid": valid}

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(num_samples=self.num_samples, positive_fraction=self.positive_fraction,
                      fg_iou_threshold=self.fg_iou_threshold, bg_iou_threshold=self.bg_iou_threshold,
                      box_weights=list(self.box_weights))
        return config
