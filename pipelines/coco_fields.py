"""Field-level validation of COCO instances JSON: every error names the file and the field.

Used by ``pipelines/coco.py``; recoverable problems are counted in a ``collections.Counter`` instead of
raising (degenerate polygon parts, zero-area instances, boxes clipped to the image).
"""

from __future__ import annotations

import collections
import json
import os
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

__all__ = ["DatasetError", "Checker", "read_json", "check_segmentation", "check_bbox"]


class DatasetError(ValueError):
    """Invalid dataset input; the message names the file and the field."""


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


class Checker:
    """Builds error messages that name the file and the field."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, where: str, message: str) -> DatasetError:
        return DatasetError(f"{self.path}: {where}: {message}")

    def get(self, entry: Any, where: str, key: str, kind: str, required: bool = True) -> Any:
        if not isinstance(entry, dict):
            raise self.fail(where, f"must be a JSON object, got {type(entry).__name__}")
        if key not in entry:
            if required:
                raise self.fail(where, f"missing field '{key}'")
            return None
        value = entry[key]
        ok = {"int": _is_int, "str": lambda v: isinstance(v, str),
              "posint": lambda v: _is_int(v) and v > 0}[kind](value)
        if not ok:
            raise self.fail(where, f"field '{key}' must be {kind.replace('posint', 'a positive int')}, "
                                   f"got {value!r}")
        return value


def read_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: annotation file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text ({e})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: the top level must be a JSON object with 'images', 'annotations' "
                           "and 'categories'")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DatasetError(f"{path}: missing top-level field '{key}'")
        if not isinstance(data[key], list):
            raise DatasetError(f"{path}: top-level field '{key}' must be a list")
    return data


def _polygon_area(coords: np.ndarray) -> float:
    x, y = coords[0::2], coords[1::2]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def check_segmentation(segm: Any, where: str, height: int, width: int, chk: Checker,
                        skipped: collections.Counter) -> Any:
    """Validates one ``segmentation``; returns a normalized value or ``None`` to skip the instance."""
    if isinstance(segm, dict):
        size = segm.get("size")
        counts = segm.get("counts")
        if size is None or counts is None:
            raise chk.fail(where, "RLE field 'segmentation' needs 'size' and 'counts'")
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_int(s) for s in size)):
            raise chk.fail(where, f"field 'segmentation.size' must be [height, width], got {size!r}")
        if list(size) != [height, width]:
            raise chk.fail(where, f"field 'segmentation.size' {list(size)} differs from the image's "
                                  f"[height, width] = [{height}, {width}]")
        if isinstance(counts, list):
            if not all(_is_int(c) and c >= 0 for c in counts) or sum(counts) != height * width:
                raise chk.fail(where, "field 'segmentation.counts' (uncompressed RLE) must be non-negative "
                                      f"ints summing to height * width = {height * width}")
            rle = mask_utils.frPyObjects({"size": list(size), "counts": counts}, height, width)
        elif isinstance(counts, (str, bytes)):
            rle = {"size": list(size), "counts": counts.encode() if isinstance(counts, str) else counts}
        else:
            raise chk.fail(where, f"field 'segmentation.counts' must be a string or a list, got "
                                  f"{type(counts).__name__}")
        try:
            area = int(mask_utils.area(rle))
        except Exception as e:  # noqa: BLE001 - pycocotools raises plain Exceptions on bad strings
            raise chk.fail(where, f"field 'segmentation.counts' is not a valid RLE string ({e})") from None
        if area == 0:
            skipped["zero_area"] += 1
            return None
        return {"size": list(size), "counts": rle["counts"].decode()}
    if not isinstance(segm, list):
        raise chk.fail(where, f"field 'segmentation' must be a list of polygons or an RLE object, "
                              f"got {type(segm).__name__}")
    if segm and all(_is_number(v) for v in segm):  # one flat polygon
        segm = [segm]
    parts = []
    for j, part in enumerate(segm):
        if not isinstance(part, list) or not all(_is_number(v) for v in part):
            raise chk.fail(where, f"field 'segmentation[{j}]' must be a list of numbers x1, y1, x2, y2, ...")
        if len(part) % 2:
            raise chk.fail(where, f"field 'segmentation[{j}]' has an odd number of coordinates ({len(part)})")
        if len(part) < 6:
            skipped["degenerate_polygon_parts"] += 1
            continue
        parts.append([float(v) for v in part])
    if not parts:
        return None
    if sum(_polygon_area(np.asarray(p)) for p in parts) <= 0:
        skipped["zero_area"] += 1
        return None
    return parts


def check_bbox(value: Any, where: str, height: int, width: int, chk: Checker,
                skipped: collections.Counter) -> tuple[float, float, float, float] | None:
    if not (isinstance(value, (list, tuple)) and len(value) == 4 and all(_is_number(v) for v in value)):
        raise chk.fail(where, f"field 'bbox' must be [x, y, width, height], got {value!r}")
    x, y, w, h = (float(v) for v in value)
    x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if (x1, y1, x2, y2) != (x, y, x + w, y + h):
        skipped["clipped_boxes"] += 1
    if x2 <= x1 or y2 <= y1:
        return None
    return (x1, y1, x2 - x1, y2 - y1)
