"""``validate(cfg)``: every cross-field rule, with messages that name the key and a valid choice."""

from __future__ import annotations

import math

from mrcnn_tf2.config.choices import (
    BACKBONES,
    BAD_IMAGES,
    FPN_NORMS,
    HEAD_NORMS,
    LR_SCHEDULES,
    MIXED_PRECISION,
    NORMS,
    PASTE_MODES,
    PIXEL_NORMALIZATIONS,
    PRECISIONS,
    RESIZE_MODES,
    TRAIN_LAYERS,
    WEIGHT_DECAY_MODES,
)
from mrcnn_tf2.config.schema import Config, ConfigError


def _nearest_multiples(value: int, multiple: int) -> tuple[int, int]:
    lower = max(multiple, (value // multiple) * multiple)
    upper = int(math.ceil(value / multiple)) * multiple
    if upper == lower:
        upper = lower + multiple
    return lower, upper


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def validate(cfg: Config) -> Config:
    """Checks the config; raises ConfigError naming the key and a valid choice. Returns ``cfg``."""
    m = cfg.model
    _check(m.backbone in BACKBONES, f"model.backbone='{m.backbone}' is not one of {BACKBONES}")
    _check(m.norm in NORMS, f"model.norm='{m.norm}' is not one of {NORMS}")
    _check(m.train_layers in TRAIN_LAYERS,
           f"model.train_layers='{m.train_layers}' is not one of {TRAIN_LAYERS}")
    _check(m.pixel_normalization in PIXEL_NORMALIZATIONS,
           f"model.pixel_normalization='{m.pixel_normalization}' is not one of {PIXEL_NORMALIZATIONS}")
    _check(m.num_classes >= 2, f"model.num_classes={m.num_classes} must be >= 2 (background + 1 class)")
    _check(2 <= m.min_level <= m.max_level <= 7,
           f"model.min_level={m.min_level}, model.max_level={m.max_level}: need 2 <= min <= max <= 7")
    num_levels = m.max_level - m.min_level + 1
    _check(len(m.anchor_sizes) == num_levels,
           f"model.anchor_sizes has {len(m.anchor_sizes)} entries but levels "
           f"{m.min_level}..{m.max_level} need {num_levels}")
    _check(len(m.aspect_ratios) >= 1 and all(r > 0 for r in m.aspect_ratios),
           "model.aspect_ratios must be positive numbers")
    multiple = 2 ** m.max_level
    if m.image_size <= 0 or m.image_size % multiple:
        lower, upper = _nearest_multiples(max(m.image_size, 1), multiple)
        raise ConfigError(
            f"model.image_size={m.image_size} must be a multiple of 2^max_level = {multiple} "
            f"(the image is halved {m.max_level} times for FPN level P{m.max_level}); "
            f"the nearest valid sizes are {lower} and {upper}")
    _check(m.resize_mode in RESIZE_MODES, f"model.resize_mode='{m.resize_mode}' is not one of {RESIZE_MODES}")
    if m.resize_mode == "short_side":
        # image_size above is the square training canvas; inference follows the actual image sides.
        _check(0 < m.min_size <= m.max_size,
               f"model.min_size={m.min_size}, model.max_size={m.max_size}: need 0 < min_size <= max_size")
        backbone_stride = 2 ** min(m.max_level, 5)
        _check(m.size_divisibility > 0 and m.size_divisibility % backbone_stride == 0,
               f"model.size_divisibility={m.size_divisibility} must be a positive multiple of "
               f"{backbone_stride} (the stride of the coarsest backbone feature), e.g. 32")
    _check(m.fpn_norm in FPN_NORMS, f"model.fpn_norm='{m.fpn_norm}' is not one of {FPN_NORMS}")
    _check(m.backbone_norm_epsilon >= 0, f"model.backbone_norm_epsilon={m.backbone_norm_epsilon} must be >= 0")
    _check(0 <= m.anchor_offset < 1, f"model.anchor_offset={m.anchor_offset} must be in [0, 1)")
    if m.backbone == "mobilenetv3":
        _check(m.resnet_stride_in_1x1 and m.backbone_conv_bias,
               "model.resnet_stride_in_1x1 and model.backbone_conv_bias apply to ResNets only; keep them true "
               "for mobilenetv3")
    if m.norm == "gn" or m.fpn_norm == "gn":
        _check(m.fpn_channels % m.gn_groups == 0,
               f"model.fpn_channels={m.fpn_channels} must be divisible by model.gn_groups={m.gn_groups}")
    _check(0 <= m.bn_momentum < 1, f"model.bn_momentum={m.bn_momentum} must be in [0, 1)")
    if m.backbone == "mobilenetv3":
        _check(m.min_level >= 2 and m.train_layers in ("heads", "all"),
               "model.train_layers for mobilenetv3 must be 'heads' or 'all'")
    r, roi, det = m.rpn, m.roi, m.detection
    _check(0 <= r.bg_iou_threshold <= r.fg_iou_threshold <= 1,
           "model.rpn: need 0 <= bg_iou_threshold <= fg_iou_threshold <= 1")
    _check(0 <= roi.bg_iou_threshold <= roi.fg_iou_threshold <= 1,
           "model.roi: need 0 <= bg_iou_threshold <= fg_iou_threshold <= 1")
    for key, value in (("model.rpn.anchors_per_image", r.anchors_per_image),
                       ("model.rpn.pre_nms_topk_train", r.pre_nms_topk_train),
                       ("model.rpn.post_nms_topk_train", r.post_nms_topk_train),
                       ("model.rpn.pre_nms_topk_test", r.pre_nms_topk_test),
                       ("model.rpn.post_nms_topk_test", r.post_nms_topk_test),
                       ("model.roi.rois_per_image", roi.rois_per_image),
                       ("model.detection.max_detections", det.max_detections),
                       ("data.max_instances", cfg.data.max_instances),
                       ("train.batch_size", cfg.train.batch_size),
                       ("eval.batch_size", cfg.eval.batch_size)):
        _check(value >= 1, f"{key}={value} must be >= 1")
    _check(0 < r.positive_fraction <= 1 and 0 < roi.positive_fraction <= 1,
           "positive_fraction must be in (0, 1]")
    _check(roi.head_norm in HEAD_NORMS, f"model.roi.head_norm='{roi.head_norm}' is not one of {HEAD_NORMS}")
    _check(det.paste_mode in PASTE_MODES,
           f"model.detection.paste_mode='{det.paste_mode}' is not one of {PASTE_MODES}")
    _check(roi.sampling_ratio >= 1, f"model.roi.sampling_ratio={roi.sampling_ratio} must be >= 1")
    _check(roi.box_head_fcs >= 1 and roi.box_head_convs >= 0,
           f"model.roi: box_head_fcs={roi.box_head_fcs} must be >= 1 and box_head_convs={roi.box_head_convs} >= 0")
    _check(det.pre_nms_topk >= 0,
           f"model.detection.pre_nms_topk={det.pre_nms_topk} must be >= 0 (0 = every candidate)")
    _check(roi.mask_size == 2 * roi.mask_pool_size,
           f"model.roi.mask_size={roi.mask_size} must be 2 * model.roi.mask_pool_size "
           f"({2 * roi.mask_pool_size}): the mask head upsamples once")
    t = cfg.train
    _check(t.steps >= 0, f"train.steps={t.steps} must be >= 0")
    _check(t.learning_rate > 0, f"train.learning_rate={t.learning_rate} must be > 0")
    _check(t.schedule in LR_SCHEDULES, f"train.schedule='{t.schedule}' is not one of {LR_SCHEDULES}")
    _check(t.weight_decay_mode in WEIGHT_DECAY_MODES,
           f"train.weight_decay_mode='{t.weight_decay_mode}' is not one of {WEIGHT_DECAY_MODES}")
    _check(t.mixed_precision in MIXED_PRECISION,
           f"train.mixed_precision='{t.mixed_precision}' is not one of float16, bfloat16 or empty")
    _check(cfg.eval.precision in PRECISIONS,
           f"eval.precision='{cfg.eval.precision}' is not one of {', '.join(PRECISIONS)} (the inference "
           "compute precision; float16 is for training only: train.mixed_precision)")
    _check(all(0 < f < 1 for f in t.decay_fractions), "train.decay_fractions must lie in (0, 1)")
    _check(all(b >= 0 for b in t.decay_steps) and list(t.decay_steps) == sorted(t.decay_steps),
           f"train.decay_steps={list(t.decay_steps)} must be steps >= 0 in increasing order")
    _check(t.schedule != "cosine" or len(t.decay_steps) <= 1,
           f"train.decay_steps={list(t.decay_steps)}: the cosine schedule takes one step (where it reaches 0)")
    d = cfg.data
    _check(d.gt_mask_size >= 4, f"data.gt_mask_size={d.gt_mask_size} must be >= 4")
    _check(len(d.category_ids) == len(d.category_names),
           "data.category_ids and data.category_names must have the same length")
    if d.category_ids:
        _check(len(d.category_ids) + 1 == m.num_classes,
               f"model.num_classes={m.num_classes} but the dataset has {len(d.category_ids)} "
               f"categories: set model.num_classes={len(d.category_ids) + 1}")
    a = d.augment
    _check(0 < a.scale_min <= a.scale_max, "data.augment: need 0 < scale_min <= scale_max")
    for name in ("hflip_prob", "vflip_prob", "crop_prob", "rotation_prob", "blur_prob", "noise_prob"):
        value = getattr(a, name)
        _check(0 <= value <= 1, f"data.augment.{name}={value} must be a probability in [0, 1]")
    _check(d.bad_images in BAD_IMAGES, f"data.bad_images='{d.bad_images}' is not one of {BAD_IMAGES}")
    _check(cfg.export.max_image_pixels >= 1,
           f"export.max_image_pixels={cfg.export.max_image_pixels} must be >= 1")
    return cfg
