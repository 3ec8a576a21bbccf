"""Tests for mrcnn_tf2.ops.anchors: counts, centres, sizes, ratios and ordering."""

import numpy as np
import pytest
import tensorflow as tf

from mrcnn_tf2.ops import anchors as anchor_ops

RATIOS = (0.5, 1.0, 2.0)


def test_counts_per_level():
    anchors = anchor_ops.generate_anchors(128, 2, 5, (16.0, 32.0, 64.0, 128.0), RATIOS)
    assert sorted(anchors) == [2, 3, 4, 5]
    for level, boxes in anchors.items():
        grid = 128 // 2**level
        assert boxes.shape == (grid * grid * 3, 4)
        assert boxes.dtype == tf.float32


def test_centres_sizes_and_order():
    anchors = anchor_ops.generate_anchors(64, 3, 4, (20.0, 40.0), RATIOS)
    boxes = anchors[3].numpy().reshape(8, 8, 3, 4)  # [H, W, A, 4]: y major, then x, then ratio
    for i in range(8):
        for j in range(8):
            for a, ratio in enumerate(RATIOS):
                y1, x1, y2, x2 = boxes[i, j, a]
                assert (y1 + y2) / 2 == pytest.approx((i + 0.5) * 8)
                assert (x1 + x2) / 2 == pytest.approx((j + 0.5) * 8)
                h, w = y2 - y1, x2 - x1
                assert h / w == pytest.approx(ratio, rel=1e-5)
                assert np.sqrt(h * w) == pytest.approx(20.0, rel=1e-5)
                assert h == pytest.approx(20.0 * np.sqrt(ratio), rel=1e-5)
    # Level 4 uses the second size.
    level4 = anchors[4].numpy()
    np.testing.assert_allclose(level4[1], [8 - 20, 8 - 20, 8 + 20, 8 + 20], atol=1e-4)  # cell (0, 0), ratio 1


def test_order_matches_conv_reshape():
    # A conv output [1, H, W, A*4] whose value at (i, j, a) encodes the index; reshaping it to
    # [1, H*W*A, 4] must line up with the anchor rows.
    anchors = anchor_ops.generate_anchors(32, 3, 3, (8.0,), RATIOS)[3].numpy()
    grid = np.zeros((4, 4, 3, 4), np.float32)
    for i in range(4):
        for j in range(4):
            grid[i, j, :, 0] = (i + 0.5) * 8
            grid[i, j, :, 1] = (j + 0.5) * 8
    flat = tf.reshape(tf.constant(grid.reshape(1, 4, 4, 12)), [1, -1, 4]).numpy()[0]
    np.testing.assert_allclose((anchors[:, 0] + anchors[:, 2]) / 2, flat[:, 0])
    np.testing.assert_allclose((anchors[:, 1] + anchors[:, 3]) / 2, flat[:, 1])


def test_concat_levels_in_level_order():
    per_level = {4: tf.fill([2, 4], 4.0), 2: tf.fill([3, 4], 2.0), 3: tf.fill([1, 4], 3.0)}
    got = anchor_ops.concat_levels(per_level).numpy()
    np.testing.assert_allclose(got[:, 0], [2, 2, 2, 3, 4, 4])
    batched = {3: tf.zeros([2, 5, 1]), 2: tf.ones([2, 7, 1])}
    got = anchor_ops.concat_levels(batched, axis=1).numpy()
    assert got.shape == (2, 12, 1) and got[0, :7].min() == 1.0 and got[0, 7:].max() == 0.0


def test_rejects_wrong_number_of_sizes():
    with pytest.raises(ValueError):
        anchor_ops.generate_anchors(64, 2, 4, (16.0, 32.0), RATIOS)
