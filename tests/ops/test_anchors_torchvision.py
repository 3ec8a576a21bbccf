"""ops/anchors.py in torchvision mode (rounded cell anchors, offset 0, stride = input // grid) against
torchvision's AnchorGenerator itself, on square and non-square padded inputs."""

import numpy as np
import pytest
import tensorflow as tf

from mrcnn_tf2.ops import anchors as anchor_ops
from tests.torch_import import import_torch

torch, _ = import_torch()
anchor_utils = pytest.importorskip("torchvision.models.detection.anchor_utils")
image_list_lib = pytest.importorskip("torchvision.models.detection.image_list")

SIZES = (32.0, 64.0, 128.0, 256.0, 512.0)
RATIOS = (0.5, 1.0, 2.0)


def _grid_sizes(h: int, w: int) -> list[tuple[int, int]]:
    """P2..P5 of an input padded to 32, then P6 = max_pool(kernel 1, stride 2) of P5 (odd sizes round up)."""
    sizes = [(h // s, w // s) for s in (4, 8, 16, 32)]
    p5 = sizes[-1]
    return sizes + [((p5[0] - 1) // 2 + 1, (p5[1] - 1) // 2 + 1)]


def _torchvision_anchors(h: int, w: int) -> list[np.ndarray]:
    generator = anchor_utils.AnchorGenerator(sizes=tuple((int(s),) for s in SIZES), aspect_ratios=(RATIOS,) * 5)
    images = image_list_lib.ImageList(torch.zeros(1, 3, h, w), [(h, w)])
    grids = _grid_sizes(h, w)
    features = [torch.zeros(1, 1, gh, gw) for gh, gw in grids]
    flat = generator(images, features)[0].numpy()  # [N, 4] x1y1x2y2, levels concatenated
    counts = [gh * gw * len(RATIOS) for gh, gw in grids]
    return np.split(flat, np.cumsum(counts)[:-1])


@pytest.mark.parametrize("h, w", [(800, 1216), (1216, 800), (256, 256), (224, 320), (800, 800)])
def test_grid_anchors_equal_torchvision(h, w):
    grids = _grid_sizes(h, w)
    ours = anchor_ops.grid_anchors(tf.constant([h, w]), {lv: tf.constant(g) for lv, g in zip(range(2, 7), grids)},
                                   SIZES, RATIOS, offset=0.0, rounded=True)
    for level, expected_xyxy in zip(range(2, 7), _torchvision_anchors(h, w)):
        expected = expected_xyxy[:, [1, 0, 3, 2]]  # -> y1x1y2x2
        got = ours[level].numpy()
        assert got.shape == expected.shape, level
        np.testing.assert_array_equal(got, expected)  # integers: exact


def test_p6_stride_is_integer_division_on_odd_grids():
    # 800 x 1216: P5 25 x 38 -> P6 13 x 19; torchvision's stride is 800 // 13 = 61 and 1216 // 19 = 64.
    grids = _grid_sizes(800, 1216)
    assert grids[-1] == (13, 19)
    p6 = anchor_ops.grid_anchors(tf.constant([800, 1216]), {6: tf.constant(grids[-1])}, (512.0,), RATIOS,
                                 offset=0.0, rounded=True)[6].numpy().reshape(13, 19, 3, 4)
    np.testing.assert_array_equal(p6[1, 1, 1] - p6[0, 0, 1], [61, 64, 61, 64])


def test_square_constants_equal_graph_anchors():
    """Training (static constants on the S x S canvas) and inference (on-graph) anchors agree."""
    for offset, rounded in ((0.5, False), (0.0, True)):
        static = anchor_ops.generate_anchors_numpy(256, 2, 6, SIZES, RATIOS, offset=offset, rounded=rounded)
        grids = {lv: tf.constant([256 // 2**lv] * 2) for lv in range(2, 7)}
        graph = anchor_ops.grid_anchors(tf.constant([256, 256]), grids, SIZES, RATIOS, offset=offset, rounded=rounded)
        for level in range(2, 7):
            np.testing.assert_array_equal(graph[level].numpy(), static[level])


def test_rounded_cell_anchors_pinned():
    # torchvision: round([-w/2, -h/2, w/2, h/2]) with h = 32 * sqrt(0.5) = 22.63, w = 45.25 (ratio h/w = 0.5).
    np.testing.assert_array_equal(anchor_ops.cell_anchors(32.0, RATIOS, rounded=True),
                                  [[-11, -23, 11, 23], [-16, -16, 16, 16], [-23, -11, 23, 11]])
