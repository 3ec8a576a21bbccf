"""Tests for mrcnn_tf2.ops.matcher on small hand-made similarity matrices."""

import numpy as np
import pytest
import tensorflow as tf

from mrcnn_tf2.ops import matcher

P, N, X = matcher.POSITIVE, matcher.NEGATIVE, matcher.IGNORE


def _match(sim, valid_cols, pos, neg, low_quality=False, valid_rows=None):
    idx, labels = matcher.match(
        tf.constant(sim, tf.float32), tf.constant(valid_cols), pos, neg, low_quality,
        None if valid_rows is None else tf.constant(valid_rows))
    assert idx.dtype == tf.int32 and labels.dtype == tf.int32
    return idx.numpy(), labels.numpy()


def test_thresholds():
    sim = np.array([[[0.9, 0.1], [0.2, 0.75], [0.5, 0.4], [0.1, 0.29], [0.3, 0.0], [0.7, 0.2]]])
    idx, labels = _match(sim, [[True, True]], 0.7, 0.3)
    np.testing.assert_array_equal(idx, [[0, 1, 0, 1, 0, 0]])
    np.testing.assert_array_equal(labels, [[P, P, X, N, X, P]])


def test_equal_thresholds_roi_sampler():
    sim = np.array([[[0.5, 0.1], [0.49, 0.2], [0.0, 0.0]]])
    idx, labels = _match(sim, [[True, True]], 0.5, 0.5)
    np.testing.assert_array_equal(labels, [[P, N, N]])
    np.testing.assert_array_equal(idx[0, :2], [0, 0])


def test_padded_columns_are_never_matched():
    # Column 1 is padding with a high similarity: must be ignored.
    sim = np.array([[[0.2, 0.95, 0.6], [0.1, 0.9, 0.05]]])
    idx, labels = _match(sim, [[True, False, True]], 0.5, 0.3)
    np.testing.assert_array_equal(idx, [[2, 0]])
    np.testing.assert_array_equal(labels, [[P, N]])


def test_empty_ground_truth_and_batch_independence():
    sim = np.array([[[0.9, 0.8], [0.6, 0.1]], [[0.9, 0.8], [0.6, 0.1]]])
    idx, labels = _match(sim, [[False, False], [True, True]], 0.7, 0.3, low_quality=True)
    np.testing.assert_array_equal(idx, [[0, 0], [0, 0]])
    np.testing.assert_array_equal(labels, [[N, N], [P, X]])


def test_zero_columns():
    idx, labels = _match(np.zeros((2, 3, 0)), np.zeros((2, 0), bool), 0.7, 0.3)
    np.testing.assert_array_equal(idx, np.zeros((2, 3)))
    np.testing.assert_array_equal(labels, np.full((2, 3), N))


def test_invalid_rows_are_ignored():
    sim = np.array([[[0.9, 0.1], [0.0, 0.1], [0.2, 0.8]]])
    _, labels = _match(sim, [[True, True]], 0.7, 0.3, valid_rows=[[True, False, False]])
    np.testing.assert_array_equal(labels, [[P, X, X]])


def test_low_quality_matches():
    # Column 0's best is 0.4 (rows 0 and 2 tie), column 1's best is 0.6 (row 1), column 2 is
    # padding, column 3 has best similarity 0 and gets no forced match.
    sim = np.array([[
        [0.4, 0.1, 0.9, 0.0],
        [0.35, 0.6, 0.0, 0.0],
        [0.4, 0.2, 0.0, 0.0],
        [0.1, 0.2, 0.0, 0.0],
        [0.32, 0.0, 0.0, 0.0],
    ]])
    valid = [[True, True, False, True]]
    idx, labels = _match(sim, valid, 0.7, 0.3)
    np.testing.assert_array_equal(labels, [[X, X, X, N, X]])
    idx, labels = _match(sim, valid, 0.7, 0.3, low_quality=True)
    np.testing.assert_array_equal(labels, [[P, P, P, N, X]])
    np.testing.assert_array_equal(idx[0, :3], [0, 1, 0])


def test_low_quality_reassigns_to_the_column_it_is_best_for():
    # Row 0 is most similar to column 0 (0.5) but row 1 is column 0's best; row 0 is column 1's
    # best row, so the low-quality rule matches row 0 to column 1.
    sim = np.array([[[0.5, 0.3], [0.6, 0.0]]])
    idx, labels = _match(sim, [[True, True]], 0.7, 0.3, low_quality=True)
    np.testing.assert_array_equal(labels, [[P, P]])
    np.testing.assert_array_equal(idx, [[1, 0]])


def test_low_quality_skips_invalid_rows():
    # The invalid row 0 would be column 0's best; the best valid row (row 1) is forced instead.
    sim = np.array([[[0.6, 0.0], [0.5, 0.0], [0.1, 0.0]]])
    _, labels = _match(sim, [[True, False]], 0.7, 0.3, low_quality=True, valid_rows=[[False, True, True]])
    np.testing.assert_array_equal(labels, [[X, P, N]])


def test_in_tf_function_with_static_shapes():
    fn = tf.function(lambda s, v: matcher.match(s, v, 0.7, 0.3, True))
    sim = tf.random.stateless_uniform([2, 50, 4], seed=[1, 2])
    idx, labels = fn(sim, tf.constant([[True, True, False, False], [True] * 4]))
    assert idx.shape == (2, 50) and labels.shape == (2, 50)
    assert int(tf.reduce_max(idx[0])) <= 1


def test_rejects_inverted_thresholds():
    with pytest.raises(ValueError):
        matcher.match(tf.zeros([1, 1, 1]), tf.ones([1, 1], tf.bool), 0.3, 0.7)


def _np_match(sim, valid_cols, valid_rows, pos, neg):
    """Plain loop reference with the low-quality rule."""
    b_, n_, m_ = sim.shape
    idx = np.zeros((b_, n_), np.int32)
    labels = np.full((b_, n_), X, np.int32)
    for b in range(b_):
        cols = [m for m in range(m_) if valid_cols[b, m]]
        for n in range(n_):
            if not valid_rows[b, n]:
                continue
            if not cols:
                labels[b, n] = N
                continue
            best_m = max(cols, key=lambda m: (sim[b, n, m], -m))
            idx[b, n] = best_m
            s = sim[b, n, best_m]
            labels[b, n] = P if s >= pos else (N if s < neg else X)
        forced = {}
        for m in cols:
            rows = [n for n in range(n_) if valid_rows[b, n]]
            if not rows:
                continue
            top = max(sim[b, n, m] for n in rows)
            if top <= 0:
                continue
            for n in rows:
                if sim[b, n, m] == top and (n not in forced or sim[b, n, m] > sim[b, n, forced[n]]):
                    forced[n] = m
        for n, m in forced.items():
            idx[b, n], labels[b, n] = m, P
    return idx, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_against_numpy_reference(seed):
    rng = np.random.default_rng(seed)
    sim = rng.choice([0.0, 0.1, 0.25, 0.3, 0.45, 0.6, 0.7, 0.85], size=(3, 40, 6)).astype(np.float32)
    valid_cols = rng.random((3, 6)) < 0.6
    valid_cols[2] = False
    valid_rows = rng.random((3, 40)) < 0.9
    idx, labels = _match(sim, valid_cols, 0.7, 0.3, low_quality=True, valid_rows=valid_rows)
    ref_idx, ref_labels = _np_match(sim, valid_cols, valid_rows, 0.7, 0.3)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_array_equal(idx[valid_rows], ref_idx[valid_rows])
    assert (labels == P).sum() > 0 and (labels == N).sum() > 0 and (labels == X).sum() > 0
