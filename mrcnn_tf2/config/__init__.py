"""Configuration: frozen dataclasses, named presets, dotted overrides and validation.

This package owns every hyperparameter of the project. It imports no TensorFlow, so the CLI can
validate a config (and fail with a clear message) before TensorFlow starts. ``builder.py`` is the
only code that turns a config into layers; layers themselves take plain values.

- ``schema``: the dataclasses (``Config`` and its sections) and ``ConfigError``;
- ``choices``: the enumerations (backbones, norms, strategies, loss keys, ...);
- ``presets``: the named presets;
- ``loading``: ``preset``, ``load``, ``resolve``, ``apply_overrides``, ``from_dict``, ``to_dict``;
- ``validation``: ``validate``.
"""

from mrcnn_tf2.config.choices import (
    BACKBONES,
    LOSS_KEYS,
    LR_SCHEDULES,
    MIXED_PRECISION,
    NORMS,
    PIXEL_NORMALIZATIONS,
    PRECISIONS,
    STRATEGIES,
    TRAIN_LAYERS,
)
from mrcnn_tf2.config.loading import apply_overrides, from_dict, load, preset, resolve, to_dict
from mrcnn_tf2.config.presets import PRESETS
from mrcnn_tf2.config.schema import (
    AugmentConfig,
    Config,
    ConfigError,
    DataConfig,
    DetectionConfig,
    EvalConfig,
    ExportConfig,
    ModelConfig,
    ROIConfig,
    RPNConfig,
    TrainConfig,
)
from mrcnn_tf2.config.validation import validate

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
    "ExportConfig",
    "PRESETS",
    "BACKBONES",
    "NORMS",
    "TRAIN_LAYERS",
    "PIXEL_NORMALIZATIONS",
    "LR_SCHEDULES",
    "MIXED_PRECISION",
    "PRECISIONS",
    "STRATEGIES",
    "LOSS_KEYS",
    "preset",
    "load",
    "resolve",
    "from_dict",
    "to_dict",
    "apply_overrides",
    "validate",
]
