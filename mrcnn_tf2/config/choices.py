"""The project's enumerations, in one TensorFlow-free place.

Every module that accepts one of these values (the config validator, the CLI flags, the builder,
the layers) imports it from here, so adding a choice is a one-line change.
"""

from __future__ import annotations

BACKBONES = ("resnet50", "resnet101", "mobilenetv3")
NORMS = ("frozen_bn", "bn", "gn")
TRAIN_LAYERS = ("heads", "3+", "4+", "5+", "all")
PIXEL_NORMALIZATIONS = ("caffe", "none")
LR_SCHEDULES = ("step", "cosine")
WEIGHT_DECAY_MODES = ("decoupled", "coupled")
MIXED_PRECISION = ("", "float16", "bfloat16")
STRATEGIES = ("one_device", "mirrored", "multi_worker", "tpu")
LOSS_KEYS = ("loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask")
