"""ops.roi_align against torchvision itself: roi_align (aligned=False / True), LevelMapper, MultiScaleRoIAlign.

torch is NCHW with x1y1x2y2 boxes; our features are NHWC with y1x1y2x2 boxes, so the tests transpose.
Tolerance 1e-5: both sides interpolate in float32; they differ only by the order of the additions.
"""

import numpy as np
import pytest
import tensorflow as tf

from mrcnn_tf2.ops import roi_align
from tests.torch_import import import_torch

torch, torchvision = import_torch()
from torchvision.ops import MultiScaleRoIAlign  # noqa: E402
from torchvision.ops import roi_align as tv_roi_align  # noqa: E402
from torchvision.ops.poolers import LevelMapper  # noqa: E402


def _random_boxes(rng: np.random.Generator, num: int, height: float, width: float) -> np.ndarray:
    """[num, 4] y1x1y2x2: tiny (under one cell of P2), medium, large and partly outside the image."""
    sides = np.exp(rng.uniform(np.log(0.5), np.log(1.2 * max(height, width)), size=(num, 2)))
    centres = rng.uniform([-0.1 * height, -0.1 * width], [1.1 * height, 1.1 * width], size=(num, 2))
    y1x1 = centres - sides / 2
    return np.concatenate([y1x1, y1x1 + sides], axis=1).astype(np.float32)


def _yxyx_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    return boxes[..., [1, 0, 3, 2]]


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("output_size", [7, 14])
def test_single_level_matches_torchvision_roi_align(aligned, output_size):
    rng = np.random.default_rng(0)
    stride, height, width = 8, 9, 13  # odd feature sizes exercise the far border
    features = rng.normal(size=(2, height, width, 3)).astype(np.float32)
    boxes = np.stack([_random_boxes(rng, 40, height * stride, width * stride) for _ in range(2)])
    ours = roi_align.multilevel_roi_align({3: tf.constant(features)}, tf.constant(boxes), output_size,  # 2**3
                                          sampling_ratio=2, aligned=aligned).numpy()
    rois = [torch.from_numpy(_yxyx_to_xyxy(b)) for b in boxes]
    theirs = tv_roi_align(torch.from_numpy(features).permute(0, 3, 1, 2), rois, output_size,
                          spatial_scale=1.0 / stride, sampling_ratio=2, aligned=aligned)
    theirs = theirs.permute(0, 2, 3, 1).numpy().reshape(ours.shape)
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-5)


def test_assign_levels_matches_torchvision_level_mapper():
    rng = np.random.default_rng(1)
    # Sides on and around the level boundaries (56, 112, 224, 448 px) and random ones, incl. zero area.
    sides = np.array([56.0, 112.0, 224.0, 448.0, 896.0, 111.99, 112.01, 447.99, 0.0, 1.0], np.float32)
    sides = np.concatenate([sides, rng.uniform(1.0, 900.0, 200).astype(np.float32)])
    aspect = np.concatenate([np.ones(10, np.float32), rng.uniform(0.3, 3.0, 200).astype(np.float32)])
    h, w = sides * np.sqrt(aspect), sides / np.sqrt(aspect)
    h[:10], w[:10] = sides[:10], sides[:10]
    y1 = rng.uniform(0, 100, sides.shape).astype(np.float32)
    x1 = rng.uniform(0, 100, sides.shape).astype(np.float32)
    boxes = np.stack([y1, x1, y1 + h, x1 + w], axis=-1).astype(np.float32)
    ours = roi_align.assign_levels(tf.constant(boxes[None]), 2, 5, eps=1e-6).numpy()[0]
    mapper = LevelMapper(2, 5, canonical_scale=224, canonical_level=4, eps=1e-6)
    theirs = mapper([torch.from_numpy(_yxyx_to_xyxy(boxes))]).numpy() + 2
    np.testing.assert_array_equal(ours, theirs)
    assert set(ours.tolist()) == {2, 3, 4, 5}


@pytest.mark.parametrize("output_size", [7, 14])
def test_multilevel_matches_torchvision_multiscale_roi_align(output_size):
    rng = np.random.default_rng(2)
    height, width = 96, 160  # padded non-square input; the real image is smaller in one image
    image_sizes = [(96, 160), (90, 150)]
    features = {level: rng.normal(size=(2, height >> level, width >> level, 4)).astype(np.float32)
                for level in range(2, 6)}
    boxes = np.stack([_random_boxes(rng, 60, h, w) for h, w in image_sizes])
    ours = roi_align.multilevel_roi_align({k: tf.constant(v) for k, v in features.items()}, tf.constant(boxes),
                                          output_size, sampling_ratio=2, canonical_size=40.0,
                                          aligned=False, level_eps=1e-6).numpy()
    # A small canonical scale spreads the boxes of this small input over all four levels.
    pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=output_size, sampling_ratio=2, canonical_scale=40)
    torch_features = {str(level - 2): torch.from_numpy(v).permute(0, 3, 1, 2) for level, v in features.items()}
    theirs = pooler(torch_features, [torch.from_numpy(_yxyx_to_xyxy(b)) for b in boxes], image_sizes)
    theirs = theirs.permute(0, 2, 3, 1).numpy().reshape(ours.shape)
    # Every level is used, so the comparison covers the level assignment too.
    levels = roi_align.assign_levels(tf.constant(boxes), 2, 5, canonical_size=40.0, eps=1e-6).numpy()
    assert set(levels.ravel().tolist()) == {2, 3, 4, 5}
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=1e-5)
