"""Configuration: frozen dataclasses, named presets, dotted overrides and validation.

This module owns every hyperparameter of the project. It imports no TensorFlow, so the CLI can
validate a config (and fail with a clear message) before TensorFlow starts. ``builder.py`` is the
only code that turns a config into layers; layers themselves take plain values.

Dotted keys mirror the dataclass fields: ``model.image_size``, ``model.rpn.nms_iou_threshold``,
``train.learning_rate``, ``data.augment.hflip_prob`` ...
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ConfigError",
    "Config",
    "ModelConfig",
    "RPNConfig",
    "ROIConfig",
    "DetectionConfig",
    "DataConfig",
    "AugmentConfig",
    "TrainConfig",
    "EvalConfig",
    "PRESETS",
    "preset",
    "load",
    "from_dict",
    "to_dict",
    "apply_overrides",
    "validate",
]

BACKBONES = ("resnet50", "resnet101", "mobilenetv3")
NORMS = ("frozen_bn", "bn", "gn")
TRAIN_LAYERS = ("heads", "3+", "4+", "5+", "all")
PIXEL_NORMALIZATIONS = ("caffe", "none")
LR_SCHEDULES = ("step", "cosine")
MIXED_PRECISION = ("", "float16", "bfloat16")


class ConfigError(ValueError):
    """An invalid configuration value; the message names the key and the fix."""


@dataclass(frozen=True)
class RPNConfig:
    """Region proposal network: anchor matching, sampling and proposal generation."""

    fg_iou_threshold: float = 0.7
    bg_iou_threshold: float = 0.3
    anchors_per_image: int = 256
    positive_fraction: float = 0.5
    pre_nms_topk_train: int = 2000  # per level
    post_nms_topk_train: int = 2000  # per image
    pre_nms_topk_test: int = 1000
    post_nms_topk_test: int = 1000
    nms_iou_threshold: float = 0.7
    min_box_size: float = 0.0  # pixels; smaller proposals get score -inf
    head_convs: int = 1


@dataclass(frozen=True)
class ROIConfig:
    """Second stage: ROI sampling, ROIAlign and the box and mask heads."""

    rois_per_image: int = 512
    positive_fraction: float = 0.25
    fg_iou_threshold: float = 0.5
    bg_iou_threshold: float = 0.5
    box_pool_size: int = 7
    mask_pool_size: int = 14
    box_head_dim: int = 1024
    mask_head_convs: int = 4
    mask_head_channels: int = 256
    mask_size: int = 28
    box_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    canonical_size: float = 224.0
    canonical_level: int = 4


@dataclass(frozen=True)
class DetectionConfig:
    """Inference post-processing."""

    max_detections: int = 100
    score_threshold: float = 0.05
    nms_iou_threshold: float = 0.5
    pre_nms_topk: int = 1000  # candidates (class, box) per image before NMS


@dataclass(frozen=True)
class ModelConfig:
    """Architecture. ``num_classes`` counts the background: K dataset categories -> K + 1."""

    backbone: str = "resnet50"
    norm: str = "frozen_bn"
    train_layers: str = "all"
    image_size: int = 1024
    num_classes: int = 91
    min_level: int = 2
    max_level: int = 6
    fpn_channels: int = 256
    anchor_sizes: tuple[float, ...] = (32.0, 64.0, 128.0, 256.0, 512.0)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    pixel_normalization: str = "caffe"
    gn_groups: int = 32
    # Moving-average momentum of trainable batch norm; from-scratch training wants fast statistics.
    bn_momentum: float = 0.99
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi: ROIConfig = field(default_factory=ROIConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)


@dataclass(frozen=True)
class AugmentConfig:
    """On-graph augmentation; each transform has its own probability or range (0 = off)."""

    enabled: bool = True
    hflip_prob: float = 0.5
    vflip_prob: float = 0.0
    scale_min: float = 0.8
    scale_max: float = 1.25
    crop_prob: float = 0.5
    rotation_prob: float = 0.0
    rotation_max_degrees: float = 15.0
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.02
    blur_prob: float = 0.0
    noise_prob: float = 0.0
    noise_stddev: float = 5.0
    # The random crop keeps one randomly chosen instance whole; each side keeps >= this fraction.
    crop_min_fraction: float = 0.5
    blur_max_sigma: float = 1.5  # pixels; the Gaussian blur's sigma is drawn from [0.1, blur_max_sigma]


@dataclass(frozen=True)
class DataConfig:
    """Input data. Empty paths mean the built-in shapes dataset under ``data_dir``."""

    data_dir: str = "data/shapes"
    train_annotations: str = ""
    train_images: str = ""
    val_annotations: str = ""
    val_images: str = ""
    max_instances: int = 100
    gt_mask_size: int = 56
    skip_empty: bool = False
    shuffle_buffer: int = 1000
    seed: int = 0
    # Sharded TFRecords from `python -m pipelines.tfrecord` (a glob or a folder); replaces the train JSON.
    train_tfrecords: str = ""
    # JSON path: decoded images and masks are cached in memory when they fit in this many MiB.
    cache_max_mb: int = 1024
    num_parallel_calls: int = -1  # tf.data map parallelism; -1 = AUTOTUNE
    shapes_num_train: int = 500  # size of the built-in shapes dataset, generated on first use
    shapes_num_val: int = 50
    # The mapping contiguous label (1..K) -> dataset category id; filled from the dataset.
    category_ids: tuple[int, ...] = ()
    category_names: tuple[str, ...] = ()
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation. ``learning_rate`` is for ``reference_batch_size`` and scales linearly."""

    batch_size: int = 16
    steps: int = 90000
    learning_rate: float = 0.02
    reference_batch_size: int = 16
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 1000
    warmup_factor: float = 0.001
    schedule: str = "step"
    decay_fractions: tuple[float, ...] = (0.667, 0.889)
    decay_rate: float = 0.1
    clip_norm: float = 10.0
    loss_weights: tuple[float, float, float, float, float] = (1.0, 1.0, 1.0, 1.0, 1.0)
    checkpoint_every: int = 1000
    keep_checkpoints: int = 5
    log_every: int = 20
    eval_every: int = 0  # steps; 0 = only at the end
    mixed_precision: str = ""
    jit_compile: bool = False


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 2
    num_visualizations: int = 4


@dataclass(frozen=True)
class Config:
    name: str = "coco_r50_fpn"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


LOSS_KEYS = ("loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask")

# --------------------------------------------------------------------------------------------
# Presets


def _coco(backbone: str) -> Config:
    return Config(
        name=f"coco_{'r50' if backbone == 'resnet50' else 'r101'}_fpn",
        model=ModelConfig(backbone=backbone),
        data=DataConfig(data_dir="data/coco"),
    )


def _shapes() -> Config:
    return Config(
        name="shapes",
        model=ModelConfig(
            backbone="mobilenetv3",
            norm="bn",
            image_size=128,
            num_classes=4,
            min_level=2,
            max_level=5,
            fpn_channels=64,
            anchor_sizes=(16.0, 32.0, 64.0, 128.0),
            pixel_normalization="none",
            bn_momentum=0.9,
            rpn=RPNConfig(
                anchors_per_image=128,
                pre_nms_topk_train=300,
                post_nms_topk_train=200,
                pre_nms_topk_test=300,
                post_nms_topk_test=100,
            ),
            roi=ROIConfig(
                rois_per_image=64,
                box_head_dim=256,
                mask_head_convs=2,
                mask_head_channels=64,
                mask_size=28,
            ),
            detection=DetectionConfig(max_detections=20, pre_nms_topk=200),
        ),
        data=DataConfig(max_instances=8, gt_mask_size=28, shuffle_buffer=500),
        train=TrainConfig(
            batch_size=8,
            steps=3000,
            learning_rate=0.02,
            reference_batch_size=8,
            weight_decay=1e-4,
            warmup_steps=200,
            schedule="cosine",
            clip_norm=5.0,
            checkpoint_every=500,
            log_every=10,
        ),
        eval=EvalConfig(batch_size=8),
    )


PRESETS: dict[str, typing.Callable[[], Config]] = {
    "shapes": _shapes,
    "coco_r50_fpn": lambda: _coco("resnet50"),
    "coco_r101_fpn": lambda: _coco("resnet101"),
}


# --------------------------------------------------------------------------------------------
# Serialisation and overrides


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready nested dict (tuples become lists)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Converts ``value`` (JSON/YAML scalar, list or override string) to the field's type."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        args = typing.get_args(annotation)
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                value = json.loads(text)
            else:
                value = [v for v in text.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' expects a list, got {value!r}")
        elem = args[0]
        if len(args) != 2 or args[1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"config key '{key}' expects {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, elem, key) for v in value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off", ""):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"config key '{key}' expects true/false, got {value!r}")
    if annotation is int:
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}' expects an integer, got {value!r}") from None
    if annotation is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}' expects a number, got {value!r}") from None
    if annotation is str:
        return str(value)
    return value


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(data: Mapping[str, Any], base: Any = None, prefix: str = "") -> Any:
    """Builds a config from a (possibly partial) nested dict, on top of ``base`` (default: Config())."""
    base = Config() if base is None else base
    if not isinstance(data, Mapping):
        raise ConfigError(f"config section '{prefix or '<root>'}' must be a mapping, got {data!r}")
    types = _field_types(type(base))
    names = {f.name for f in dataclasses.fields(base)}
    changes = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            close = ", ".join(sorted(names))
            raise ConfigError(f"unknown config key '{full}'; valid keys here: {close}")
        current = getattr(base, key)
        if dataclasses.is_dataclass(current):
            changes[key] = from_dict(value, current, prefix=f"{full}.")
        else:
            changes[key] = _coerce(value, types[key], full)
    return dataclasses.replace(base, **changes)


def _parse_override_value(text: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return text


def apply_overrides(cfg: Config, overrides: Mapping[str, Any] | typing.Iterable[str] | None) -> Config:
    """Applies dotted-key overrides: ``{"model.image_size": 512}`` or ``["model.image_size=512"]``."""
    if not overrides:
        return cfg
    if not isinstance(overrides, Mapping):
        pairs = {}
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override '{item}' must look like key=value, e.g. model.image_size=512")
            key, value = item.split("=", 1)
            pairs[key.strip()] = _parse_override_value(value.strip())
        overrides = pairs
    for key, value in overrides.items():
        nested: Any = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        cfg = from_dict(nested, cfg)
    return cfg


def preset(name: str, overrides: Mapping[str, Any] | typing.Iterable[str] | None = None) -> Config:
    """A named preset (``shapes``, ``coco_r50_fpn``, ``coco_r101_fpn``) with overrides, validated."""
    if name not in PRESETS:
        raise ConfigError(f"unknown config preset '{name}'; choose one of: {', '.join(PRESETS)}, "
                          "or pass a .yaml/.json file")
    return validate(apply_overrides(PRESETS[name](), overrides))


def load(path: str, overrides: Mapping[str, Any] | typing.Iterable[str] | None = None) -> Config:
    """Loads a YAML or JSON file; a top-level ``base: <preset>`` key starts from that preset."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file '{path}' does not exist")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any parser error becomes one clear message
        raise ConfigError(f"config file '{path}' could not be parsed: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping at the top level")
    data = dict(data)
    base_name = data.pop("base", None)
    if base_name and base_name not in PRESETS:
        raise ConfigError(f"config file '{path}': unknown base preset '{base_name}'; "
                          f"choose one of: {', '.join(PRESETS)}")
    base = PRESETS[base_name]() if base_name else None
    return validate(apply_overrides(from_dict(data, base), overrides))


def resolve(name_or_path: str, overrides: Mapping[str, Any] | typing.Iterable[str] | None = None) -> Config:
    """A preset name or a config file path."""
    if name_or_path.endswith((".yaml", ".yml", ".json")):
        return load(name_or_path, overrides)
    return preset(name_or_path, overrides)


# --------------------------------------------------------------------------------------------
# Validation


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
    if m.norm == "gn":
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
    _check(roi.mask_size == 2 * roi.mask_pool_size,
           f"model.roi.mask_size={roi.mask_size} must be 2 * model.roi.mask_pool_size "
           f"({2 * roi.mask_pool_size}): the mask head upsamples once")
    t = cfg.train
    _check(t.steps >= 0, f"train.steps={t.steps} must be >= 0")
    _check(t.learning_rate > 0, f"train.learning_rate={t.learning_rate} must be > 0")
    _check(t.schedule in LR_SCHEDULES, f"train.schedule='{t.schedule}' is not one of {LR_SCHEDULES}")
    _check(t.mixed_precision in MIXED_PRECISION,
           f"train.mixed_precision='{t.mixed_precision}' is not one of float16, bfloat16 or empty")
    _check(all(0 < f < 1 for f in t.decay_fractions), "train.decay_fractions must lie in (0, 1)")
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
    return cfg
