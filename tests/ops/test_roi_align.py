"""Tests for mrcnn_tf2.ops.roi_align against a plain NumPy aligned ROIAlign (detectron2 rules)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from mrcnn_tf2.ops import roi_align


def _np_bilinear(feature, y, x):
    height, width = feature.shape[:2]
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(feature.shape[-1])
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    return (hy * hx * feature[y_low, x_low] + hy * lx * feature[y_low, x_high]
            + ly * hx * feature[y_high, x_low] + ly * lx * feature[y_high, x_high])


def _np_roi_align(feature, box, stride, size, ratio):
    """One box on one [H, W, C] map, loops over bins and samples."""
    y1, x1, y2, x2 = (float(v) / stride - 0.5 for v in box)
    bin_h, bin_w = (y2 - y1) / size, (x2 - x1) / size
    out = np.zeros((size, size, feature.shape[-1]))
    for p in range(size):
        for q in range(size):
            acc = np.zeros(feature.shape[-1])
            for iy in range(ratio):
                for ix in range(ratio):
                    y = y1 + p * bin_h + (iy + 0.5) * bin_h / ratio
                    x = x1 + q * bin_w + (ix + 0.5) * bin_w / ratio
                    acc += _np_bilinear(feature, y, x)
            out[p, q] = acc / ratio**2
    return out


def _np_level(box, min_level, max_level, canonical_size, canonical_level):
    area = max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)
    if area <= 0:
        return min_level
    level = math.floor(canonical_level + math.log2(math.sqrt(area) / canonical_size) + 1e-9)
    return min(max(level, min_level), max_level)


# Boxes in a 32 x 32 input: inside, crossing each border, fully outside, tiny, zero-area (padding).
BOXES = np.array([
    [3.0, 5.0, 20.0, 27.0],
    [-6.0, -4.0, 10.0, 12.0],
    [20.0, 22.0, 40.0, 37.0],
    [10.2, 11.7, 10.9, 12.1],
    [0.0, 0.0, 0.0, 0.0],
    [-30.0, -30.0, -20.0, -25.0],
], np.float32)


@pytest.mark.parametrize("size,ratio", [(3, 2), (2, 1), (4, 3)])
def test_single_level_matches_numpy(size, ratio):
    rng = np.random.default_rng(size)
    features = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)  # level 2 (stride 4) of a 32 x 32 input
    boxes = np.stack([BOXES, BOXES[::-1] * 0.9 + 1.0])
    got = roi_align.multilevel_roi_align({2: tf.constant(features)}, tf.constant(boxes), size, ratio).numpy()
    assert got.shape == (2, 6, size, size, 3)
    for b in range(2):
        for r in range(6):
            expected = _np_roi_align(features[b], boxes[b, r], 4, size, ratio)
            np.testing.assert_allclose(got[b, r], expected, atol=1e-5, err_msg=f"image {b} box {r}")
    assert np.all(got[0, 5] == 0.0)  # entirely outside the map


# None: one gather; 3 * 3 * 16 * 4 * 3 values per image: chunks of 3 boxes (10 boxes -> 4 chunks, 2 padded).
@pytest.mark.parametrize("max_gather_values", [None, 3 * 3 * 16 * 4 * 3])
def test_multilevel_matches_numpy(max_gather_values):
    rng = np.random.default_rng(7)
    features = {level: rng.normal(size=(2, 64 // 2**level, 64 // 2**level, 4)).astype(np.float32)
                for level in (2, 3, 4)}
    yx = rng.uniform(-8, 60, (2, 10, 2))
    hw = rng.uniform(1, 50, (2, 10, 2))
    boxes = np.concatenate([yx, yx + hw], -1).astype(np.float32)
    got = roi_align.multilevel_roi_align(
        {k: tf.constant(v) for k, v in features.items()}, tf.constant(boxes), 3, 2,
        canonical_size=16.0, canonical_level=3, max_gather_values=max_gather_values).numpy()
    assert got.shape == (2, 10, 3, 3, 4)
    levels_used = set()
    for b in range(2):
        for r in range(10):
            level = _np_level(boxes[b, r], 2, 4, 16.0, 3)
            levels_used.add(level)
            expected = _np_roi_align(features[level][b], boxes[b, r], 2**level, 3, 2)
            np.testing.assert_allclose(got[b, r], expected, atol=1e-5, err_msg=f"image {b} box {r}")
    assert levels_used == {2, 3, 4}


def test_assign_levels():
    boxes = tf.constant([[
        [0.0, 0.0, 224.0, 224.0],  # canonical -> 4
        [0.0, 0.0, 448.0, 448.0],  # exactly 2x -> 5
        [0.0, 0.0, 447.0, 447.0],  # just below -> 4
        [0.0, 0.0, 112.0, 112.0],  # -> 3
        [0.0, 0.0, 16.0, 16.0],  # -> clipped to 2
        [0.0, 0.0, 5000.0, 5000.0],  # -> clipped to 5
        [0.0, 0.0, 0.0, 0.0],  # padding -> 2
        [10.0, 10.0, 5.0, 5.0],  # inverted -> 2
        [0.0, 0.0, 112.0, 448.0],  # sqrt area 224 -> 4
    ]])
    got = roi_align.assign_levels(boxes, 2, 5).numpy()
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, [[4, 5, 4, 3, 2, 5, 2, 2, 4]])
    np.testing.assert_array_equal(roi_align.assign_levels(boxes, 3, 6, 112.0, 3).numpy()[0, :5], [4, 5, 4, 3, 3])


def test_gradient_wrt_features():
    rng = np.random.default_rng(3)
    features = {level: tf.constant(rng.normal(size=(1, 32 // 2**level, 32 // 2**level, 2)), tf.float32)
                for level in (2, 3)}
    boxes = tf.constant(BOXES[None])
    with tf.GradientTape() as tape:
        tape.watch(features)
        out = roi_align.multilevel_roi_align(features, boxes, 3, 2, canonical_size=8.0, canonical_level=2)
        total = tf.reduce_sum(out)
    grads = tape.gradient(total, features)
    assert all(g is not None for g in grads.values())
    dense = {k: tf.convert_to_tensor(g).numpy() for k, g in grads.items()}
    assert any(np.abs(g).sum() > 0 for g in dense.values())
    # The op is linear in the features: <grad, features> == sum(output).
    inner = sum(float(np.sum(dense[k] * features[k].numpy())) for k in features)
    assert inner == pytest.approx(float(total), rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_output_dtype_follows_features(dtype):
    features = {2: tf.ones([1, 8, 8, 2], dtype), 3: tf.ones([1, 4, 4, 2], dtype)}
    out = roi_align.multilevel_roi_align(features, tf.constant([[[4.0, 4.0, 20.0, 20.0]]]), 2)
    assert out.dtype == dtype
    np.testing.assert_allclose(tf.cast(out, tf.float32).numpy(), 1.0)


def test_in_tf_function_static_shape():
    fn = tf.function(lambda f, b: roi_align.multilevel_roi_align(f, b, 7, 2))
    features = {level: tf.zeros([2, 64 // 2**level, 64 // 2**level, 5]) for level in range(2, 7)}
    out = fn(features, tf.zeros([2, 11, 4]))
    assert out.shape == (2, 11, 7, 7, 5)


@pytest.mark.parametrize("max_gather_values", [1, 7 * 7 * 16 * 5 * 4])
def test_chunked_equals_one_gather_with_unknown_batch(max_gather_values):
    rng = np.random.default_rng(3)
    features = {level: tf.constant(rng.normal(size=(2, 64 // 2**level, 64 // 2**level, 5)), tf.float32)
                for level in range(2, 6)}
    yx = rng.uniform(-8, 60, (2, 11, 2))
    boxes = tf.constant(np.concatenate([yx, yx + rng.uniform(1, 50, (2, 11, 2))], -1), tf.float32)
    spec = [{level: tf.TensorSpec([None, *f.shape[1:]]) for level, f in features.items()},
            tf.TensorSpec([None, 11, 4])]

    def pool(limit):
        return tf.function(lambda f, b: roi_align.multilevel_roi_align(f, b, 7, 2, max_gather_values=limit),
                           input_signature=spec)(features, boxes).numpy()

    got, whole = pool(max_gather_values), pool(None)
    assert got.shape == (2, 11, 7, 7, 5)
    # Graph rewrites may round the sample coordinates differently per chunk: float32 noise only.
    np.testing.assert_allclose(got, whole, rtol=0, atol=1e-5)


def test_rejects_non_consecutive_levels():
    with pytest.raises(ValueError):
        roi_align.multilevel_roi_align({2: tf.zeros([1, 4, 4, 1]), 4: tf.zeros([1, 1, 1, 1])},
                                       tf.zeros([1, 1, 4]), 2)
