"""Proposal generation: RPN outputs -> a fixed number of scored, NMS-filtered boxes per image.

Shape shorthand: B = batch, N_l = anchors on level l, k_l = min(pre_nms_topk, N_l),
P = post_nms_topk proposals per image.

Per level: top-k by objectness, decode against the anchors, clip to the image, drop tiny boxes,
NMS; then the best P over all levels. Output shapes are static; rows past the valid ones are
zero boxes with ``valid = False``. This is torchvision's ``RegionProposalNetwork.filter_proposals``
(per-level top-k, clip, ``remove_small_boxes``, ``batched_nms`` by level, the best P overall); with
``sigmoid_scores`` the candidates are ranked by ``sigmoid(logit)`` after the top-k as there, which only
differs from ranking by logits where float32 sigmoids tie. Small boxes are those with a side
``< min_box_size`` when it is positive (torchvision's ``>=`` keep rule) and zero-size ones otherwise.
When the anchor count of a level is not static (non-square inputs of unknown size) the level is padded
with invalid candidates up to ``pre_nms_topk``, so the shapes stay static.
"""

from __future__ import annotations

from collections.abc import Mapping

import keras
import tensorflow as tf

from mrcnn_tf2.ops import box_ops, nms

_NEG = -1e9  # score of a removed candidate (finite, so top_k and NMS stay well defined)


@keras.saving.register_keras_serializable(package="mrcnn_tf2")
class ProposalGenerator(keras.layers.Layer):
    """Turns RPN logits and deltas into proposals.

    Args:
      pre_nms_topk: candidates kept per level before NMS.
      post_nms_topk: P, proposals kept per image after NMS over all levels.
      nms_iou_threshold: IoU above which a lower-scored proposal is suppressed.
      min_box_size: proposals with height or width below this (pixels) are dropped.
      image_size: upper bound of the clip window (the largest padded model-input side); the window of
        each image is its scaled size from ``image_info``.
      sigmoid_scores: rank, NMS and return ``sigmoid(logit)`` instead of the logit (torchvision).
    """

    def __init__(self, pre_nms_topk: int = 1000, post_nms_topk: int = 1000, nms_iou_threshold: float = 0.7,
                 min_box_size: float = 0.0, image_size: int = 1024, sigmoid_scores: bool = False, **kwargs):
        # Box decoding, matching, top-k and NMS stay float32 under a mixed-precision policy.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.pre_nms_topk = pre_nms_topk
        self.post_nms_topk = post_nms_topk
        self.nms_iou_threshold = nms_iou_threshold
        self.min_box_size = min_box_size
        self.image_size = image_size
        self.sigmoid_scores = bool(sigmoid_scores)

    def call(self, objectness_logits: Mapping[int, tf.Tensor], deltas: Mapping[int, tf.Tensor],
             anchors: Mapping[int, tf.Tensor], image_info: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Generates proposals.

        Args:
          objectness_logits: {level: [B, N_l]} float32.
          deltas: {level: [B, N_l, 4]} float32 (dy, dx, dh, dw), RPN weights (1, 1, 1, 1).
          anchors: {level: [N_l, 4]} float32 yxyx pixels.
          image_info: [B, 4, 2]; row 1 (scaled height, width) is the clip window of each image
            (torchvision clips to the resized image before padding).

        Returns:
          proposals: [B, P, 4] float32 yxyx pixels (zero rows where invalid),
          scores: [B, P] float32 objectness logits, or probabilities with ``sigmoid_scores``
            (_NEG where invalid),
          valid: [B, P] bool.
        """
        image_hw = tf.minimum(tf.cast(image_info[:, 1, :], tf.float32), float(self.image_size))  # [B, 2]
        level_boxes, level_scores = [], []
        for level in sorted(objectness_logits):
            logits = objectness_logits[level]
            level_deltas, level_anchors = deltas[level], anchors[level]
            num_anchors = logits.shape[1]
            if num_anchors is None:  # unknown grid size: pad to pre_nms_topk with invalid candidates
                pad = tf.maximum(self.pre_nms_topk - tf.shape(logits)[1], 0)
                logits = tf.pad(logits, [[0, 0], [0, pad]], constant_values=_NEG)
                level_deltas = tf.pad(level_deltas, [[0, 0], [0, pad], [0, 0]])
                level_anchors = tf.pad(level_anchors, [[0, pad], [0, 0]])
                num_anchors = self.pre_nms_topk
            k = min(self.pre_nms_topk, num_anchors)
            scores, top = tf.math.top_k(logits, k=k, sorted=True)  # [B, k]
            padded = scores <= _NEG / 2
            top_deltas = tf.gather(level_deltas, top, batch_dims=1)  # [B, k, 4]
            top_anchors = tf.gather(level_anchors, top)  # [B, k, 4]
            boxes = box_ops.decode_boxes(top_deltas, top_anchors)
            boxes = box_ops.clip_boxes(boxes, image_hw)
            heights = boxes[..., 2] - boxes[..., 0]
            widths = boxes[..., 3] - boxes[..., 1]
            if self.min_box_size > 0:
                keep = (heights >= self.min_box_size) & (widths >= self.min_box_size)
            else:
                keep = (heights > 0) & (widths > 0)
            if self.sigmoid_scores:
                scores = tf.sigmoid(scores)
            scores = tf.where(keep & ~padded, scores, _NEG)
            max_out = min(self.post_nms_topk, k)
            idx, num_valid = nms.nms_padded(boxes, scores, max_out, self.nms_iou_threshold,
                                            score_threshold=_NEG / 2)
            valid = tf.range(max_out)[None, :] < num_valid[:, None]  # [B, max_out]
            level_boxes.append(tf.gather(boxes, idx, batch_dims=1))
            level_scores.append(tf.where(valid, tf.gather(scores, idx, batch_dims=1), _NEG))
        boxes = tf.concat(level_boxes, axis=1)
        scores = tf.concat(level_scores, axis=1)
        num_candidates = boxes.shape[1]
        k = min(self.post_nms_topk, num_candidates)
        scores, top = tf.math.top_k(scores, k=k, sorted=True)
        boxes = tf.gather(boxes, top, batch_dims=1)
        valid = scores > _NEG / 2
        if k < self.post_nms_topk:  # fewer anchors than requested proposals: pad to the static size
            pad = self.post_nms_topk - k
            boxes = tf.pad(boxes, [[0, 0], [0, pad], [0, 0]])
            scores = tf.pad(scores, [[0, 0], [0, pad]], constant_values=_NEG)
            valid = tf.pad(valid, [[0, 0], [0, pad]])
        boxes = tf.where(valid[..., None], boxes, 0.0)
        return boxes, scores, valid

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(pre_nms_topk=self.pre_nms_topk, post_nms_topk=self.post_nms_topk,
                      nms_iou_threshold=self.nms_iou_threshold, min_box_size=self.min_box_size,
                      image_size=self.image_size, sigmoid_scores=self.sigmoid_scores)
        return config
