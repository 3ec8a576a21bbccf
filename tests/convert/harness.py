"""Shared setup of the parity tests: a random torchvision Mask R-CNN, made well-conditioned, and our copy.

A random-init torchvision model is useless for comparisons as it comes: its batch norms hold identity
statistics (the features of a 50-layer ResNet then grow or vanish), and its score layers are initialised
with std 0.01 (every objectness and class score ties near 0.5 or 1/91, so top-k, NMS and the 0.05 score
threshold would select arbitrary, implementation-dependent sets). ``make_torch_model`` therefore runs one
calibration pass on an image in which

- every batch norm (FrozenBatchNorm2d, BatchNorm2d in eval mode) gets running_mean/running_var set to the
  statistics of its actual input, and a random scale/offset, so each layer's output is O(1);
- every score or regression layer (RPN cls_logits/bbox_pred, box cls_score/bbox_pred, mask logits) gets
  random weights scaled so that its outputs have a chosen spread (logits std 2-3, deltas std 0.1-0.2).

Then the state dict is converted with the importer's own mapping into a model built from the preset with
small input sizes (short side ``MIN_SIZE``, long side ``MAX_SIZE``; the same values on both sides).
"""

from __future__ import annotations

import dataclasses
from functools import cache

import numpy as np

from tests.torch_import import import_torch

torch, torchvision = import_torch()

MIN_SIZE, MAX_SIZE = 256, 384
PRESETS = {"v1": "torchvision_r50_fpn", "v2": "torchvision_r50_fpn_v2"}
OVERRIDES = {"model.min_size": MIN_SIZE, "model.max_size": MAX_SIZE, "model.image_size": 384}


def make_image(height: int, width: int, seed: int) -> np.ndarray:
    """A deterministic photo-like uint8 RGB image: smooth colour gradients, a few filled shapes, noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([128 + 100 * np.sin(x / (17 + 9 * c) + y / (23 + 5 * c) + c) for c in range(3)], axis=-1)
    for _ in range(6):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(10, height / 3), rng.uniform(10, width / 3)
        inside = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1
        image[inside] = rng.uniform(0, 255, size=3)
    image += rng.normal(0, 6, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _spread(module, std: float, generator) -> None:
    """A forward pre-hook body: weights ~ N(0, s^2) with s chosen so outputs have std ``std``."""

    def hook(mod, inputs):
        x = inputs[0] if not isinstance(inputs[0], (list, tuple)) else inputs[0][0]
        fan_in = mod.weight[0].numel()
        scale = std / float(torch.sqrt(torch.mean(x.double() ** 2) * fan_in + 1e-12))
        with torch.no_grad():
            mod.weight.copy_(torch.randn(mod.weight.shape, generator=generator) * scale)
            mod.bias.copy_(torch.randn(mod.bias.shape, generator=generator) * std * 0.3)
        handle[0].remove()

    handle = [module.register_forward_pre_hook(hook)]


def _calibrate_bn(module, generator) -> None:
    def hook(mod, inputs):
        x = inputs[0].double()
        with torch.no_grad():
            mod.running_mean.copy_(x.mean(dim=(0, 2, 3)))
            mod.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False).clamp_min(1e-3))
            mod.weight.copy_(torch.empty(mod.weight.shape).uniform_(0.5, 1.5, generator=generator))
            mod.bias.copy_(torch.randn(mod.bias.shape, generator=generator) * 0.2)
        handle[0].remove()

    handle = [module.register_forward_pre_hook(hook)]


@cache
def make_torch_model(variant: str):
    """The calibrated torchvision model of ``variant`` in eval mode (transform sizes MIN_SIZE/MAX_SIZE)."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    build = maskrcnn_resnet50_fpn if variant == "v1" else maskrcnn_resnet50_fpn_v2
    model = build(weights=None, weights_backbone=None, num_classes=91, min_size=MIN_SIZE, max_size=MAX_SIZE)
    model.eval()
    for m in model.modules():
        if isinstance(m, (FrozenBatchNorm2d, torch.nn.BatchNorm2d)):
            _calibrate_bn(m, generator)
            if variant == "v1":
                # Loading the v1 COCO file, torchvision builds FrozenBatchNorm2d and sets eps 0
                # (overwrite_eps); without weights it builds BatchNorm2d, which in eval computes the same.
                m.eps = 0.0
    rpn, roi = model.rpn.head, model.roi_heads
    _spread(rpn.cls_logits, 2.0, generator)
    _spread(rpn.bbox_pred, 0.1, generator)
    _spread(roi.box_predictor.cls_score, 2.5, generator)
    _spread(roi.box_predictor.bbox_pred, 0.2, generator)
    _spread(roi.mask_predictor.mask_fcn_logits, 2.0, generator)
    with torch.no_grad():
        model([torch.from_numpy(make_image(256, 256, seed=0)).permute(2, 0, 1).float() / 255.0])
    return model


def numpy_state_dict(variant: str) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in make_torch_model(variant).state_dict().items()}


@cache
def make_our_model(variant: str):
    """Our model of ``variant`` (the preset with OVERRIDES) holding the converted calibrated weights."""
    from mrcnn_tf2 import build_model, config
    from mrcnn_tf2.convert import torchvision as tv

    cfg = config.preset(PRESETS[variant], overrides=dict(OVERRIDES))
    model = build_model(cfg)
    state_dict = tv.canonical_state_dict(numpy_state_dict(variant))
    tv.check_keys(state_dict, variant)
    tv.assign_weights(model, tv.layer_weights(state_dict, variant))
    return cfg, model


@dataclasses.dataclass
class TorchStages:
    image: np.ndarray  # [H, W, 3] the padded, normalized model input (NHWC for comparison)
    image_size: tuple[int, int]  # scaled (h, w) before padding
    body: list[np.ndarray]  # C2..C5, NHWC
    fpn: list[np.ndarray]  # P2..P6, NHWC
    objectness: list[np.ndarray]  # per level [H, W, A]
    deltas: list[np.ndarray]  # per level [H, W, A, 4] as (dy, dx, dh, dw)
    proposals: np.ndarray  # [P, 4] yxyx
    class_logits: np.ndarray  # [P, K] on `proposals`
    box_deltas: np.ndarray  # [P, K, 4] (dy, dx, dh, dw) on `proposals`
    boxes: np.ndarray  # [D, 4] yxyx, model-input pixels
    scores: np.ndarray
    labels: np.ndarray
    masks: np.ndarray  # [D, 28, 28] probabilities of the detected class
    final: dict  # torchvision's postprocessed output (original-image boxes, pasted masks [D, h, w])


def _nhwc(x) -> np.ndarray:
    return x.detach().permute(0, 2, 3, 1).numpy()[0]


def _yxyx(boxes) -> np.ndarray:
    return boxes.detach().numpy()[:, [1, 0, 3, 2]]


@cache
def torch_stages(variant: str, height: int, width: int, seed: int) -> TorchStages:
    model = make_torch_model(variant)
    image = torch.from_numpy(make_image(height, width, seed)).permute(2, 0, 1).float() / 255.0
    with torch.no_grad():
        images, _ = model.transform([image])
        body = model.backbone.body(images.tensors)
        features = model.backbone.fpn(body)
        objectness, deltas = model.rpn.head(list(features.values()))
        proposals, _ = model.rpn(images, features)
        roi = model.roi_heads
        pooled = roi.box_roi_pool(features, proposals, images.image_sizes)
        class_logits, box_regression = roi.box_predictor(roi.box_head(pooled))
        detections, _ = roi(features, proposals, images.image_sizes)
        final = model.transform.postprocess([dict(d) for d in detections], images.image_sizes, [(height, width)])
    a = objectness[0].shape[1]

    def _deltas(d):
        n, _, h, w = d.shape
        return d.reshape(n, a, 4, h, w).permute(0, 3, 4, 1, 2).numpy()[0][..., [1, 0, 3, 2]]

    num_classes = class_logits.shape[1]
    box_deltas = box_regression.reshape(-1, num_classes, 4).numpy()[..., [1, 0, 3, 2]]
    det = detections[0]
    return TorchStages(
        image=_nhwc(images.tensors), image_size=tuple(images.image_sizes[0]),
        body=[_nhwc(body[k]) for k in body], fpn=[_nhwc(features[k]) for k in features],
        objectness=[_nhwc(o) for o in objectness], deltas=[_deltas(d) for d in deltas],
        proposals=_yxyx(proposals[0]), class_logits=class_logits.numpy(), box_deltas=box_deltas,
        boxes=_yxyx(det["boxes"]), scores=det["scores"].numpy(), labels=det["labels"].numpy(),
        masks=det["masks"].numpy()[:, 0],
        final={k: v.detach().numpy() for k, v in final[0].items()})


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of yxyx boxes a [N, 4] and b [M, 4] (plain NumPy, float64)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), axis=-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    """max |ours - theirs| / max |theirs|: the error in units of the tensor's own scale."""
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    return float(np.abs(ours.astype(np.float64) - theirs).max() / max(np.abs(theirs).max(), 1e-12))


@dataclasses.dataclass
class OurStages:
    image: np.ndarray
    image_info: np.ndarray
    body: list[np.ndarray]
    fpn: list[np.ndarray]
    objectness: list[np.ndarray]  # per level [H, W, A]
    deltas: list[np.ndarray]  # per level [H, W, A, 4]
    proposals: np.ndarray  # [P, 4] valid proposals, yxyx
    proposal_scores: np.ndarray
    class_logits: np.ndarray  # on torchvision's proposals
    box_deltas: np.ndarray
    detections: dict  # model(images, image_info) outputs for image 0, valid rows only
    masks_on_torch_boxes: np.ndarray  # [D_torch, 28, 28] sigmoid, torchvision's boxes and labels


@cache
def our_stages(variant: str, height: int, width: int, seed: int) -> OurStages:
    import tensorflow as tf
    from mrcnn_tf2.pipelines.preprocess import preprocess_image, side_resize

    cfg, model = make_our_model(variant)
    theirs = torch_stages(variant, height, width, seed)
    image, info = preprocess_image(tf.constant(make_image(height, width, seed)), cfg.model.image_size,
                                   cfg.model.pixel_normalization, side_resize(cfg.model))
    images, info = image[None], info[None]
    # training=False as in MaskRCNN.call: P2 (64 x 88 here) runs by Winograd on CPUs (eval.winograd).
    body = model.backbone(images, training=False)
    features = model.fpn(body, training=False)
    logits, deltas = model.rpn_head(features, training=False)
    anchors = model._grid_anchors(images, features)
    window = model._clip_window(images, info)
    rois, scores, valid = model.proposals_test(logits, deltas, anchors, window)
    n = int(tf.reduce_sum(tf.cast(valid[0], tf.int32)))
    torch_rois = tf.constant(theirs.proposals[None], tf.float32)
    class_logits, box_deltas = model.box_head(model._roi_align(features, torch_rois, cfg.model.roi.box_pool_size))
    out = model(images, info)
    d = int(out["num_detections"][0])
    detections = {k: v.numpy()[0][:d] for k, v in out.items() if k != "num_detections"}
    boxes = tf.constant(theirs.boxes[None], tf.float32)
    labels = tf.constant(theirs.labels[None], tf.int32)
    mask_logits = model.mask_head(model._roi_align(features, boxes, cfg.model.roi.mask_pool_size), labels)
    levels = sorted(features)
    a = len(cfg.model.aspect_ratios)
    shapes = {lv: features[lv].shape[1:3] for lv in levels}
    return OurStages(
        image=images.numpy()[0], image_info=info.numpy()[0], body=[x.numpy()[0] for x in body],
        fpn=[features[lv].numpy()[0] for lv in levels],
        objectness=[logits[lv].numpy()[0].reshape(*shapes[lv], a) for lv in levels],
        deltas=[deltas[lv].numpy()[0].reshape(*shapes[lv], a, 4) for lv in levels],
        proposals=rois.numpy()[0][:n], proposal_scores=scores.numpy()[0][:n],
        class_logits=class_logits.numpy()[0], box_deltas=box_deltas.numpy()[0], detections=detections,
        masks_on_torch_boxes=tf.sigmoid(mask_logits).numpy()[0])
