"""Training parity with torchvision (v1 and v2): the five losses and one SGD step from the same weights and batch.

Both sides start from the calibrated random weights of the stage parity tests (harness.py), the torch side
built as torchvision builds a trainable model of the variant, with a frozen ResNet: FrozenBatchNorm2d (eps 0
for v1 as the COCO file sets it, 1e-5 for v2) and ``trainable_backbone_layers=3`` (our presets:
``model.norm="frozen_bn"``, ``model.train_layers="3+"``). v2 adds what differs there: a 2-conv RPN head,
BatchNorm2d in the FPN and the 4conv1fc box and mask heads (trainable: batch statistics on both sides).
torchvision's own v2 builder puts a trainable BatchNorm2d in the ResNet; our preset freezes it, so the
torch side is built with FrozenBatchNorm2d there, as for v1.

Sampling is made deterministic by taking everything: every labelled anchor in the RPN loss (torchvision
``rpn_batch_size_per_image=10**6``; ours ``model.rpn.anchors_per_image`` = all anchors,
``positive_fraction=1``) and every proposal plus the ground truth in the box losses
(``box_batch_size_per_image=10**6``; ours ``model.roi.rois_per_image`` = proposals + G). For v2,
``POST_NMS`` is below the number of proposals that survive NMS, so both sides keep exactly ``POST_NMS``
(checked): with batch norm in the v2 box head the batch statistics run over every ROI, so a padded ROI on
our side would change them (v1 keeps all 1924 survivors of 2000; its padded ROIs are masked out of every
loss). One 256 x 256 image, 3 instances; no resize on either side.

Mask targets differ by design, and the test swaps torchvision's for ours to compare the rest exactly:
ours are the ground-truth mask cropped to its box and resized to ``data.gt_mask_size`` (56 x 56, the
batch contract of DESIGN.md), then sampled at the ROI's 28 x 28 cell centres (bilinear inside the gt
box, 0 outside) and thresholded at 0.5; torchvision ROIAligns the full-image mask (``sampling_ratio=-1``,
``aligned=False``) and keeps the soft values. So torchvision's ``project_masks_on_boxes`` is replaced
by a plain NumPy implementation of our rule (``_our_rule_targets``) for the compared losses and the SGD
step. The loss with torchvision's own targets is computed too and reported (``-rA``): v1 1.02382 against
1.02493 with ours (0.1%, all of it the target definition: with the swapped targets the two agree to 1e-6).

v2's mask branch is the one place that does not agree to float32 noise: with the same 15 positive ROIs and
their ROIAligned features equal to 3e-4 (relative), the mask probabilities differ by up to 7e-4 (absolute)
in training mode (batch-norm batch statistics over the 15 ROIs) against 1.6e-4 at inference (moving
statistics, test_parity.py), and loss_mask by 3.4e-4 relative (1.00473 ours, 1.00507 torchvision). Not
explained yet; held to 1e-3 here so that a regression shows.

Tolerances and why:
- loss_objectness/loss_rpn_box_reg vs loss_rpn_cls/loss_rpn_box, and loss_mask: 1e-4 relative (the same
  anchors, labels and targets; float32 sums over ~16k anchors or ~15 x 784 mask cells); v2 loss_mask 1e-3;
- loss_classifier/loss_box_reg vs loss_cls/loss_box: 1e-3 relative: the same normalizations (mean over
  all sampled ROIs; smooth L1 with beta 1/9 summed over positives, divided by all sampled), on proposal
  sets that may differ by a box at the NMS / top-k boundary (float noise in the RPN scores);
- one SGD step (lr 0.02, momentum 0.9, weight decay 1e-4 coupled: added to the gradient before momentum
  as torch.optim.SGD does; no gradient clipping), all five losses in the total on both sides. Weight
  decay on kernels and biases (the torchvision presets set train.weight_decay_biases, as torchvision's
  reference recipe decays every parameter), not on normalization scales/offsets (our rule; only v2 has
  trainable ones): the torch side groups its parameters the same way. Every trained layer's
  update is compared (``tv.layer_weights`` maps torch's before/after state dicts into our layouts):
  |ours - theirs| / |theirs| (L2 over the variable) below UPDATE_TOL (measured values beside it). Float32
  noise grows as the gradient goes back through the calibrated random ResNet (as the forward error grows
  from 1e-6 at C2 to 6e-5 at C5); in v2 the gradient of every layer also goes through batch statistics
  and the mask-branch difference above, and the errors are ~2e-2 throughout. A layout, normalization or
  learning-rate error would be O(1). The decay term (1e-4 x w) is too small a part of one step's update
  to be seen here; its coupled form is tested in test_optimizer_parity.py. (Momentum does not act on a
  first step.) The frozen stem and res2 do not move on either side.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from tests.convert import harness

torch = harness.torch
pytestmark = pytest.mark.slow

SIZE = 256
LR, MOMENTUM, WEIGHT_DECAY = 0.02, 0.9, 1e-4
GT_BOXES_XYXY = np.array([[30, 40, 150, 200], [120, 20, 240, 120], [60, 150, 200, 250]], np.float32)
GT_LABELS = np.array([1, 18, 62])
LOSS_PAIRS = {"loss_objectness": "loss_rpn_cls", "loss_rpn_box_reg": "loss_rpn_box",
              "loss_classifier": "loss_cls", "loss_box_reg": "loss_box", "loss_mask": "loss_mask"}
LOSS_RTOL = {"loss_objectness": 1e-4, "loss_rpn_box_reg": 1e-4, "loss_classifier": 1e-3, "loss_box_reg": 1e-3,
             "loss_mask": 1e-4}
# v2's loss_mask: 3.4e-4 relative measured, not explained (see the module docstring).
LOSS_RTOL_V2_MASK = 1e-3
POST_NMS = {"v1": 2000, "v2": 1000}
# Weight-update error by variant and our layer name prefix (conv3_ = res3, ...; "" = FPN, RPN and heads).
# Measured v1: res3 1.2e-2, res4 1.15e-2, res5 1.03e-2, FPN/RPN/heads 2.0e-3 (FPN P4 output conv);
# v2: res3 2.3e-2, res4 2.3e-2, res5 2.0e-2, FPN/RPN/heads 1.9e-2 (FPN P3 batch-norm gamma).
UPDATE_TOL = {"v1": {"conv3_": 3e-2, "conv4_": 3e-2, "conv5_": 3e-2, "": 5e-3},
              "v2": {"conv3_": 5e-2, "conv4_": 5e-2, "conv5_": 5e-2, "": 5e-2}}


def _gt_masks() -> np.ndarray:
    """[G, SIZE, SIZE] uint8: an ellipse inscribed in each box."""
    y, x = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    masks = []
    for x1, y1, x2, y2 in GT_BOXES_XYXY:
        cy, cx, ry, rx = (y1 + y2) / 2, (x1 + x2) / 2, (y2 - y1) / 2, (x2 - x1) / 2
        masks.append((((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1).astype(np.uint8))
    return np.stack(masks)


def _gt_crops(mask_size: int) -> np.ndarray:
    """[G, S, S] float32: each gt mask cropped to its box and resized (bilinear), as the pipeline stores it."""
    import cv2

    return np.stack([cv2.resize(mask[y1:y2, x1:x2].astype(np.float32), (mask_size, mask_size),
                                interpolation=cv2.INTER_LINEAR)
                     for (x1, y1, x2, y2), mask in zip(GT_BOXES_XYXY.astype(int), _gt_masks())])


def _axis(points: np.ndarray, start: float, end: float, cells: int):
    """Bilinear corners and weights of ``points`` on a box axis of ``cells`` cells; weights 0 outside."""
    inside = ((points >= start) & (points < end)).astype(np.float32)
    coord = np.clip((points - start) / (end - start) * cells - 0.5, 0, cells - 1)
    low = np.floor(coord).astype(int)
    frac = (coord - low).astype(np.float32)
    return low, np.minimum(low + 1, cells - 1), (1 - frac) * inside, frac * inside


def _our_rule_targets(crops: np.ndarray, rois_yxyx: np.ndarray, matched: np.ndarray, size: int) -> np.ndarray:
    """[R, size, size] {0, 1}: the matched crop sampled at the ROI's cell centres, thresholded at 0.5."""
    out = np.zeros((len(rois_yxyx), size, size), np.float32)
    cells = (np.arange(size, dtype=np.float32) + 0.5) / size
    for r, ((y1, x1, y2, x2), g) in enumerate(zip(rois_yxyx, matched)):
        gx1, gy1, gx2, gy2 = GT_BOXES_XYXY[g]
        ylo, yhi, wylo, wyhi = _axis(y1 + cells * (y2 - y1), gy1, gy2, crops.shape[-1])
        xlo, xhi, wxlo, wxhi = _axis(x1 + cells * (x2 - x1), gx1, gx2, crops.shape[-1])
        crop = crops[g]
        for yi, wy in ((ylo, wylo), (yhi, wyhi)):
            for xi, wx in ((xlo, wxlo), (xhi, wxhi)):
                out[r] += wy[:, None] * wx[None, :] * crop[yi][:, xi]
    return (out >= 0.5).astype(np.float32)


def _torch_model(variant: str):
    from torchvision.models import resnet50
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection._utils import overwrite_eps
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, RPNHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
    from torchvision.ops.misc import FrozenBatchNorm2d

    v2 = variant == "v2"
    bn = torch.nn.BatchNorm2d if v2 else None
    backbone = _resnet_fpn_extractor(resnet50(weights=None, norm_layer=FrozenBatchNorm2d), 3, norm_layer=bn)
    heads = {}
    if v2:  # as maskrcnn_resnet50_fpn_v2 builds them
        heads = {"rpn_head": RPNHead(256, 3, conv_depth=2),
                 "box_head": FastRCNNConvFCHead((256, 7, 7), [256] * 4, [1024], norm_layer=bn),
                 "mask_head": MaskRCNNHeads(256, [256] * 4, 1, norm_layer=bn)}
    model = MaskRCNN(backbone, num_classes=91, min_size=SIZE, max_size=SIZE, rpn_batch_size_per_image=10**6,
                     box_batch_size_per_image=10**6, rpn_post_nms_top_n_train=POST_NMS[variant], **heads)
    model.load_state_dict(harness.make_torch_model(variant).state_dict())
    if not v2:
        overwrite_eps(model, 0.0)
    model.train()
    return model


def _our_model(variant: str, num_anchors: int):
    from mrcnn_tf2 import build_model, config
    from mrcnn_tf2.convert import torchvision as tv

    post_nms = POST_NMS[variant]
    overrides = {"model.image_size": SIZE, "model.rpn.anchors_per_image": num_anchors,
                 "model.rpn.positive_fraction": 1.0, "model.rpn.post_nms_topk_train": post_nms,
                 "model.roi.rois_per_image": post_nms + len(GT_LABELS), "model.roi.positive_fraction": 1.0,
                 "data.max_instances": len(GT_LABELS), "train.clip_norm": 0.0, "train.learning_rate": LR,
                 "train.reference_batch_size": 1, "train.momentum": MOMENTUM, "train.weight_decay": WEIGHT_DECAY,
                 "train.warmup_steps": 0}
    cfg = config.preset(harness.PRESETS[variant], overrides=overrides)
    model = build_model(cfg)
    state_dict = tv.canonical_state_dict(harness.numpy_state_dict(variant))
    tv.assign_weights(model, tv.layer_weights(state_dict, variant))
    return cfg, model


def _our_batch(image: np.ndarray, mask_size: int) -> dict:
    import tensorflow as tf

    from mrcnn_tf2.model import default_image_info

    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    normalized = ((image / 255.0 - mean) / std).astype(np.float32)
    return {"images": tf.constant(normalized[None]), "image_info": default_image_info(1, SIZE),
            "gt_boxes": tf.constant(GT_BOXES_XYXY[None][..., [1, 0, 3, 2]]),
            "gt_classes": tf.constant(GT_LABELS[None], tf.int32), "gt_masks": tf.constant(_gt_crops(mask_size)[None])}


def _torch_step(variant: str, image: np.ndarray, crops: np.ndarray) -> tuple[dict, dict, dict, float, int]:
    """torchvision's losses (our mask targets), one SGD step; state dicts before and after; the loss_mask
    with torchvision's own targets; the number of proposals the RPN kept."""
    from torchvision.models.detection import roi_heads

    tmodel = _torch_model(variant)
    before = {k: v.detach().clone().numpy() for k, v in tmodel.state_dict().items()}
    inputs = [torch.from_numpy(image).permute(2, 0, 1).float() / 255.0]
    target = [{"boxes": torch.from_numpy(GT_BOXES_XYXY), "labels": torch.from_numpy(GT_LABELS),
               "masks": torch.from_numpy(_gt_masks())}]
    kept = []
    tmodel.rpn.register_forward_hook(lambda module, args, out: kept.append(len(out[0][0])))
    native_mask = float(tmodel(inputs, target)["loss_mask"].detach())  # a separate forward: nothing is stepped

    def our_rule(gt_masks, boxes, matched_idxs, size):
        rois = boxes.detach().numpy()[:, [1, 0, 3, 2]]
        return torch.from_numpy(_our_rule_targets(crops, rois, matched_idxs.numpy(), size))

    original = roi_heads.project_masks_on_boxes
    roi_heads.project_masks_on_boxes = our_rule
    try:
        losses = tmodel(inputs, target)
    finally:
        roi_heads.project_masks_on_boxes = original
    norm_types = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm)
    norm_params = {id(p) for m in tmodel.modules() if isinstance(m, norm_types) for p in m.parameters()}
    params = [p for p in tmodel.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(  # the torchvision presets decay biases too (train.weight_decay_biases)
        [{"params": [p for p in params if id(p) not in norm_params], "weight_decay": WEIGHT_DECAY},
         {"params": [p for p in params if id(p) in norm_params], "weight_decay": 0.0}], lr=LR, momentum=MOMENTUM)
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    after = {k: v.detach().numpy() for k, v in tmodel.state_dict().items()}
    return {k: float(v.detach()) for k, v in losses.items()}, before, after, native_mask, kept[-1]


@pytest.fixture(scope="module", params=["v1", "v2"])
def both(request):
    from mrcnn_tf2.optimizer import build_optimizer

    variant = request.param
    num_anchors = sum(3 * (SIZE // 2**lv) ** 2 for lv in range(2, 7))
    cfg, model = _our_model(variant, num_anchors)
    crops = _gt_crops(cfg.data.gt_mask_size)
    image = harness.make_image(SIZE, SIZE, seed=2)
    torch_losses, before, after, native_mask, kept = _torch_step(variant, image, crops)
    batch = _our_batch(image, cfg.data.gt_mask_size)
    our_losses = {k: float(v) for k, v in model.compute_losses(batch, training=True).items()}
    model.compile(optimizer=build_optimizer(cfg.train, global_batch_size=1))
    ours_before = {id(v): np.asarray(v).copy() for v in model.trainable_variables}
    model.train_step(batch)
    return dict(variant=variant, torch_losses=torch_losses, our_losses=our_losses, before=before, after=after,
                native_mask=native_mask, kept=kept, model=model, ours_before=ours_before)


@pytest.mark.parametrize("torch_key", list(LOSS_PAIRS))
def test_losses(both, torch_key):
    ours, theirs = both["our_losses"][LOSS_PAIRS[torch_key]], both["torch_losses"][torch_key]
    print(f"{both['variant']} {torch_key}: torchvision {theirs:.6g}, ours {ours:.6g}")  # shown by pytest -rA
    if torch_key == "loss_mask":
        print(f"{both['variant']} loss_mask with torchvision's own targets (soft, full-mask ROIAlign): "
              f"{both['native_mask']:.6g}")
    if both["variant"] == "v2":  # every ROI is a real proposal (or gt): no padding in the BN statistics
        assert both["kept"] == POST_NMS["v2"]
    assert theirs > 0
    rtol = LOSS_RTOL_V2_MASK if (both["variant"], torch_key) == ("v2", "loss_mask") else LOSS_RTOL[torch_key]
    assert abs(ours - theirs) <= rtol * theirs, (ours, theirs)


def _layer_of(model, sublayer: str, name: str):
    owner = getattr(model, sublayer)
    return owner.get_layer(name) if hasattr(owner, "get_layer") else getattr(owner, name)


def test_one_sgd_step(both):
    from mrcnn_tf2.convert import torchvision as tv

    variant, model, ours_before = both["variant"], both["model"], both["ours_before"]
    mapped = {}
    for side in ("before", "after"):
        state_dict = {k: v for k, v in both[side].items() if not k.endswith("num_batches_tracked")}
        mapped[side] = tv.layer_weights(tv.canonical_state_dict(state_dict), variant)
    trainable = {id(v) for v in model.trainable_variables}
    errors, frozen = {}, 0
    for (sublayer, name), values in mapped["after"].items():
        layer = _layer_of(model, sublayer, name)
        for variable in layer.weights:
            var_name = variable.path.rsplit("/", 1)[-1]
            if var_name not in values or var_name.startswith("moving_"):
                continue
            theirs = values[var_name] - mapped["before"][(sublayer, name)][var_name]
            if id(variable) not in trainable:
                assert not theirs.any(), variable.path  # frozen here: frozen in torchvision too
                frozen += 1
                continue
            ours = np.asarray(variable) - ours_before[id(variable)]
            assert np.abs(theirs).max() > 0, variable.path
            errors[variable.path] = float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))
    def group(path: str) -> str:
        stage = re.match(r"(conv[345]_)", path)
        return stage.group(1) if stage else ""

    worst = {}
    for path, error in errors.items():
        if error > worst.get(group(path), ("", 0.0))[1]:
            worst[group(path)] = (path, error)
    print(f"{variant}: {len(errors)} trained variables compared; largest error per group: "
          + "; ".join(f"{p}: {e:.2e}" for p, e in worst.values()))  # shown by pytest -rA
    # Every trained variable was compared, except conv biases torchvision's layers lack (set to 0 on import).
    missed = [v.path for v in model.trainable_variables if v.path not in errors]
    assert all(p.endswith("/bias") for p in missed), missed
    assert len(errors) > 80 and frozen > 20  # the heads, FPN, RPN, res3-res5; the stem and res2 frozen
    for path, error in errors.items():
        assert error < UPDATE_TOL[variant][group(path)], (path, error, worst)
    assert not any(v is model.backbone.get_layer("conv2_block1_1_conv").kernel for v in model.trainable_variables)
