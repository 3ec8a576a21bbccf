"""Ground truth from augmented instance masks: tight boxes, box-relative mask crops, padding to G.

Pure TF ops for ``Dataset.map``. Pixel convention: mask pixel ``(r, c)`` covers the square
``[r, r + 1) x [c, c + 1)``, so the tight box of a mask whose rows ``r1..r2`` and columns ``c1..c2`` are
set is ``[r1, c1, r2 + 1, c2 + 1]`` (y1, x1, y2, x2; the same extent COCO gives a polygon with integer
vertices). Empty masks get the box ``[0, 0, 0, 0]``.
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["mask_to_box", "crop_masks_to_boxes", "pack_instances"]


def mask_to_box(masks: tf.Tensor) -> tf.Tensor:
    """Tight boxes of binary masks.

    Args:
        masks: ``[..., H, W]`` any numeric or bool dtype; non-zero = foreground.

    Returns:
        ``[..., 4]`` float32 ``(y1, x1, y2, x2)`` in pixels of the mask frame (exclusive end, see the
        module docstring); zeros for empty masks.
    """
    masks = tf.convert_to_tensor(masks)
    if masks.dtype == tf.bool:
        rows, cols = tf.reduce_any(masks, axis=-1), tf.reduce_any(masks, axis=-2)
    else:
        zero = tf.zeros([], masks.dtype)
        rows = tf.reduce_max(masks, axis=-1) > zero
        cols = tf.reduce_max(masks, axis=-2) > zero

    def extent(hits: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        size = tf.shape(hits)[-1]
        hits_i = tf.cast(hits, tf.int32)
        first = tf.argmax(hits_i, axis=-1, output_type=tf.int32)
        last = size - tf.argmax(tf.reverse(hits_i, axis=[-1]), axis=-1, output_type=tf.int32)
        return first, last

    y1, y2 = extent(rows)
    x1, x2 = extent(cols)
    boxes = tf.cast(tf.stack([y1, x1, y2, x2], axis=-1), tf.float32)
    nonempty = tf.reduce_any(rows, axis=-1, keepdims=True)
    return tf.where(nonempty, boxes, tf.zeros_like(boxes))


def _sample_grid(start: tf.Tensor, length: tf.Tensor, size: int, extent: tf.Tensor
                 ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Bilinear taps for ``size`` cell centres along one axis: (low index, high index, weight of high).

    Args:
        start, length: ``[N]`` float32, the box's start and length in pixels.
        size: M.
        extent: int32 scalar, the mask's length along this axis.

    Returns:
        ``[N, M]`` int32, ``[N, M]`` int32, ``[N, M]`` float32; positions clamp to the border pixels.
    """
    cells = (tf.range(size, dtype=tf.float32) + 0.5) / size
    # Continuous coordinate -> pixel index: pixel r covers [r, r + 1), its centre is r + 0.5.
    pos = start[:, None] + cells[None, :] * length[:, None] - 0.5
    last = tf.cast(extent - 1, tf.float32)
    pos = tf.clip_by_value(pos, 0.0, last)
    low = tf.floor(pos)
    weight = pos - low
    low = tf.cast(low, tf.int32)
    high = tf.minimum(low + 1, extent - 1)
    return low, high, weight


def crop_masks_to_boxes(masks: tf.Tensor, boxes: tf.Tensor, size: int) -> tf.Tensor:
    """Crops each mask to its own box and resamples it to ``size x size`` (bilinear, aligned centres).

    The output grid spans exactly the box: output cell ``(i, j)`` samples the mask at the continuous
    point ``(y1 + (i + 0.5) * h / size, x1 + (j + 0.5) * w / size)``, where pixel ``r`` covers
    ``[r, r + 1)`` (its centre is ``r + 0.5``). Samples past the border take the border pixel's value.
    Implemented as two separable gathers, so the cost is ``O(N * M * W)``, not a pass over the masks.

    Args:
        masks: ``[N, H, W]`` numeric, values in [0, 1] (uint8 {0, 1} or float).
        boxes: ``[N, 4]`` float32 ``(y1, x1, y2, x2)`` pixels of the mask frame.
        size: M.

    Returns:
        ``[N, M, M]`` float32 in [0, 1].
    """
    masks = tf.convert_to_tensor(masks)
    boxes = tf.cast(boxes, tf.float32)
    shape = tf.shape(masks)
    y1, x1, y2, x2 = tf.unstack(boxes, axis=-1)
    y_low, y_high, wy = _sample_grid(y1, y2 - y1, size, shape[1])
    x_low, x_high, wx = _sample_grid(x1, x2 - x1, size, shape[2])
    top = tf.cast(tf.gather(masks, y_low, axis=1, batch_dims=1), tf.float32)  # [N, M, W]
    bottom = tf.cast(tf.gather(masks, y_high, axis=1, batch_dims=1), tf.float32)
    rows = top + (bottom - top) * wy[:, :, None]
    left = tf.gather(rows, x_low, axis=2, batch_dims=1)  # [N, M, M]
    right = tf.gather(rows, x_high, axis=2, batch_dims=1)
    crops = left + (right - left) * wx[:, None, :]
    return tf.clip_by_value(crops, 0.0, 1.0)


def pack_instances(masks: tf.Tensor, classes: tf.Tensor, scale_yx: tf.Tensor, max_instances: int,
                   mask_size: int) -> dict[str, tf.Tensor]:
    """Ground truth of one image with static shapes.

    Boxes are computed from ``masks``; empty masks are dropped; when more than G remain, the G with the
    largest mask area are kept (ordered by decreasing area).

    Args:
        masks: ``[N, h, w]`` uint8 {0, 1}, instance masks in the frame of the (cropped) image content.
        classes: ``[N]`` int32 labels 1..K.
        scale_yx: ``[2]`` float32, factor from that frame to model-input pixels (``scaled / h``).
        max_instances: G.
        mask_size: M.

    Returns:
        ``gt_boxes [G, 4]`` float32 yxyx model-input pixels (padded rows 0), ``gt_classes [G]`` int32
        (-1 = padding), ``gt_masks [G, M, M]`` float32 in [0, 1] (zeros for padding),
        ``num_instances`` int32 scalar (valid rows, at most G).
    """
    boxes = mask_to_box(masks)
    areas = tf.math.count_nonzero(masks, axis=[1, 2], dtype=tf.int32)
    score = tf.where(areas > 0, areas, -1)
    k = tf.minimum(tf.shape(score)[0], max_instances)
    top_score, top = tf.math.top_k(score, k=k)
    keep = tf.boolean_mask(top, top_score > 0)
    boxes = tf.gather(boxes, keep)
    crops = crop_masks_to_boxes(tf.gather(masks, keep), boxes, mask_size)
    classes = tf.gather(tf.cast(classes, tf.int32), keep)
    scale_yx = tf.cast(scale_yx, tf.float32)
    scale = tf.concat([scale_yx, scale_yx], axis=0)
    boxes = boxes * scale
    num = tf.shape(keep)[0]
    pad = max_instances - num
    gt_boxes = tf.pad(boxes, [[0, pad], [0, 0]])
    gt_classes = tf.pad(classes, [[0, pad]], constant_values=-1)
    gt_masks = tf.pad(crops, [[0, pad], [0, 0], [0, 0]])
    gt_boxes.set_shape([max_instances, 4])
    gt_classes.set_shape([max_instances])
    gt_masks.set_shape([max_instances, mask_size, mask_size])
    return {"gt_boxes": gt_boxes, "gt_classes": gt_classes, "gt_masks": gt_masks, "num_instances": num}
