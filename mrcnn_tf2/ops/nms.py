"""Padded (fixed-size) non-maximum suppression, class-agnostic and class-aware.

This module owns NMS with static output shapes for proposals and final detections. Each image runs
TensorFlow's ``NonMaxSuppressionV4`` kernel (fast C++ on CPU, a CUDA kernel on GPU, supported by XLA)
with ``pad_to_max_output_size=True``, mapped over the batch with ``tf.map_fn``; on the CPU this beat
the tiled batched ``tf.image.non_max_suppression_padded`` by 1.6x (2 x 4000 boxes -> 1000) to 10x
(2 x 1000 -> 100).

Semantics (those of the kernel): candidates are visited in decreasing score order (lower index
first on ties); a candidate is dropped when its IoU with an already selected box is
``> iou_threshold``; boxes with ``score <= score_threshold`` are never selected, so a score of
``-inf`` removes a box even with the default threshold. Coordinates may be given in either corner
order.

Shape shorthand: B images, N candidate boxes, K = ``max_output_size``.
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["nms_padded", "batched_nms_padded"]


def _check_inputs(boxes: tf.Tensor, scores: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    boxes = tf.cast(tf.convert_to_tensor(boxes), tf.float32)
    scores = tf.cast(tf.convert_to_tensor(scores), tf.float32)
    if boxes.shape.rank != 3 or (boxes.shape[-1] is not None and boxes.shape[-1] != 4):
        raise ValueError(f"boxes must be [B, N, 4], got shape {boxes.shape}")
    if scores.shape.rank != 2:
        raise ValueError(f"scores must be [B, N], got shape {scores.shape}")
    return boxes, scores


def nms_padded(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    max_output_size: int,
    iou_threshold: float,
    score_threshold: float = float("-inf"),
) -> tuple[tf.Tensor, tf.Tensor]:
    """Class-agnostic greedy NMS per image with a fixed-size output.

    Args:
        boxes: ``[B, N, 4]`` float32, y1x1y2x2 (any consistent frame, e.g. pixels).
        scores: ``[B, N]`` float32; higher is better.
        max_output_size: K, the number of output slots per image (static). N may be smaller than K.
        iou_threshold: a candidate whose IoU with a selected box exceeds this is suppressed.
        score_threshold: candidates with ``score <= score_threshold`` are never selected.

    Returns:
        ``(indices, num_valid)``: ``indices`` ``[B, K]`` int32 into N in decreasing score order, 0 past
        ``num_valid``; ``num_valid`` ``[B]`` int32, the number of selected boxes per image.
    """
    boxes, scores = _check_inputs(boxes, scores)
    max_output_size = int(max_output_size)
    iou_threshold = tf.constant(iou_threshold, tf.float32)
    score_threshold = tf.constant(score_threshold, tf.float32)

    def one_image(inputs: tuple[tf.Tensor, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        image_boxes, image_scores = inputs
        result = tf.raw_ops.NonMaxSuppressionV4(
            boxes=image_boxes,
            scores=image_scores,
            max_output_size=max_output_size,
            iou_threshold=iou_threshold,
            score_threshold=score_threshold,
            pad_to_max_output_size=True,
        )
        indices = tf.reshape(result.selected_indices, [max_output_size])
        # The kernel pads with 0 already; mask explicitly so the contract does not rest on it.
        indices = tf.where(tf.range(max_output_size) < result.valid_outputs, indices, 0)
        return indices, result.valid_outputs

    if boxes.shape[0] == 1:  # a static batch of one (TFLite export): no loop, which TFLite cannot calibrate
        indices, num_valid = one_image((boxes[0], scores[0]))
        return indices[None], num_valid[None]
    indices, num_valid = tf.map_fn(
        one_image,
        (boxes, scores),
        fn_output_signature=(
            tf.TensorSpec([max_output_size], tf.int32),
            tf.TensorSpec([], tf.int32),
        ),
    )
    return indices, num_valid


def batched_nms_padded(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    classes: tf.Tensor,
    max_output_size: int,
    iou_threshold: float,
    score_threshold: float = float("-inf"),
) -> tuple[tf.Tensor, tf.Tensor]:
    """Class-aware NMS: boxes of different classes never suppress each other.

    Uses the coordinate-offset trick: each image's boxes are shifted to start at 0 and class ``c``
    is moved by ``c * (extent + 1)``, where ``extent`` is the image's largest coordinate span, so
    boxes of different classes cannot overlap; one :func:`nms_padded` call then does all classes.
    The shift costs float32 precision of about ``num_classes * extent * 6e-8`` pixels
    (under 0.01 px for 91 classes on a 1024 image).

    Args:
        boxes: ``[B, N, 4]`` float32, y1x1y2x2.
        scores: ``[B, N]`` float32.
        classes: ``[B, N]`` int32 class of each box (any integers, e.g. 1..K).
        max_output_size: K output slots per image (static).
        iou_threshold: IoU above which a same-class candidate is suppressed.
        score_threshold: candidates with ``score <= score_threshold`` are never selected.

    Returns:
        ``(indices, num_valid)`` as in :func:`nms_padded`: ``[B, K]`` int32 into N in decreasing
        score order (0 past ``num_valid``) and ``[B]`` int32.
    """
    boxes, scores = _check_inputs(boxes, scores)
    classes = tf.cast(classes, tf.float32)
    low = tf.reduce_min(boxes, axis=[1, 2], keepdims=True)  # [B, 1, 1]
    shifted = boxes - low
    extent = tf.reduce_max(shifted, axis=[1, 2], keepdims=True) + 1.0
    offset_boxes = shifted + classes[:, :, None] * extent
    return nms_padded(offset_boxes, scores, max_output_size, iou_threshold, score_threshold)
