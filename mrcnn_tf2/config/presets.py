"""Named presets: each is a function returning a ``Config`` that differs from the defaults."""

from __future__ import annotations

import typing

from mrcnn_tf2.config.schema import (
    Config,
    DataConfig,
    DetectionConfig,
    EvalConfig,
    ModelConfig,
    ROIConfig,
    RPNConfig,
    TrainConfig,
)


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


def _torchvision(v2: bool) -> Config:
    """torchvision's maskrcnn_resnet50_fpn (v1) / maskrcnn_resnet50_fpn_v2 (v2) at inference.

    ResNet-50 with the stride on the 3x3 convs, no conv biases, frozen batch norm (eps 0 for the v1 COCO
    file, whose loader sets it so; 1e-5 for v2, a BatchNorm2d in eval mode); FPN P2-P6 (P6 = stride-2
    max-pool of P5; v2 with batch norm, trainable like torchvision's); anchors 32..512 x (0.5, 1, 2),
    rounded, offset 0; RPN with sigmoid scores, min_size 1e-3, per-level top-k and NMS; ImageNet mean/std
    on RGB in [0, 1], short side 800 / long side 1333, each side padded to 32; 91 outputs (label i = COCO
    category id i). The training canvas (model.image_size) stays square.
    """
    return Config(
        name="torchvision_r50_fpn_v2" if v2 else "torchvision_r50_fpn",
        model=ModelConfig(
            backbone="resnet50",
            norm="frozen_bn",
            train_layers="3+",  # torchvision's trainable_backbone_layers=3: stem and res2 frozen
            image_size=1024,
            num_classes=91,
            pixel_normalization="imagenet",
            rpn=RPNConfig(head_convs=2 if v2 else 1, min_box_size=1e-3, sigmoid_scores=True),
            # ROIAlign sampling_ratio=2, aligned=False and torchvision's LevelMapper; v2: 4conv1fc box head
            # and mask head with batch norm.
            roi=ROIConfig(roi_align_aligned=False, sampling_ratio=2, level_eps=1e-6,
                          box_head_convs=4 if v2 else 0, box_head_fcs=1 if v2 else 2,
                          head_norm="bn" if v2 else "none"),
            # Every (ROI, class) candidate with score > 0.05 and sides >= 1e-2 enters per-class NMS 0.5.
            detection=DetectionConfig(max_detections=100, score_threshold=0.05, nms_iou_threshold=0.5,
                                      pre_nms_topk=0, min_box_size=1e-2, paste_mode="torchvision"),
            resize_mode="short_side",
            min_size=800,
            max_size=1333,
            size_divisibility=32,
            resnet_stride_in_1x1=False,
            backbone_conv_bias=False,
            backbone_norm_epsilon=1e-5 if v2 else 0.0,
            fpn_norm="bn" if v2 else "none",  # torchvision v2: BatchNorm2d (eval: moving statistics, eps 1e-5)
            bn_momentum=0.9,  # torch's BatchNorm2d momentum 0.1 in Keras' convention (v2's FPN and heads)
            anchor_offset=0.0,
            anchor_rounding=True,
        ),
        data=DataConfig(data_dir="data/coco"),
        # torch.optim.SGD's coupled decay, on biases too (references/detection/train.py decays every parameter)
        train=TrainConfig(weight_decay_mode="coupled", weight_decay_biases=True),
    )


PRESETS: dict[str, typing.Callable[[], Config]] = {
    "shapes": _shapes,
    "coco_r50_fpn": lambda: _coco("resnet50"),
    "coco_r101_fpn": lambda: _coco("resnet101"),
    "torchvision_r50_fpn": lambda: _torchvision(v2=False),
    "torchvision_r50_fpn_v2": lambda: _torchvision(v2=True),
}

