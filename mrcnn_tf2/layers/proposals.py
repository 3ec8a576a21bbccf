"""Proposal generation: RPN outputs -> a fixed number of scored, NMS-filtered boxes per image.

Shape shorthand: B = batch, N_l = anchors on level l, k_l = min(pre_nms_topk, N_l),
P = post_nms_topk proposals per image.

Per level: top-k by objectness, decode against the anchors, clip to the image, drop tiny boxes,
NMS; then the best P over all levels. Output shapes are static; rows past the valid ones are
zero boxes with ``valid = False``.
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
      image_size: side of the padded square model input (boxes are clipped to it too).
    """

    def __init__(self, pre_nms_topk: int = 1000, post_nms_topk: int = 1000, nms_iou_threshold: float = 0.7,
                 min_box_size: float = 0.0, image_size: int = 1024, **kwargs):
        # Box decoding, matching, top-k and NMS stay float32 under a mixed-precision policy.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.pre_nms_topk = pre_nms_topk
        self.post_nms_topk = post_nms_topk
        self.nms_iou_threshold = nms_iou_threshold
        self.min_box_size = min_box_size
        self.image_size = image_size

    def call(self, objectness_logits: Mapping[int, tf.Tensor], deltas: Mapping[int, tf.Tensor],
             anchors: Mapping[int, tf.Tensor], image_info: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Generates proposals.

        Args:
          objectness_logits: {level: [B, N_l]} float32.
          deltas: {level: [B, N_l, 4]} float32 (dy, dx, dh, dw), RPN weights (1, 1, 1, 1).
          anchors: {level: [N_l, 4]} float32 yxyx pixels.
          image_info: [B, 4, 2]; row 1 (scaled height, width) bounds the valid image area.

        Returns:
          proposals: [B, P, 4] float32 yxyx pixels (zero rows where invalid),
          scores: [B, P] float32 objectness logits (_NEG where invalid),
          valid: [B, P] bool.
        """
        image_hw = tf.minimum(tf.cast(image_info[:, 1, :], tf.float32), float(self.image_size))  # [B, 2]
        level_boxes, level_scores = [], []
        for level in sorted(objectness_logits):
            logits = objectness_logits[level]
            num_anchors = logits.shape[1] if logits.shape[1] is not None else tf.shape(logits)[1]
            k = min(self.pre_nms_topk, num_anchors) if isinstance(num_anchors, int) else self.pre_nms_topk
            scores, top = tf.math.top_k(logits, k=k, sorted=True)  # [B, k]
            top_deltas = tf.gather(deltas[level], top, batch_dims=1)  # [B, k, 4]
            top_anchors = tf.gather(anchors[level], top)  # [B, k, 4]
            boxes = box_ops.decode_boxes(top_deltas, top_anchors)
            boxes = box_ops.clip_boxes(boxes, image_hw)
            heights = boxes[..., 2] - boxes[..., 0]
            widths = boxes[..., 3] - boxes[..., 1]
            keep = (heights > self.min_box_size) & (widths > self.min_box_size)
            scores = tf.where(keep, scores, _NEG)
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
                      image_size=self.image_size)
        return config
