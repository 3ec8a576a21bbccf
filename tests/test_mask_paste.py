"""mrcnn_tf2.mask_paste: torchvision's pasting rule against torchvision's paste_masks_in_image itself.

Tolerance 1e-5: the same bilinear taps, with the resize scale computed in float64 here and in float32
(or float64) by torch.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from mrcnn_tf2 import mask_paste
from tests.torch_import import import_torch

torch, torchvision = import_torch()
from torchvision.models.detection.roi_heads import paste_masks_in_image  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _boxes(rng: np.random.Generator, num: int, height: int, width: int) -> np.ndarray:
    """[num, 4] y1x1y2x2 with fractional corners: small and large, some partly outside the image.

    Every box overlaps the image (detections are clipped to it): torchvision's slicing misplaces boxes that
    lie wholly above or left of the image (negative slice ends), where ours pastes nothing.
    """
    size = rng.uniform(0.3, 1.3, size=(num, 2)) * [height, width]
    start = rng.uniform(-0.3, 1.0, size=(num, 2)) * [height, width]
    tiny = num // 4  # a few tiny boxes (the resize then down-samples)
    size[:tiny] = rng.uniform(0.2, 4.0, size=(tiny, 2))
    start[:tiny] = rng.uniform(0.0, 1.0, size=(tiny, 2)) * [height, width]
    return np.concatenate([start, start + size], axis=1).astype(np.float32)


@pytest.mark.parametrize("mask_size", [28, 5])
def test_matches_torchvision_paste_masks_in_image(mask_size):
    rng = np.random.default_rng(mask_size)
    height, width, num = 45, 61, 40
    masks = rng.uniform(0, 1, size=(num, mask_size, mask_size)).astype(np.float32)
    boxes = _boxes(rng, num, height, width)
    ours = mask_paste.paste_masks(masks, boxes, height, width, mode="torchvision")
    theirs = paste_masks_in_image(torch.from_numpy(masks)[:, None], torch.from_numpy(boxes[:, [1, 0, 3, 2]]),
                                  (height, width), padding=1)[:, 0].numpy()
    assert ours.shape == theirs.shape == (num, height, width) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    # The boxes that cross the border are really cut, and the rule differs from the "box" rule.
    assert (boxes[:, 0] < 0).any() and (boxes[:, 3] > width).any()
    assert np.abs(ours - mask_paste.paste_masks(masks, boxes, height, width, mode="box")).max() > 0.1


def test_empty_and_bad_mode():
    assert mask_paste.paste_masks_torchvision(np.zeros([0, 28, 28]), np.zeros([0, 4]), 4, 5).shape == (0, 4, 5)
    with pytest.raises(ValueError, match="model.detection.paste_mode"):
        mask_paste.paste_masks(np.zeros([1, 4, 4]), np.zeros([1, 4]), 4, 4, mode="nearest")


def test_client_modules_do_not_import_tensorflow():
    code = ("import sys, mrcnn_tf2.export.masks, mrcnn_tf2.mask_paste, mrcnn_tf2.evaluation; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'")
    env = dict(os.environ, PYTHONPATH=REPO)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=env)
