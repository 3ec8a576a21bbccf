"""Tests for mrcnn_tf2.ops.winograd against a plain NumPy convolution written here, in float64."""

import numpy as np
import pytest
import tensorflow as tf

from mrcnn_tf2.ops import winograd

# The float32 error of F(4x4, 3x3) is about 2e-5 of the output's max |value| (module docstring); a wrong
# transform matrix, tile offset or padding gives O(1).
TOL = 1e-4


def _np_conv3x3_same(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Cross-correlation, stride 1, zero padding 1, in float64: x [B, H, W, C], kernel [3, 3, C, K]."""
    b, h, w, _ = x.shape
    padded = np.pad(x.astype(np.float64), [(0, 0), (1, 1), (1, 1), (0, 0)])
    out = np.zeros((b, h, w, kernel.shape[-1]))
    for dy in range(3):
        for dx in range(3):
            out += padded[:, dy:dy + h, dx:dx + w, :] @ kernel[dy, dx].astype(np.float64)
    return out


def _relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def test_matrices_compute_a_1d_correlation():
    bt, g, at = winograd.winograd_matrices()
    rng = np.random.default_rng(0)
    for _ in range(5):
        d, taps = rng.normal(size=6), rng.normal(size=3)
        expected = np.array([d[i:i + 3] @ taps for i in range(4)])
        np.testing.assert_allclose(at @ ((g @ taps) * (bt @ d)), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(1, 8, 8, 16), (2, 7, 9, 12), (1, 1, 1, 4), (3, 13, 6, 5), (1, 2, 21, 8)])
def test_equals_direct_convolution(shape):
    rng = np.random.default_rng(sum(shape))
    x = rng.normal(size=shape).astype(np.float32)
    kernel = rng.normal(size=(3, 3, shape[-1], 7)).astype(np.float32)
    ours = winograd.conv3x3_winograd(tf.constant(x), tf.constant(kernel)).numpy()
    ref = _np_conv3x3_same(x, kernel)
    assert ours.shape == ref.shape
    assert _relative_error(ours, ref) < TOL


def test_256_channels_on_a_p3_sized_map_is_as_accurate_as_stated():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1, 25, 34, 256)).astype(np.float32)
    kernel = (rng.normal(size=(3, 3, 256, 32)) / 48).astype(np.float32)
    ref = _np_conv3x3_same(x, kernel)
    ours = winograd.conv3x3_winograd(tf.constant(x), tf.constant(kernel)).numpy()
    direct = tf.nn.conv2d(x, kernel, 1, "SAME").numpy()
    assert _relative_error(direct, ref) < 1e-5
    assert _relative_error(ours, ref) < 5e-5


def test_unknown_sizes_in_a_graph():
    f = tf.function(winograd.conv3x3_winograd,
                    input_signature=[tf.TensorSpec([None, None, None, 8]), tf.TensorSpec([3, 3, 8, 4])])
    rng = np.random.default_rng(1)
    kernel = rng.normal(size=(3, 3, 8, 4)).astype(np.float32)
    for shape in [(2, 11, 6, 8), (1, 4, 4, 8), (1, 5, 17, 8)]:
        x = rng.normal(size=shape).astype(np.float32)
        assert _relative_error(f(x, kernel).numpy(), _np_conv3x3_same(x, kernel)) < TOL


def test_when_it_applies():
    assert winograd.winograd_applies(256, 200, 272) is True
    assert winograd.winograd_applies(256, 50, 68) is True  # 3400 pixels
    assert winograd.winograd_applies(256, 25, 34) is False  # 850 pixels: direct is faster
    assert winograd.winograd_applies(128, 200, 272) is False  # few channels: no gain
    assert winograd.winograd_applies(512, 7, 7) is False  # ROI heads
    assert winograd.winograd_applies(256, None, 34) is None  # decided at run time
    assert winograd.winograd_applies(256, 200, 272, min_pixels=0) is False  # off


@pytest.mark.parametrize("size", [7, 5, 1, 8, 3, 14])
def test_pixel_major_form_equals_direct_convolution(size):
    rng = np.random.default_rng(size)
    x = rng.normal(size=(6, size, size, 16)).astype(np.float32)
    kernel = rng.normal(size=(3, 3, 16, 8)).astype(np.float32)
    pixel_major = np.ascontiguousarray(x.reshape(6, size * size, 16).transpose(1, 0, 2))  # [P*P, N, C]
    ours = winograd.conv3x3_winograd_pixel_major(tf.constant(pixel_major), tf.constant(kernel), size).numpy()
    assert ours.shape == (size * size, 6, 8)
    ours = ours.transpose(1, 0, 2).reshape(6, size, size, 8)
    assert _relative_error(ours, _np_conv3x3_same(x, kernel)) < TOL
