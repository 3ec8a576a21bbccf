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


PRESETS: dict[str, typing.Callable[[], Config]] = {
    "shapes": _shapes,
    "coco_r50_fpn": lambda: _coco("resnet50"),
    "coco_r101_fpn": lambda: _coco("resnet101"),
}

