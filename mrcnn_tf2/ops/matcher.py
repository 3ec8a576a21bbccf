"""Matching of anchors/proposals (rows) to ground-truth boxes (columns) by a similarity matrix.

This module owns the labelling rule shared by the RPN targets (thresholds 0.7/0.3 with low-quality
matches) and the ROI sampler (0.5/0.5 without): each row gets its best valid column and a label
``POSITIVE``, ``NEGATIVE`` or ``IGNORE``. Batched, static shapes, no loops.

Shape shorthand: B images, N rows (anchors or proposals), M columns (padded ground truth).
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["POSITIVE", "NEGATIVE", "IGNORE", "match"]

POSITIVE = 1
NEGATIVE = 0
IGNORE = -1

# Similarity given to masked-out entries: below any IoU (IoU lies in [0, 1]).
_MASKED = -1.0


def match(
    similarity: tf.Tensor,
    valid_columns: tf.Tensor,
    positive_threshold: float,
    negative_threshold: float,
    allow_low_quality_matches: bool = False,
    valid_rows: tf.Tensor | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Matches every row to its most similar valid column and labels it.

    Rules, for a valid row with best similarity ``s`` over the valid columns:
    ``s >= positive_threshold`` -> ``POSITIVE``; ``s < negative_threshold`` -> ``NEGATIVE``;
    otherwise ``IGNORE``. An image with no valid column labels every valid row ``NEGATIVE``
    (matched index 0). Invalid rows are ``IGNORE``.

    Low-quality matches (``allow_low_quality_matches=True``, Faster R-CNN's RPN rule): for every
    valid column whose best similarity over the valid rows is ``> 0``, every valid row reaching that
    best value becomes ``POSITIVE`` and is matched to that column, even below
    ``positive_threshold``. A row that is the best row of several columns is matched to the one it
    is most similar to (lowest column index on ties).

    Args:
        similarity: ``[B, N, M]`` float, e.g. IoU of N anchors against M ground-truth boxes.
        valid_columns: ``[B, M]`` bool, False for padded ground truth.
        positive_threshold: lowest similarity of a positive row.
        negative_threshold: negatives have similarity strictly below this
            (``negative_threshold <= positive_threshold``).
        allow_low_quality_matches: apply the low-quality rule above.
        valid_rows: optional ``[B, N]`` bool, False for padded rows (labelled ``IGNORE``; they never
            count as a column's best row).

    Returns:
        ``(matched_idx, labels)``: ``matched_idx`` ``[B, N]`` int32 in ``[0, M)``, the matched column
        (0 where there is no valid column); ``labels`` ``[B, N]`` int32 in ``{1, 0, -1}``.
    """
    if negative_threshold > positive_threshold:
        raise ValueError(
            f"negative_threshold ({negative_threshold}) must be <= positive_threshold ({positive_threshold})")
    similarity = tf.convert_to_tensor(similarity)
    if similarity.dtype != tf.float32:
        similarity = tf.cast(similarity, tf.float32)
    valid_columns = tf.cast(valid_columns, tf.bool)
    batch_size, num_rows = tf.shape(similarity)[0], tf.shape(similarity)[1]
    if valid_rows is None:
        valid_rows = tf.ones([batch_size, num_rows], tf.bool)
    else:
        valid_rows = tf.cast(valid_rows, tf.bool)

    if similarity.shape[-1] == 0:  # no ground-truth slots at all
        matched_idx = tf.zeros([batch_size, num_rows], tf.int32)
        labels = tf.where(valid_rows, NEGATIVE, IGNORE)
        return matched_idx, labels

    masked = tf.where(valid_columns[:, None, :], similarity, _MASKED)  # [B, N, M]
    matched_idx = tf.argmax(masked, axis=2, output_type=tf.int32)  # [B, N]
    best = tf.reduce_max(masked, axis=2)  # [B, N]

    labels = tf.where(
        best >= positive_threshold,
        POSITIVE,
        tf.where(best < negative_threshold, NEGATIVE, IGNORE),
    )

    if allow_low_quality_matches:
        row_masked = tf.where(valid_rows[:, :, None], masked, _MASKED)
        column_best = tf.reduce_max(row_masked, axis=1, keepdims=True)  # [B, 1, M]
        is_best = (
            (row_masked == column_best)
            & (column_best > 0.0)
            & valid_columns[:, None, :]
            & valid_rows[:, :, None]
        )  # [B, N, M]
        low_quality_idx = tf.argmax(tf.where(is_best, masked, _MASKED - 1.0), axis=2, output_type=tf.int32)
        is_low_quality = tf.reduce_any(is_best, axis=2)
        matched_idx = tf.where(is_low_quality, low_quality_idx, matched_idx)
        labels = tf.where(is_low_quality, POSITIVE, labels)

    has_columns = tf.reduce_any(valid_columns, axis=1, keepdims=True)  # [B, 1]
    matched_idx = tf.where(has_columns, matched_idx, 0)
    labels = tf.where(has_columns, labels, NEGATIVE)
    labels = tf.where(valid_rows, labels, IGNORE)
    return matched_idx, labels
