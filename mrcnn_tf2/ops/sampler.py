"""Balanced random sampling of positive and negative examples (RPN anchors, second-stage ROIs).

This module owns the sampling rule: at most ``floor(num_samples * positive_fraction)`` positives
chosen uniformly at random, then negatives to fill ``num_samples`` (as many as exist). Static shapes:
random keys and ``top_k`` per image, no loops and no data-dependent shapes.

Every draw is stateless: the same ``seed`` gives the same sample in any process, so a resumed training
run draws exactly what an uninterrupted one would (the model derives each step's seed from
``data.seed``, the global step and the replica id; see ``MaskRCNN.step_seed``). There is no stateful
fallback: TensorFlow's global generator restarts in every new process.

Shape shorthand: B images, N candidates (anchors or proposals), S = ``num_samples``.
Labels follow :mod:`mrcnn_tf2.ops.matcher`: 1 positive, 0 negative, -1 ignored.
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["subsample_labels", "sample_indices"]

SeedLike = int | tf.Tensor


def _uniform(shape: tf.Tensor, seed: SeedLike) -> tf.Tensor:
    """Uniform [0, 1) keys from a stateless generator (the same seed gives the same keys)."""
    if seed is None:
        raise ValueError("the sampler needs a seed (an int or a [2] int tensor); it draws statelessly")
    if isinstance(seed, int):
        seed = tf.constant([seed, 0], tf.int64)
    return tf.random.stateless_uniform(shape, seed=seed, dtype=tf.float32)


def _max_positives(num_samples: int, positive_fraction: float) -> int:
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    return int(num_samples * positive_fraction + 1e-6)  # floor, robust to 0.29 * 100 = 28.999...


def sample_indices(
    labels: tf.Tensor,
    num_samples: int,
    positive_fraction: float,
    seed: SeedLike,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Samples a balanced set of candidates and returns their indices.

    Args:
        labels: ``[B, N]`` int32, 1 positive, 0 negative, -1 ignored (never sampled).
        num_samples: S, the number of samples per image (static).
        positive_fraction: at most ``floor(S * positive_fraction)`` positives per image.
        seed: an int or a ``[2]`` int tensor; the draw is a pure function of it (stateless).

    Returns:
        ``(indices, valid)``: ``indices`` ``[B, S]`` int32 into N, the sampled positives first, then
        the sampled negatives, then padding (index 0); ``valid`` ``[B, S]`` bool, False for padding.
        There is padding only when an image has fewer usable candidates than S (e.g. N < S).
    """
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank != 2:
        raise ValueError(f"labels must be [B, N], got shape {labels.shape}")
    num_candidates = labels.shape[1]
    if num_candidates is None:
        raise ValueError("sample_indices needs a static number of candidates N")
    max_positives = _max_positives(num_samples, positive_fraction)
    labels = tf.cast(labels, tf.int32)
    is_positive = tf.equal(labels, 1)
    is_negative = tf.equal(labels, 0)

    keys = _uniform(tf.shape(labels), seed)  # [B, N] in [0, 1)
    k_pos = min(max_positives, num_candidates)
    k_neg = min(num_samples, num_candidates)
    # Random order within each class; non-members get key -1 and sort last.
    _, pos_order = tf.math.top_k(tf.where(is_positive, keys, -1.0), k=k_pos)  # [B, k_pos]
    _, neg_order = tf.math.top_k(tf.where(is_negative, keys, -1.0), k=k_neg)  # [B, k_neg]
    candidates = tf.concat([pos_order, neg_order], axis=1)  # [B, k_pos + k_neg]

    num_pos = tf.minimum(tf.reduce_sum(tf.cast(is_positive, tf.int32), axis=1), max_positives)  # [B]
    num_neg = tf.minimum(tf.reduce_sum(tf.cast(is_negative, tf.int32), axis=1), num_samples - num_pos)
    num_pos, num_neg = num_pos[:, None], num_neg[:, None]

    slot = tf.range(num_samples, dtype=tf.int32)[None, :]  # [1, S]
    position = tf.where(slot < num_pos, slot, k_pos + slot - num_pos)
    position = tf.clip_by_value(position, 0, k_pos + k_neg - 1)
    valid = slot < num_pos + num_neg  # [B, S]
    indices = tf.where(valid, tf.gather(candidates, position, batch_dims=1), 0)
    return indices, valid


def subsample_labels(
    labels: tf.Tensor,
    num_samples: int,
    positive_fraction: float,
    seed: SeedLike,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Samples a balanced set of candidates and returns it as masks.

    Same sampling as :func:`sample_indices`: at most ``floor(num_samples * positive_fraction)``
    random positives, then random negatives filling ``num_samples - num_positives_chosen`` (at most
    the number available). Ignored candidates (label -1) are never chosen.

    Args:
        labels: ``[B, N]`` int32, 1 positive, 0 negative, -1 ignored.
        num_samples: samples per image (static).
        positive_fraction: upper bound on the positive share.
        seed: an int or a ``[2]`` int tensor (stateless: the same seed, the same sample).

    Returns:
        ``(positive_mask, negative_mask)``, both ``[B, N]`` bool, disjoint.
    """
    labels = tf.convert_to_tensor(labels)
    indices, valid = sample_indices(labels, num_samples, positive_fraction, seed)
    batch_size = tf.shape(indices)[0]
    batch_idx = tf.broadcast_to(tf.range(batch_size)[:, None], tf.shape(indices))
    scatter_idx = tf.stack([batch_idx, indices], axis=-1)  # [B, S, 2]
    picked_label = tf.gather(tf.cast(labels, tf.int32), indices, batch_dims=1)
    positive = tf.cast(valid & tf.equal(picked_label, 1), tf.float32)
    negative = tf.cast(valid & tf.equal(picked_label, 0), tf.float32)
    shape = tf.shape(labels, out_type=tf.int32)
    positive_mask = tf.scatter_nd(scatter_idx, positive, shape) > 0.5
    negative_mask = tf.scatter_nd(scatter_idx, negative, shape) > 0.5
    return positive_mask, negative_mask
