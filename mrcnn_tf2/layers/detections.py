"""Detection generator: box-head outputs -> a fixed number of final detections per image.

With ``pre_nms_topk=0`` (every candidate enters NMS) and ``min_box_size=1e-2`` this is torchvision's
``RoIHeads.postprocess_detections``: softmax, class-specific decoding (``dh``/``dw`` clamped at
``log(1000 / 16)``), clipping to each image's real (unpadded) size, background dropped, score
``> score_threshold``, boxes narrower or shorter than ``min_box_size`` dropped, per-class NMS, the best
``max_detections`` by score. A finite ``pre_nms_topk`` gives the same detections whenever the kept set of
its top-T candidates already holds ``max_detections`` boxes or T covers every candidate above the score
threshold (greedy NMS visits candidates in score order, so the ones below the top T never suppress them).

Shape shorthand: B = batch, R = ROIs per image, K = num_classes including background,
T = pre_nms_topk candidates (class, box) per image (``R * (K - 1)`` when 0), D = max_detections.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from mrcnn_tf2.ops import box_ops, nms


@keras.saving.register_keras_serializable(package="mrcnn_tf2")
class DetectionGenerator(keras.layers.Layer):
    """Class-specific decoding, score threshold, per-class NMS, top D.

    Args:
      max_detections: D.
      score_threshold: candidates whose class probability is not above this are dropped.
      nms_iou_threshold: per-class NMS IoU threshold.
      pre_nms_topk: T, best (ROI, class) candidates kept before NMS; 0 keeps them all.
      box_weights: (wy, wx, wh, ww) used to encode the box-head targets.
      image_size: side of the padded model input.
      min_box_size: candidates whose clipped height or width is below this (pixels) are dropped
        (torchvision: 1e-2); empty boxes are always dropped.
    """

    def __init__(self, max_detections: int = 100, score_threshold: float = 0.05,
                 nms_iou_threshold: float = 0.5, pre_nms_topk: int = 1000,
                 box_weights=(10.0, 10.0, 5.0, 5.0), image_size: int = 1024, min_box_size: float = 0.0,
                 **kwargs):
        # Box decoding, matching, top-k and NMS stay float32 under a mixed-precision policy.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.max_detections = max_detections
        self.score_threshold = score_threshold
        self.nms_iou_threshold = nms_iou_threshold
        self.pre_nms_topk = pre_nms_topk
        self.box_weights = tuple(float(w) for w in box_weights)
        self.image_size = image_size
        self.min_box_size = float(min_box_size)

    def call(self, class_logits: tf.Tensor, box_deltas: tf.Tensor, rois: tf.Tensor, roi_valid: tf.Tensor,
             image_info: tf.Tensor) -> dict[str, tf.Tensor]:
        """Args:
          class_logits: [B, R, K] float32.
          box_deltas: [B, R, K, 4] float32, weighted deltas per class.
          rois: [B, R, 4] float32 yxyx pixels.
          roi_valid: [B, R] bool.
          image_info: [B, 4, 2]; row 1 = scaled (height, width), the clip window.

        Returns:
          detection_boxes [B, D, 4] float32 yxyx model-input pixels, detection_scores [B, D] float32,
          detection_classes [B, D] int32 (1..K-1), num_detections [B] int32; rows past
          num_detections are zero.
        """
        num_classes = class_logits.shape[-1]
        num_rois = class_logits.shape[1]
        batch = tf.shape(class_logits)[0]
        probs = tf.nn.softmax(class_logits, axis=-1)[:, :, 1:]  # [B, R, K-1], background dropped
        probs = tf.where(roi_valid[..., None], probs, 0.0)
        image_hw = tf.minimum(tf.cast(image_info[:, 1, :], tf.float32), float(self.image_size))
        anchors = tf.broadcast_to(rois[:, :, None, :], [batch, num_rois, num_classes - 1, 4])
        boxes = box_ops.decode_boxes(box_deltas[:, :, 1:, :], anchors, weights=self.box_weights)
        boxes = tf.reshape(boxes, [batch, -1, 4])  # [B, R*(K-1), 4]
        boxes = box_ops.clip_boxes(boxes, image_hw)
        scores = tf.reshape(probs, [batch, -1])
        classes = tf.tile(tf.range(1, num_classes, dtype=tf.int32)[None, :], [num_rois, 1])
        classes = tf.broadcast_to(tf.reshape(classes, [1, -1]), tf.shape(scores))
        k = num_rois * (num_classes - 1)
        if 0 < self.pre_nms_topk < k:
            k = self.pre_nms_topk
            scores, top = tf.math.top_k(scores, k=k, sorted=True)  # [B, T]
            boxes = tf.gather(boxes, top, batch_dims=1)
            classes = tf.gather(classes, top, batch_dims=1)
        height, width = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
        keep = (height > 0) & (width > 0) & (height >= self.min_box_size) & (width >= self.min_box_size)
        scores = tf.where(keep & (scores > self.score_threshold), scores, -1.0)
        max_out = min(self.max_detections, k)
        idx, num = nms.batched_nms_padded(boxes, scores, classes, max_out, self.nms_iou_threshold,
                                          score_threshold=-0.5)
        valid = tf.range(max_out)[None, :] < num[:, None]
        out_boxes = tf.where(valid[..., None], tf.gather(boxes, idx, batch_dims=1), 0.0)
        out_scores = tf.where(valid, tf.gather(scores, idx, batch_dims=1), 0.0)
        out_classes = tf.where(valid, tf.gather(classes, idx, batch_dims=1), 0)
        if max_out < self.max_detections:
            pad = self.max_detections - max_out
            out_boxes = tf.pad(out_boxes, [[0, 0], [0, pad], [0, 0]])
            out_scores = tf.pad(out_scores, [[0, 0], [0, pad]])
            out_classes = tf.pad(out_classes, [[0, 0], [0, pad]])
        return {"detection_boxes": out_boxes, "detection_scores": out_scores,
                "detection_classes": out_classes, "num_detections": tf.cast(num, tf.int32)}

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(max_detections=self.max_detections, score_threshold=self.score_threshold,
                      nms_iou_threshold=self.nms_iou_threshold, pre_nms_topk=self.pre_nms_topk,
                      box_weights=list(self.box_weights), image_size=self.image_size,
                      min_box_size=self.min_box_size)
        return config
