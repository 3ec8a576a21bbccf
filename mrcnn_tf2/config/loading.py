"""Loading configs: presets by name, YAML/JSON files, dotted overrides and JSON-ready dicts."""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from collections.abc import Mapping
from typing import Any

from mrcnn_tf2.config.presets import PRESETS
from mrcnn_tf2.config.schema import Config, ConfigError
from mrcnn_tf2.config.validation import validate


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

