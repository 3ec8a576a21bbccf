"""The configuration schema: frozen dataclasses, one per part of the model and the run.

Dotted config keys mirror these fields: ``model.image_size``, ``model.rpn.nms_iou_threshold``,
``train.learning_rate``, ``data.augment.hflip_prob`` ... Defaults are the COCO R50-FPN recipe;
presets (``presets.py``) change what differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
    # Rank and NMS proposals by sigmoid(objectness) after the per-level top-k (torchvision) instead of
    # by the logits: the same order except where float32 sigmoids tie.
    sigmoid_scores: bool = False


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
    # ROIAlign: half-pixel aligned (detectron2) or torchvision's aligned=False (no shift, boxes >= 1 cell);
    # level_eps is the FPN level mapper's epsilon before the floor (torchvision's LevelMapper: 1e-6).
    roi_align_aligned: bool = True
    sampling_ratio: int = 2
    level_eps: float = 1e-5
    # Box head: box_head_convs 3x3 convs (4 for "4conv1fc", torchvision v2) before box_head_fcs FCs;
    # head_norm (choices.HEAD_NORMS) follows every box and mask head conv.
    box_head_convs: int = 0
    box_head_fcs: int = 2
    head_norm: str = "none"


@dataclass(frozen=True)
class DetectionConfig:
    """Inference post-processing."""

    max_detections: int = 100
    score_threshold: float = 0.05
    nms_iou_threshold: float = 0.5
    pre_nms_topk: int = 1000  # candidates (class, box) per image before NMS; 0 = all (torchvision)
    min_box_size: float = 0.0  # pixels; detections with a smaller side are dropped (torchvision: 1e-2)
    paste_mode: str = "box"  # host-side mask pasting, choices.PASTE_MODES (mrcnn_tf2/mask_paste.py)


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
    # Trainable batch norm (norm / fpn_norm / roi.head_norm = "bn") computes its batch statistics over the
    # global batch of all replicas (keras BatchNormalization(synchronized=True)): three small all-reduces per
    # layer and step. Frozen batch norm has no batch statistics and is unaffected.
    sync_bn: bool = False
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi: ROIConfig = field(default_factory=ROIConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    # Inference resize (eval, predict, export): "square" = long side to image_size on an S x S canvas;
    # "short_side" = torchvision's rule: scale = min(min_size / short, max_size / long), floor, each side
    # zero-padded to a multiple of size_divisibility (non-square model input). Training stays square.
    resize_mode: str = "square"
    min_size: int = 800
    max_size: int = 1333
    size_divisibility: int = 32
    # ResNet layout: stride on the first 1x1 conv (keras.applications, caffe) or on the 3x3 (torchvision).
    resnet_stride_in_1x1: bool = True
    backbone_conv_bias: bool = True  # keras.applications ResNets have conv biases, torchvision's none
    backbone_norm_epsilon: float = 1.001e-5  # backbone batch-norm epsilon (torchvision 1e-5; 0 for its v1 COCO file)
    fpn_norm: str = ""  # one of choices.FPN_NORMS
    # Anchors: centre of cell i at (i + anchor_offset) * stride; anchor_rounding rounds each cell anchor's
    # corners to integers (torchvision: offset 0, rounded).
    anchor_offset: float = 0.5
    anchor_rounding: bool = False


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
    # Sharded TFRecords from `python -m mrcnn_tf2.pipelines.tfrecord` (a glob or a folder); replaces the train JSON.
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
    # Unusable image files (missing, empty, corrupt, wrong size, above export.max_image_pixels):
    # "error" refuses the dataset before training, "skip" drops them (counted and logged).
    bad_images: str = "error"


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
    # "decoupled": Keras' w -= lr * wd * w; "coupled": wd * w added to the gradient before momentum
    # (torch.optim.SGD, torchvision and detectron2 recipes; about 1 / (1 - momentum) stronger).
    weight_decay_mode: str = "decoupled"
    # Decay biases too (torchvision's reference recipe decays every trainable parameter). Normalization
    # scales/offsets are never decayed; false exempts biases as well (detectron2, TF Model Garden).
    weight_decay_biases: bool = False
    # Absolute LR decay steps, fixed at the start of a run and kept when a resume raises train.steps
    # (as detectron2's SOLVER.STEPS). step schedule: the steps at which the LR is multiplied by
    # decay_rate; cosine: one step, where the cosine reaches 0. Empty: resolved from decay_fractions of
    # train.steps (step) or train.steps itself (cosine) when training starts, and stored in config.json.
    decay_steps: tuple[int, ...] = ()
    # Bit-exact runs and resumes: tf.config.experimental.enable_op_determinism() and every seed from
    # data.seed (the model's samplers and the input pipeline are stateless either way).
    deterministic: bool = False


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 2
    num_visualizations: int = 4
    # Compute precision of --mode=eval|predict|export and Detector.from_run: float32 or bfloat16 (the
    # mixed_bfloat16 policy, float32 variables); an export records it in its config.json.
    precision: str = "float32"
    # Inference (eval, predict, export, Detector) on a machine with no GPU or TPU: the float32 3x3
    # convolutions of 256+ channels on maps of 3000+ pixels (the FPN and RPN on P2-P4, ResNet's conv4)
    # run by Winograd F(4x4, 3x3), about 2x faster, float32 error ~2e-5 of the output's scale instead
    # of ~2e-6 (mrcnn_tf2/ops/winograd.py). Training never uses it; false: direct convolutions always.
    winograd: bool = True


@dataclass(frozen=True)
class ExportConfig:
    """SavedModel / serving settings, fixed at export time."""

    # Images whose header says width * height exceeds this are refused before decoding (serving and
    # training data alike): a small compressed file can decode to gigabytes.
    max_image_pixels: int = 40_000_000


@dataclass(frozen=True)
class Config:
    name: str = "coco_r50_fpn"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

