"""Tests for mrcnn_tf2.ops.sampler: balance, caps, ignored labels, padding and randomness."""

import numpy as np
import pytest
import tensorflow as tf

from mrcnn_tf2.ops import sampler


def _labels(num_pos, num_neg, num_ignore, rng):
    labels = np.array([1] * num_pos + [0] * num_neg + [-1] * num_ignore, np.int32)
    return rng.permutation(labels)


def _check_indices(labels, indices, valid, num_samples, fraction):
    """Checks one image's sample against the rule, in NumPy."""
    cap = int(np.floor(num_samples * fraction + 1e-6))
    n_pos = min(int((labels == 1).sum()), cap)
    n_neg = min(int((labels == 0).sum()), num_samples - n_pos)
    assert valid.sum() == n_pos + n_neg
    assert np.all(valid[: n_pos + n_neg]) and not np.any(valid[n_pos + n_neg:])
    assert np.all(indices[~valid] == 0)
    picked = indices[valid]
    assert len(set(picked.tolist())) == len(picked)  # no duplicates
    np.testing.assert_array_equal(labels[picked[:n_pos]], 1)
    np.testing.assert_array_equal(labels[picked[n_pos:]], 0)


@pytest.mark.parametrize(
    "num_pos,num_neg,num_ignore",
    [(5, 100, 20), (100, 100, 0), (0, 30, 5), (3, 2, 50), (0, 0, 10), (40, 0, 3)],
)
def test_sample_indices_balance_and_caps(num_pos, num_neg, num_ignore):
    rng = np.random.default_rng(num_pos + num_neg)
    labels = np.stack([_labels(num_pos, num_neg, num_ignore, rng) for _ in range(2)])
    indices, valid = sampler.sample_indices(tf.constant(labels), 16, 0.25, seed=3)
    assert indices.shape == (2, 16) and indices.dtype == tf.int32 and valid.dtype == tf.bool
    for b in range(2):
        _check_indices(labels[b], indices.numpy()[b], valid.numpy()[b], 16, 0.25)


def test_subsample_labels_masks():
    rng = np.random.default_rng(0)
    labels = np.stack([_labels(30, 200, 50, rng), _labels(2, 5, 273, rng)])
    pos, neg = sampler.subsample_labels(tf.constant(labels), 64, 0.5, seed=7)
    pos, neg = pos.numpy(), neg.numpy()
    assert pos.shape == labels.shape and pos.dtype == bool
    np.testing.assert_array_equal(pos.sum(1), [30, 2])
    np.testing.assert_array_equal(neg.sum(1), [34, 5])
    assert np.all(labels[pos] == 1) and np.all(labels[neg] == 0)
    assert not np.any(pos & neg)
    # Positive cap: 100 positives available, at most 32 chosen.
    many = np.stack([_labels(100, 100, 0, rng)])
    pos, neg = sampler.subsample_labels(tf.constant(many), 64, 0.5, seed=1)
    assert pos.numpy().sum() == 32 and neg.numpy().sum() == 32


def test_fewer_candidates_than_samples_pads():
    labels = tf.constant([[1, 0, -1, 0], [-1, -1, -1, -1]], tf.int32)
    indices, valid = sampler.sample_indices(labels, 10, 0.5, seed=0)
    assert indices.shape == (2, 10)
    np.testing.assert_array_equal(valid.numpy().sum(1), [3, 0])
    assert indices.numpy()[0, 0] == 0  # the only positive comes first
    assert sorted(indices.numpy()[0, 1:3].tolist()) == [1, 3]
    assert np.all(indices.numpy()[1] == 0)


def test_randomness_varies_with_seed_and_is_reproducible():
    labels = tf.constant(np.full((1, 500), 0, np.int32))
    a, _ = sampler.sample_indices(labels, 20, 0.5, seed=1)
    b, _ = sampler.sample_indices(labels, 20, 0.5, seed=1)
    c, _ = sampler.sample_indices(labels, 20, 0.5, seed=2)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.array_equal(a.numpy(), c.numpy())
    # A [2] tensor seed (what training passes: MaskRCNN.step_seed) works the same way.
    d, _ = sampler.sample_indices(labels, 20, 0.5, seed=tf.constant([1, 0], tf.int64))
    np.testing.assert_array_equal(a.numpy(), d.numpy())


def test_no_stateful_fallback():
    # A stateful draw restarts in every process, which breaks exact resume: the seed is required.
    labels = tf.constant(np.zeros((1, 50), np.int32))
    with pytest.raises(TypeError):
        sampler.sample_indices(labels, 20, 0.5)  # the missing argument is the point
    with pytest.raises(ValueError, match="needs a seed"):
        sampler.sample_indices(labels, 20, 0.5, seed=None)


def test_same_draw_in_a_new_process():
    # The keys are a pure function of the seed: another Python process draws the same sample.
    import subprocess
    import sys

    code = ("import numpy as np, tensorflow as tf; from mrcnn_tf2.ops import sampler; "
            "i, _ = sampler.sample_indices(tf.zeros([2, 300], tf.int32), 16, 0.5, seed=tf.constant([7, 3], tf.int64)); "
            "print(','.join(map(str, i.numpy().ravel())))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    here, _ = sampler.sample_indices(tf.zeros([2, 300], tf.int32), 16, 0.5, seed=tf.constant([7, 3], tf.int64))
    assert out.strip().splitlines()[-1] == ",".join(map(str, here.numpy().ravel()))


def test_selection_is_roughly_uniform():
    # 10 positives, cap 2: over 300 stateless draws each positive is picked about 60 times.
    labels = tf.constant([[1] * 10 + [0] * 10], tf.int32)
    counts = np.zeros(20)
    for seed in range(300):
        pos, _ = sampler.subsample_labels(labels, 4, 0.5, seed=seed)
        counts += pos.numpy()[0]
    assert counts[10:].sum() == 0
    assert counts[:10].min() > 30 and counts[:10].max() < 95


def test_in_tf_function():
    fn = tf.function(lambda labels, seed: sampler.sample_indices(labels, 8, 0.25, seed))
    labels = tf.constant(np.tile(np.array([1, 0, -1, 0, 0, 1], np.int32), (3, 5)))
    indices, valid = fn(labels, tf.constant([5, 6], tf.int64))
    assert indices.shape == (3, 8) and bool(tf.reduce_all(valid))
