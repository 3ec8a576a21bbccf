"""The project's enumerations, in one TensorFlow-free place.

Every module that accepts one of these values (the config validator, the CLI flags, the builder,
the layers) imports it from here, so adding a choice is a one-line change.
"""

from __future__ import annotations

BACKBONES = ("resnet50", "resnet101", "mobilenetv3")
NORMS = ("frozen_bn", "bn", "gn")
TRAIN_LAYERS = ("heads", "3+", "4+", "5+", "all")
PIXEL_NORMALIZATIONS = ("caffe", "none", "imagenet")
# Inference resize: long side to model.image_size on a square canvas, or torchvision's short/long side rule.
RESIZE_MODES = ("square", "short_side")
# FPN normalization; "" follows model.norm ("gn" -> "gn", anything else -> none).
FPN_NORMS = ("", "none", "frozen_bn", "bn", "gn")
LR_SCHEDULES = ("step", "cosine")
WEIGHT_DECAY_MODES = ("decoupled", "coupled")
MIXED_PRECISION = ("", "float16", "bfloat16")
# Inference compute precision (eval.precision, --precision; mrcnn_tf2/precision.py). Variables stay float32.
PRECISIONS = ("float32", "bfloat16")
STRATEGIES = ("one_device", "mirrored", "multi_worker", "tpu")
LOSS_KEYS = ("loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask")
BAD_IMAGES = ("error", "skip")  # data.bad_images: refuse the dataset, or drop unusable image files
# Normalization after the box/mask head convs (model.roi.head_norm).
HEAD_NORMS = ("none", "bn", "gn")
# Pasting box-relative masks into images on the host (model.detection.paste_mode; mrcnn_tf2/mask_paste.py).
PASTE_MODES = ("box", "torchvision")
