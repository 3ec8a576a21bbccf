"""build_model(cfg): the only code that reads config objects and turns them into layers."""

from __future__ import annotations

import keras
import tensorflow as tf

from mrcnn_tf2 import config as config_lib
from mrcnn_tf2.layers.backbone import build_backbone
from mrcnn_tf2.layers.box_head import BoxHead
from mrcnn_tf2.layers.detections import DetectionGenerator
from mrcnn_tf2.layers.fpn import FPN
from mrcnn_tf2.layers.mask_head import MaskHead
from mrcnn_tf2.layers.proposals import ProposalGenerator
from mrcnn_tf2.layers.roi_sampler import ROISampler
from mrcnn_tf2.layers.rpn_head import RPNHead
from mrcnn_tf2.model import MaskRCNN, default_image_info
from mrcnn_tf2.ops import winograd


def build_model(cfg: config_lib.Config, build: bool = True) -> MaskRCNN:
    """Builds a MaskRCNN from a validated config (call it under ``strategy.scope()`` to distribute).

    Args:
      cfg: the full config (``config.preset(...)`` / ``config.load(...)``).
      build: run one dummy forward pass so that every variable exists (needed before restoring
        a checkpoint or building an optimizer).

    Returns:
      The model; its variables are randomly initialised (ImageNet weights are loaded separately
      with `layers.backbone.load_backbone_weights`).
    """
    config_lib.validate(cfg)
    m = cfg.model
    size = m.image_size
    short_side = m.resize_mode == "short_side"
    # Clip windows come from image_info; this only bounds them: the largest padded input side.
    winograd_pixels = winograd_min_pixels(cfg)
    clip_bound = max(size, -(-m.max_size // m.size_divisibility) * m.size_divisibility) if short_side else size
    backbone = build_backbone(m.backbone, norm=m.norm, train_layers=m.train_layers,
                              image_size=None if short_side else size, gn_groups=m.gn_groups,
                              sync_bn=m.sync_bn, winograd_min_pixels=winograd_pixels, **_resnet_options(m))
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = m.bn_momentum
    fpn_norm = m.fpn_norm or ("gn" if m.norm == "gn" else "none")
    fpn = FPN(min_level=m.min_level, max_level=m.max_level, num_channels=m.fpn_channels,
              norm=None if fpn_norm == "none" else fpn_norm, gn_groups=m.gn_groups, sync_bn=m.sync_bn,
              norm_momentum=m.bn_momentum, winograd_min_pixels=winograd_pixels, name="fpn")
    rpn_head = RPNHead(num_anchors=len(m.aspect_ratios), num_channels=m.fpn_channels,
                       num_convs=m.rpn.head_convs, winograd_min_pixels=winograd_pixels, name="rpn_head")
    proposals_train = ProposalGenerator(m.rpn.pre_nms_topk_train, m.rpn.post_nms_topk_train,
                                        m.rpn.nms_iou_threshold, m.rpn.min_box_size, size,
                                        sigmoid_scores=m.rpn.sigmoid_scores, name="proposals_train")
    proposals_test = ProposalGenerator(m.rpn.pre_nms_topk_test, m.rpn.post_nms_topk_test,
                                       m.rpn.nms_iou_threshold, m.rpn.min_box_size, clip_bound,
                                       sigmoid_scores=m.rpn.sigmoid_scores, name="proposals_test")
    roi_sampler = ROISampler(m.roi.rois_per_image, m.roi.positive_fraction, m.roi.fg_iou_threshold,
                             m.roi.bg_iou_threshold, m.roi.box_weights, name="roi_sampler")
    box_head = BoxHead(m.num_classes, fc_dim=m.roi.box_head_dim, num_fcs=m.roi.box_head_fcs,
                       num_convs=m.roi.box_head_convs, conv_dim=m.fpn_channels, norm=m.roi.head_norm,
                       norm_momentum=m.bn_momentum, sync_bn=m.sync_bn, winograd=winograd_pixels > 0,
                       name="box_head")
    mask_head = MaskHead(m.num_classes, num_convs=m.roi.mask_head_convs, num_channels=m.roi.mask_head_channels,
                         norm=m.roi.head_norm, norm_momentum=m.bn_momentum, sync_bn=m.sync_bn,
                         name="mask_head")
    detection_generator = DetectionGenerator(m.detection.max_detections, m.detection.score_threshold,
                                             m.detection.nms_iou_threshold, m.detection.pre_nms_topk,
                                             m.roi.box_weights, clip_bound,
                                             min_box_size=m.detection.min_box_size, name="detection_generator")
    model = MaskRCNN(
        backbone, fpn, rpn_head, proposals_train, proposals_test, roi_sampler, box_head, mask_head,
        detection_generator, image_size=size, min_level=m.min_level, max_level=m.max_level,
        anchor_sizes=m.anchor_sizes, aspect_ratios=m.aspect_ratios,
        rpn_fg_iou_threshold=m.rpn.fg_iou_threshold, rpn_bg_iou_threshold=m.rpn.bg_iou_threshold,
        rpn_anchors_per_image=m.rpn.anchors_per_image, rpn_positive_fraction=m.rpn.positive_fraction,
        box_pool_size=m.roi.box_pool_size, mask_pool_size=m.roi.mask_pool_size,
        canonical_size=m.roi.canonical_size, canonical_level=m.roi.canonical_level,
        loss_weights=cfg.train.loss_weights, clip_norm=cfg.train.clip_norm, anchor_offset=m.anchor_offset,
        anchor_rounding=m.anchor_rounding, roi_align_aligned=m.roi.roi_align_aligned,
        roi_sampling_ratio=m.roi.sampling_ratio, roi_level_eps=m.roi.level_eps, sampling_seed=cfg.data.seed,
        name="mask_rcnn")
    if build:
        build_variables(model)
    return model


def winograd_min_pixels(cfg: config_lib.Config) -> int:
    """``layers.conv.Conv2D``'s ``winograd_min_pixels`` for this machine: 0 (never) unless
    ``eval.winograd`` is on and TensorFlow sees no GPU or TPU (their convolution libraries choose their
    own algorithms); the layers then use it only at inference, in float32, with 256+ input channels."""
    if not cfg.eval.winograd or tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"):
        return 0
    return winograd.WINOGRAD_MIN_PIXELS


def _resnet_options(m: config_lib.ModelConfig) -> dict:
    """The ResNet layout options of build_backbone (none for other backbones)."""
    if not m.backbone.startswith("resnet"):
        return {}
    return {"stride_in_1x1": m.resnet_stride_in_1x1, "conv_bias": m.backbone_conv_bias,
            "bn_epsilon": m.backbone_norm_epsilon}


def build_variables(model: MaskRCNN) -> None:
    """Creates every variable by tracing one inference pass on a ``[1, S, S, 3]`` input, without running it.

    Keras creates the variables (initialized eagerly, under ``tf.init_scope``) while the graph is traced;
    nothing is computed. An eager pass at 1024 px instead kept ~2.4 GB resident for the rest of the
    process (oneDNN's eager kernels and their caches) and took as long as an inference.
    """
    size = model.image_size

    @tf.function(autograph=False)
    def trace(images: tf.Tensor) -> dict[str, tf.Tensor]:
        return model(images, default_image_info(1, size))

    trace.get_concrete_function(tf.TensorSpec([1, size, size, 3], tf.float32))
