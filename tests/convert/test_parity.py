"""Stage-by-stage parity with torchvision itself, for both variants, through the importer's mapping.

Setup (tests/convert/harness.py): random-init torchvision Mask R-CNNs with batch norms calibrated on an
image and spread score layers, converted into the ``torchvision_r50_fpn`` / ``_v2`` presets at short side
256 / long side 384 on both sides. Two inputs: a square 256 x 256 image (no resize) and a non-square
192 x 256 photo-like image, which each side preprocesses itself (resize to 256 x 341, pad to 256 x 352).

Tolerances and why:
- preprocessing 1e-5 of the value range: the same bilinear formula in float32 (TF and torch round
  differently in the last bits);
- backbone C2-C5, FPN P2-P6, RPN objectness and deltas: 5e-4 (``STAGE_TOL``) of each tensor's max |value|:
  float32 convolutions summed in another order (direct convolutions: about 1e-6 at C2 growing to about 1e-5
  at P6), and on CPUs the Winograd convolutions of ``eval.winograd`` (ResNet's conv4, the FPN and RPN on P2,
  v2's box head), about 2e-5 each: measured 2026-12-05 up to 6e-5 (C2-C5, P2-P6) and 1.5e-4 (v2 objectness);
  far below what a layout error gives, e.g. a wrong delta order or flatten order is O(1);
- proposals: sets, matched by IoU (>= 0.99) in both directions for >= 99% of them (the 1000 kept
  boxes; a few can swap at the top-k or NMS boundaries, where scores differ by float noise);
- box head on torchvision's own proposals: ``STAGE_TOL`` of the max |value| (ROIAlign in float32; measured up
  to 6e-5 with the Winograd box head of v2);
- final detections: every torchvision detection with score >= 0.1 has one of ours with the same class,
  IoU >= 0.99 and a score within 1e-3 (near the 0.05 threshold and the 100-detection cut, detections
  can enter or leave by float noise);
- mask probabilities of the same boxes: 1e-3 absolute (measured up to 1.6e-4, v2);
- pasted masks: torchvision's 28 x 28 masks pasted by our NumPy paste equal its own paste to 1e-5; our
  whole chain (our masks at our boxes) agrees to a mean absolute difference < 1e-3 and, thresholded at 0.5,
  to an IoU >= 0.97 pooled over all masks (not per mask: a box corner 1e-4 px away can move one truncated
  pixel row of the paste, and a mask of a few pixels near probability 0.5 can flip most of them).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.convert import harness

VARIANTS = ("v1", "v2")
INPUTS = {"square": (256, 256, 0), "photo": (192, 256, 1)}
STAGE_TOL = 5e-4

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=[(v, i) for v in VARIANTS for i in INPUTS], ids=lambda p: f"{p[0]}-{p[1]}")
def stages(request):
    variant, name = request.param
    height, width, seed = INPUTS[name]
    theirs = harness.torch_stages(variant, height, width, seed)
    ours = harness.our_stages(variant, height, width, seed)
    return variant, name, ours, theirs


def test_preprocessing(stages):
    _, name, ours, theirs = stages
    assert ours.image.shape == theirs.image.shape  # non-square: both 256 x 352 (341 padded to 32)
    np.testing.assert_allclose(ours.image_info[1], theirs.image_size)  # scaled (h, w) before padding
    assert harness.relative_error(ours.image, theirs.image) < 1e-5


def test_backbone_and_fpn(stages):
    _, _, ours, theirs = stages
    errors = [harness.relative_error(a, b) for a, b in zip(ours.body + ours.fpn, theirs.body + theirs.fpn)]
    print("C2-C5, P2-P6 relative errors:", " ".join(f"{e:.1e}" for e in errors))  # shown by pytest -rA
    assert len(errors) == 9  # C2-C5, P2-P6
    assert max(errors) < STAGE_TOL, errors


def test_rpn_head(stages):
    _, _, ours, theirs = stages
    errors = [harness.relative_error(a, b) for a, b in zip(ours.objectness + ours.deltas,
                                                            theirs.objectness + theirs.deltas)]
    assert len(errors) == 10
    assert max(errors) < STAGE_TOL, errors


def test_proposals(stages):
    _, _, ours, theirs = stages
    assert len(ours.proposals) == len(theirs.proposals)
    iou = harness.box_iou(theirs.proposals, ours.proposals)
    assert (iou.max(axis=1) >= 0.99).mean() >= 0.99
    assert (iou.max(axis=0) >= 0.99).mean() >= 0.99


def test_box_head_on_torchvision_proposals(stages):
    _, _, ours, theirs = stages
    assert harness.relative_error(ours.class_logits, theirs.class_logits) < STAGE_TOL
    assert harness.relative_error(ours.box_deltas, theirs.box_deltas) < STAGE_TOL


def _matches(ours: dict, theirs) -> tuple[np.ndarray, np.ndarray]:
    """For each torchvision detection: the index of our same-class detection with the highest IoU, and that IoU."""
    iou = harness.box_iou(theirs.boxes, ours["detection_boxes"])
    iou = np.where(theirs.labels[:, None] == ours["detection_classes"][None, :], iou, 0.0)
    return iou.argmax(axis=1), iou.max(axis=1)


def test_detections(stages):
    _, _, ours, theirs = stages
    detections = ours.detections
    assert len(theirs.boxes) > 10  # the spread class scores give many detections above 0.05
    assert abs(len(detections["detection_boxes"]) - len(theirs.boxes)) <= max(2, len(theirs.boxes) // 20)
    best, iou = _matches(detections, theirs)
    confident = theirs.scores >= 0.1
    assert confident.sum() > 5
    assert (iou[confident] >= 0.99).all()
    np.testing.assert_allclose(detections["detection_scores"][best[confident]], theirs.scores[confident], atol=1e-3)


def test_masks_on_the_same_boxes(stages):
    _, _, ours, theirs = stages
    assert ours.masks_on_torch_boxes.shape == theirs.masks.shape
    assert np.abs(ours.masks_on_torch_boxes - theirs.masks).max() < 1e-3


def test_pasted_masks(stages):
    from mrcnn_tf2.mask_paste import paste_masks

    _, name, ours, theirs = stages
    height, width, _ = INPUTS[name]
    final = theirs.final
    torch_boxes = final["boxes"][:, [1, 0, 3, 2]]  # original-image pixels, yxyx
    pasted = paste_masks(theirs.masks, torch_boxes, height, width, mode="torchvision")
    assert np.abs(pasted - final["masks"][:, 0]).max() < 1e-5

    # Our whole chain: our masks at our boxes, mapped to the original image as evaluation does.
    detections = ours.detections
    best, iou = _matches(detections, theirs)
    keep = np.flatnonzero((theirs.scores >= 0.1) & (iou >= 0.99))
    assert len(keep) > 5
    scale = np.tile(ours.image_info[2], 2)  # (y_scale, x_scale, y_scale, x_scale)
    our_boxes = detections["detection_boxes"][best[keep]] / scale
    our_pasted = paste_masks(detections["detection_masks"][best[keep]], our_boxes, height, width, mode="torchvision")
    a, b = our_pasted >= 0.5, final["masks"][keep, 0] >= 0.5
    # Pooled over all masks: a mask of a few pixels whose probabilities sit at 0.5 can flip most of them.
    assert (a & b).sum() / max((a | b).sum(), 1) >= 0.97
    assert np.abs(our_pasted - final["masks"][keep, 0]).mean() < 1e-3
