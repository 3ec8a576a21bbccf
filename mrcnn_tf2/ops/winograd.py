"""3x3 convolution by Winograd's minimal filtering F(4x4, 3x3): 4x fewer multiplications than direct.

A 3x3, stride-1, "same" convolution computes each 4 x 4 block of outputs from a 6 x 6 input tile.
Winograd's algorithm (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016) writes
it as ``Y = A^T [(G g G^T) * (B^T d B)] A`` per tile and channel pair, where ``*`` is elementwise over
the 6 x 6 "transform domain": the channel sum becomes 36 independent ``[tiles, C] @ [C, K]`` matrix
products, 36 multiplications per 16 outputs instead of 144. The transforms are linear, cost O(C) per
tile, and run here as plain TensorFlow ops (pad, transpose, a 1-channel conv with a fixed 6 x 6 filter,
batched matmuls), so the graph needs no custom op and exports to a SavedModel like any other.

When it pays (measured 2026-12-05 on this project's 2-core AVX-512 CPU, float32, batch 1, see
``WINOGRAD_MIN_CHANNELS``): a 256 -> 256 convolution on a 200 x 272 map (P2 of an 800 x 1088 input)
takes 123 ms instead of 263 ms, on 100 x 136 31 ms instead of 63 ms, on 50 x 68 10 ms instead of 15 ms.
It does not pay on small maps (the 7 x 7 and 14 x 14 ROI heads: the tiles expand the data 2.25-3x and
the transforms are memory-bound) nor with few channels (128 channels: equal), nor on GPUs, whose
convolution libraries pick their own algorithms (Winograd among them).

Accuracy: the transforms' constants (1/4, 1/6, 1/24, powers of 2 up to 8) cost float32 some bits: the
largest error is about 2e-5 of the output's max |value|, against 2e-6 for a direct float32
convolution (both measured against float64). Not for bfloat16 or float16, where it would be ~1e-2.
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

__all__ = ["WINOGRAD_MIN_CHANNELS", "WINOGRAD_MIN_PIXELS", "WINOGRAD_MAX_ROI_SIZE", "winograd_applies",
           "conv3x3_winograd", "conv3x3_winograd_pixel_major", "winograd_matrices"]

# Below these the direct convolution is as fast or faster (measured, see the module docstring).
WINOGRAD_MIN_CHANNELS = 256
WINOGRAD_MIN_PIXELS = 3000
# ROI maps (many small images) take the pixel-major form up to this side: measured 1.57x faster at 7 x 7
# (1000 ROIs, 4 convolutions: 729 -> 464 ms), 0.94x at 14 x 14 (the mask head: its transforms cost more).
WINOGRAD_MAX_ROI_SIZE = 8

_M = 4  # output tile size
_N = _M + 2  # input tile size


def winograd_matrices() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B^T [6, 6], G [6, 3], A^T [4, 6]) of F(4, 3) with interpolation points 0, 1, -1, 2, -2, infinity.

    In one dimension, the correlation ``y[i] = sum_k d[i + k] g[k]`` (i < 4, k < 3) of a 6-sample input
    ``d`` with a 3-tap filter ``g`` is ``y = A^T ((G g) * (B^T d))``.
    """
    bt = np.array([[4, 0, -5, 0, 1, 0],
                   [0, -4, -4, 1, 1, 0],
                   [0, 4, -4, -1, 1, 0],
                   [0, -2, -1, 2, 1, 0],
                   [0, 2, -1, -2, 1, 0],
                   [0, 4, 0, -5, 0, 1]], np.float64)
    g = np.array([[1 / 4, 0, 0],
                  [-1 / 6, -1 / 6, -1 / 6],
                  [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6],
                  [1 / 24, -1 / 12, 1 / 6],
                  [0, 0, 1]], np.float64)
    at = np.array([[1, 1, 1, 1, 1, 0],
                   [0, 1, -1, 2, -2, 0],
                   [0, 1, 1, 4, 4, 0],
                   [0, 1, -1, 8, -8, 1]], np.float64)
    return bt, g, at


@functools.cache
def _filter_matrix() -> np.ndarray:
    """kron(G, G) ``[36, 9]`` float32: the filter transform of a flattened 3 x 3 kernel."""
    _, g, _ = winograd_matrices()
    return np.kron(g, g).astype(np.float32)


def winograd_applies(in_channels: int | None, height: int | None, width: int | None,
                     min_pixels: int = WINOGRAD_MIN_PIXELS) -> bool | None:
    """Whether a 3x3 stride-1 float32 convolution of this size is faster by Winograd.

    Returns True or False, or None when the map size is not known statically (decide at run time).
    """
    if in_channels is None or in_channels < WINOGRAD_MIN_CHANNELS or min_pixels <= 0:
        return False
    if height is None or width is None:
        return None
    return height * width >= min_pixels


def conv3x3_winograd(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """``tf.nn.conv2d(x, kernel, strides=1, padding="SAME")`` computed by Winograd F(4x4, 3x3).

    Args:
        x: ``[B, H, W, C]`` float32, channels last; any H, W >= 1 (static or not).
        kernel: ``[3, 3, C, K]`` float32, the layout of ``tf.nn.conv2d`` and ``keras.layers.Conv2D``
            (cross-correlation, as both compute).

    Returns:
        ``[B, H, W, K]`` float32: zero padding of 1 on each side, as "same" pads a 3x3 kernel.
    """
    bt, _, at = winograd_matrices()
    channels, filters = x.shape[-1], kernel.shape[-1]
    shape = tf.shape(x)
    batch, height, width = shape[0], shape[1], shape[2]
    tiles_h = (height + _M - 1) // _M
    tiles_w = (width + _M - 1) // _M
    # Input transform B^T d B of every tile and channel, as a convolution of each channel (moved into
    # the batch) with the 36 fixed 6 x 6 filters kron(B^T, B^T) at stride 4: [C * B, tiles_h, tiles_w, 36].
    # The 6 x 6 tiles cover every output with zero padding of 1 before ("same") and the rest after; when H
    # and W are multiples of 4 that is the convolution's own "SAME" padding (1 and 1), which saves a pass.
    input_filters = np.kron(bt, bt).T.reshape(_N, _N, 1, _N * _N).astype(np.float32)
    by_channel = tf.reshape(tf.transpose(x, [3, 0, 1, 2]), [channels * batch, height, width, 1])
    aligned = x.shape[1] is not None and x.shape[2] is not None and x.shape[1] % _M == 0 and x.shape[2] % _M == 0
    if aligned:
        v = tf.nn.conv2d(by_channel, input_filters, strides=[1, _M, _M, 1], padding="SAME")
    else:
        padded = tf.pad(by_channel, [[0, 0], [1, tiles_h * _M + 1 - height], [1, tiles_w * _M + 1 - width], [0, 0]])
        v = tf.nn.conv2d(padded, input_filters, strides=[1, _M, _M, 1], padding="VALID")
    v = tf.transpose(tf.reshape(v, [channels, -1, _N * _N]), [2, 0, 1])  # [36, C, T], T = B * tiles

    # Filter transform G g G^T of every (input, output) channel pair, as one matmul: [36, C, K].
    u = tf.matmul(_filter_matrix(), tf.reshape(kernel, [9, -1]))
    u = tf.reshape(u, [_N * _N, channels, filters])

    m = tf.matmul(v, u, adjoint_a=True)  # [36, T, K]: the channel sums, one matmul per tile position

    # Output transform A^T m A, then the 4 x 4 blocks back into the image.
    y = tf.matmul(np.kron(at, at).astype(np.float32), tf.reshape(m, [_N * _N, -1]))  # [16, T * K]
    y = tf.reshape(y, [_M, _M, batch, tiles_h, tiles_w, filters])
    y = tf.transpose(y, [2, 3, 0, 4, 1, 5])
    y = tf.reshape(y, [batch, tiles_h * _M, tiles_w * _M, filters])
    return y if aligned else y[:, :height, :width]


@functools.cache
def _pixel_major_transforms(size: int) -> tuple[np.ndarray, np.ndarray]:
    """The input and output transforms of a whole ``size x size`` map as two matrices.

    Returns (t_in ``[36 * tiles**2, size**2]``, t_out ``[size**2, 36 * tiles**2]``) float32, with
    ``tiles = ceil(size / 4)`` per side. Row ``(a, b, ty, tx)`` of t_in is B^T d B at tile position (a, b)
    of tile (ty, tx), the "same" zero padding folded in (taps outside the map are dropped); t_out puts the
    4 x 4 outputs of every tile back and drops those outside the map.
    """
    bt, _, at = winograd_matrices()
    tiles = -(-size // _M)
    t_in = np.zeros((tiles, _N, size))  # [tile, a, pixel] along one axis
    t_out = np.zeros((size, tiles, _N))  # [pixel, tile, a]
    for t in range(tiles):
        for i in range(_N):
            p = _M * t - 1 + i  # input row i of tile t, with the 1-pixel "same" padding before
            if 0 <= p < size:
                t_in[t, :, p] += bt[:, i]
        for q in range(_M):
            if _M * t + q < size:
                t_out[_M * t + q, t, :] += at[q]
    t_in_2d = np.einsum("sai,tbj->abstij", t_in, t_in).reshape(_N * _N * tiles * tiles, size * size)
    t_out_2d = np.einsum("ysa,xtb->yxabst", t_out, t_out).reshape(size * size, _N * _N * tiles * tiles)
    return t_in_2d.astype(np.float32), t_out_2d.astype(np.float32)


def conv3x3_winograd_pixel_major(x: tf.Tensor, kernel: tf.Tensor, size: int) -> tf.Tensor:
    """The 3x3 "same" convolution of many small maps held pixel-major, by Winograd F(4x4, 3x3).

    For the ROI heads (1000 maps of 7 x 7): a 1-channel convolution per tile (``conv3x3_winograd``) runs
    slowly on tiny maps, so here each map's input and output transforms are two fixed matrices applied to
    the pixel axis, which comes first: no transposes between the convolutions of a head.

    Args:
        x: ``[size * size, N, C]`` float32: pixel (row-major ``y * size + x``), map, channel.
        kernel: ``[3, 3, C, K]`` float32 (``tf.nn.conv2d`` layout).
        size: the maps' side.

    Returns:
        ``[size * size, N, K]`` float32, the same layout.
    """
    t_in, t_out = _pixel_major_transforms(size)
    channels, filters = x.shape[-1], kernel.shape[-1]
    positions = _N * _N
    v = tf.matmul(t_in, tf.reshape(x, [size * size, -1]))  # [(a, b, tile), N * C]
    v = tf.reshape(v, [positions, -1, channels])  # [36, tiles * N, C]
    u = tf.matmul(_filter_matrix(), tf.reshape(kernel, [9, -1]))  # G g G^T: [36, C * K]
    m = tf.matmul(v, tf.reshape(u, [positions, channels, filters]))  # [36, tiles * N, K]
    y = tf.matmul(t_out, tf.reshape(m, [t_out.shape[1], -1]))  # [size * size, N * K]
    return tf.reshape(y, [size * size, -1, filters])
