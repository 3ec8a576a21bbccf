"""Tests for mrcnn_tf2.ops.anchors and its contract with the RPN head.

The reference layout is written here from the definition (one loop per (y, x, anchor)), with aspect
ratios and sizes that all differ, so a swapped axis, a transposed ratio or a wrong level size shows.
"""

import numpy as np
import pytest
import tensorflow as tf

from mrcnn_tf2.layers.rpn_head import RPNHead
from mrcnn_tf2.ops import anchors as anchor_ops

RATIOS = (0.25, 0.5, 1.5, 3.0)  # h / w, no two alike and none the inverse of another
SIZES = (12.0, 28.0, 60.0)  # one per level, not powers of two of each other


def _reference_anchors(image_size, min_level, max_level, sizes, ratios):
    """{level: [H * W * A, 4]} listing (y, x, anchor) in row-major order, from the module docstring."""
    out = {}
    for level, size in zip(range(min_level, max_level + 1), sizes):
        stride = 2**level
        grid = image_size // stride
        rows = []
        for i in range(grid):
            for j in range(grid):
                for ratio in ratios:
                    cy, cx = (i + 0.5) * stride, (j + 0.5) * stride
                    h, w = size * np.sqrt(ratio), size / np.sqrt(ratio)
                    rows.append([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2])
        out[level] = np.array(rows, np.float64).reshape(-1, 4)
    return out


def test_counts_per_level():
    anchors = anchor_ops.generate_anchors(128, 2, 5, (16.0, 32.0, 64.0, 128.0), RATIOS)
    assert sorted(anchors) == [2, 3, 4, 5]
    for level, boxes in anchors.items():
        grid = 128 // 2**level
        assert boxes.shape == (grid * grid * len(RATIOS), 4)
        assert boxes.dtype == tf.float32


def test_layout_equals_the_loop_reference():
    got = anchor_ops.generate_anchors(64, 3, 5, SIZES, RATIOS)
    want = _reference_anchors(64, 3, 5, SIZES, RATIOS)
    assert sorted(got) == sorted(want)
    for level in want:
        np.testing.assert_allclose(got[level].numpy(), want[level], rtol=1e-6, atol=1e-4, err_msg=f"level {level}")
    # Spot checks written out by hand: level 3 (stride 8), cell (0, 1), ratio 0.25 -> h = 6, w = 24.
    np.testing.assert_allclose(got[3].numpy()[1 * len(RATIOS) + 0], [4 - 3, 12 - 12, 4 + 3, 12 + 12], atol=1e-5)
    # Level 4 (stride 16, size 28), cell (1, 0), ratio 1.5: the 4 x 4 grid's row 1 starts at index 4.
    h, w = 28 * np.sqrt(1.5), 28 / np.sqrt(1.5)
    np.testing.assert_allclose(got[4].numpy()[4 * len(RATIOS) + 2], [24 - h / 2, 8 - w / 2, 24 + h / 2, 8 + w / 2],
                               atol=1e-4)


def test_numpy_and_tensor_versions_agree():
    a = anchor_ops.generate_anchors(32, 2, 3, (8.0, 20.0), RATIOS)
    b = anchor_ops.generate_anchors_numpy(32, 2, 3, (8.0, 20.0), RATIOS)
    for level in (2, 3):
        np.testing.assert_array_equal(a[level].numpy(), b[level])


def _rpn_head_that_echoes_its_input(num_anchors: int, channels: int) -> RPNHead:
    """An RPN head whose outputs for anchor k at (y, x) read: deltas = (feature 0, feature 1, k, feature 2),
    objectness = 100 * k + feature 0, with the input features passed through the shared conv unchanged."""
    head = RPNHead(num_anchors=num_anchors, num_channels=channels, num_convs=1)
    head.build({3: (None, 4, 4, channels)})
    conv = np.zeros([3, 3, channels, channels], np.float32)
    conv[1, 1] = np.eye(channels)  # centre tap: identity (inputs are >= 0, so the ReLU keeps them)
    head.conv_0.set_weights([conv, np.zeros([channels], np.float32)])
    obj_kernel = np.zeros([1, 1, channels, num_anchors], np.float32)
    obj_kernel[0, 0, 0, :] = 1.0
    head.objectness.set_weights([obj_kernel, 100.0 * np.arange(num_anchors, dtype=np.float32)])
    kernel = np.zeros([1, 1, channels, 4 * num_anchors], np.float32)
    bias = np.zeros([4 * num_anchors], np.float32)
    for k in range(num_anchors):
        kernel[0, 0, 0, 4 * k + 0] = 1.0  # dy <- feature 0
        kernel[0, 0, 1, 4 * k + 1] = 1.0  # dx <- feature 1
        bias[4 * k + 2] = k  # dh <- anchor index
        kernel[0, 0, 2, 4 * k + 3] = 1.0  # dw <- feature 2
    head.deltas.set_weights([kernel, bias])
    return head


def test_rpn_head_outputs_line_up_with_the_anchors():
    """Row n of the concatenated head outputs must describe anchor row n of ``concat_levels(anchors)``.

    Each level's feature map holds at (i, j): the cell centre y, the cell centre x and the level's anchor
    size; the head echoes them into its outputs along with the anchor index k. So for every anchor the
    outputs must give back its own centre, size and aspect ratio.
    """
    image_size, min_level, max_level = 64, 3, 5
    anchors = anchor_ops.generate_anchors(image_size, min_level, max_level, SIZES, RATIOS)
    channels = 4
    features = {}
    for level, size in zip(range(min_level, max_level + 1), SIZES):
        stride, grid = 2**level, image_size // 2**level
        centres = (np.arange(grid) + 0.5) * stride
        fmap = np.zeros([2, grid, grid, channels], np.float32)
        fmap[..., 0] = centres[:, None]
        fmap[..., 1] = centres[None, :]
        fmap[..., 2] = size
        fmap[1] *= 2.0  # second image: different values, so batch rows cannot be mixed up unnoticed
        features[level] = tf.constant(fmap)
    head = _rpn_head_that_echoes_its_input(len(RATIOS), channels)
    logits, deltas = head(features)
    for level in features:
        assert logits[level].shape == (2, anchors[level].shape[0])
        assert deltas[level].shape == (2, anchors[level].shape[0], 4)
    boxes = anchor_ops.concat_levels(anchors).numpy()
    logits = anchor_ops.concat_levels(logits, axis=1).numpy()
    deltas = anchor_ops.concat_levels(deltas, axis=1).numpy()
    cy, cx = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    h, w = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    for b, factor in enumerate((1.0, 2.0)):
        np.testing.assert_allclose(deltas[b, :, 0], factor * cy, atol=1e-4)
        np.testing.assert_allclose(deltas[b, :, 1], factor * cx, atol=1e-4)
        np.testing.assert_allclose(deltas[b, :, 3], factor * np.sqrt(h * w), rtol=1e-5)
        k = deltas[b, :, 2].round().astype(int)
        np.testing.assert_allclose(h / w, np.take(RATIOS, k), rtol=1e-5)
        np.testing.assert_allclose(logits[b], 100.0 * k + factor * cy, atol=1e-3)


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
