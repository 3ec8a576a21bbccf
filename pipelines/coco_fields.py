"""Field-level validation of COCO instances JSON: every message names the file and the field.

Used by ``pipelines/coco.py``. Two outcomes, never a third:

- :class:`DatasetError` (refused): the file's structure or its references are wrong, so other records
  would change meaning (missing top-level lists, ids that are not integers, duplicate image or
  category ids, an annotation of an unknown image or category);
- :class:`SkipAnnotation` (one annotation skipped, counted under a key of :data:`SKIP_KEYS` and logged):
  its geometry is unusable (NaN/Inf, strings or wrong lengths in ``bbox``/``segmentation``, negative
  sizes, odd-length polygons, coordinates far outside the image, an RLE of another size, an empty mask).

Fixes that keep an annotation (a polygon part under 3 points dropped, a box clipped to the image) are
counted too.
"""

from __future__ import annotations

import collections
import json
import math
import os
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

__all__ = ["DatasetError", "SkipAnnotation", "SKIP_KEYS", "Problems", "Checker", "read_json", "as_int", "is_number",
           "check_segmentation", "check_bbox"]

# What each counter key means (README "Input pipeline" has the same table).
SKIP_KEYS = {
    "degenerate_polygon_parts": "polygon parts with fewer than 3 points dropped (the instance keeps its other parts)",
    "clipped_boxes": "boxes partly outside the image clipped to it",
    "box_only_masks": "instances without segmentation: the mask is the box",
    "zero_area": "instances skipped: empty mask (zero-area polygon, box or RLE, or wholly outside the image)",
    "non_finite_values": "annotations skipped: NaN or Inf in 'bbox' or 'segmentation'",
    "invalid_bbox": "annotations skipped: 'bbox' is not 4 numbers [x, y, width, height] with width, height >= 0",
    "invalid_segmentation": "annotations skipped: 'segmentation' is neither polygons of numbers nor a valid RLE",
    "odd_length_polygons": "annotations skipped: a polygon with an odd number of coordinates",
    "rle_size_mismatch": "annotations skipped: RLE 'size' differs from the image's [height, width]",
    "far_outside": "annotations skipped: coordinates more than one image size outside the image",
    "no_geometry": "annotations skipped: neither 'segmentation' nor 'bbox'",
    "duplicate_annotations": "annotations skipped: same id and same content as an earlier one",
    "duplicate_annotation_ids": "annotations kept whose id an earlier, different annotation already has",
    "backslash_paths": "file names with Windows separators ('a\\b.jpg') read as 'a/b.jpg'",
    "image_size_from_file": "images without 'width'/'height': read from the file header",
    "bad_images": "images skipped by data.bad_images=skip (unreadable, wrong size or too large)",
}


class DatasetError(ValueError):
    """Invalid dataset input; the message names the file and the field."""


class SkipAnnotation(Exception):  # noqa: N818 - a control-flow signal, not an error
    """This annotation cannot be used; ``key`` is its :data:`SKIP_KEYS` counter."""

    def __init__(self, key: str, detail: str = ""):
        super().__init__(key)
        self.key = key
        self.detail = detail


class Problems:
    """Counts of skipped or fixed problems, with the first few places of each (for the log)."""

    def __init__(self) -> None:
        self.counts: collections.Counter = collections.Counter()
        self.examples: dict[str, list[str]] = collections.defaultdict(list)

    def add(self, key: str, where: str, detail: str = "") -> None:
        self.counts[key] += 1
        if len(self.examples[key]) < 3:
            self.examples[key].append(f"{where}{': ' + detail if detail else ''}")

    def lines(self) -> list[str]:
        """One line per key: ``<count> x <meaning> (e.g. annotations[3] (id 7), ...)``."""
        return [f"{count} x {SKIP_KEYS.get(key, key)} (key '{key}'; e.g. {'; '.join(self.examples[key])})"
                for key, count in sorted(self.counts.items())]


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def as_int(value: Any) -> int | None:
    """``value`` as an int when it is an int or an integral finite float (``3.0``), else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    return None


class Checker:
    """Builds error messages that name the file and the field."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, where: str, message: str) -> DatasetError:
        return DatasetError(f"{self.path}: {where}: {message}")

    def get(self, entry: Any, where: str, key: str, kind: str, required: bool = True) -> Any:
        """``entry[key]`` checked to be ``int`` (integral floats accepted), ``posint`` or ``str``."""
        if not isinstance(entry, dict):
            raise self.fail(where, f"must be a JSON object, got {type(entry).__name__}")
        if key not in entry or (entry[key] is None and not required):
            if required:
                raise self.fail(where, f"missing field '{key}'")
            return None
        value = entry[key]
        if kind == "str":
            if isinstance(value, str):
                return value
            raise self.fail(where, f"field '{key}' must be a string, got {value!r}")
        number = as_int(value)
        if number is None or (kind == "posint" and number <= 0):
            wanted = "a positive integer" if kind == "posint" else "an integer"
            raise self.fail(where, f"field '{key}' must be {wanted}, got {value!r}")
        return number


def read_json(path: str) -> dict:
    """The parsed JSON with the three top-level lists checked; DatasetError naming the fix otherwise."""
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: annotation file not found")
    try:
        with open(path, encoding="utf-8-sig") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text ({e})") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the annotation file ({e.strerror})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: the top level must be a JSON object with 'images', 'annotations' "
                           "and 'categories'")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            hint = (" (an image-info file without labels cannot be trained or evaluated on; export the "
                    "instance annotations)" if key == "annotations" else "")
            raise DatasetError(f"{path}: missing top-level field '{key}'{hint}")
        if not isinstance(data[key], list):
            raise DatasetError(f"{path}: top-level field '{key}' must be a list, got "
                               f"{type(data[key]).__name__}")
    return data


def _polygon_area_perimeter(coords: np.ndarray) -> tuple[float, float]:
    x, y = coords[0::2], coords[1::2]
    area = 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
    perimeter = float(np.hypot(x - np.roll(x, 1), y - np.roll(y, 1)).sum())
    return area, perimeter


def _numbers(values: Any) -> np.ndarray:
    """A flat float64 array of ``values`` (a list of numbers); SkipAnnotation if it is not one."""
    if not isinstance(values, (list, tuple)) or not all(is_number(v) for v in values):
        raise SkipAnnotation("invalid_segmentation", "expected a list of numbers x1, y1, x2, y2, ...")
    array = np.asarray(values, np.float64)
    if not np.isfinite(array).all():
        raise SkipAnnotation("non_finite_values", "NaN or Inf in 'segmentation'")
    return array


def _far_outside(xs: np.ndarray, ys: np.ndarray, height: int, width: int) -> bool:
    return bool(xs.min() < -width or xs.max() > 2 * width or ys.min() < -height or ys.max() > 2 * height)


def _check_rle(segm: dict, height: int, width: int) -> dict:
    size, counts = segm.get("size"), segm.get("counts")
    if size is None or counts is None:
        raise SkipAnnotation("invalid_segmentation", "RLE needs 'size' and 'counts'")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(as_int(s) is not None for s in size)):
        raise SkipAnnotation("invalid_segmentation", f"RLE 'size' must be [height, width], got {size!r}")
    size = [as_int(s) for s in size]
    if size != [height, width]:
        raise SkipAnnotation("rle_size_mismatch", f"RLE size {size}, image [{height}, {width}]")
    if isinstance(counts, list):
        if not all(as_int(c) is not None and c >= 0 for c in counts) or sum(counts) != height * width:
            raise SkipAnnotation("invalid_segmentation", "uncompressed RLE 'counts' must be non-negative "
                                                         f"integers summing to height * width = {height * width}")
        rle = mask_utils.frPyObjects({"size": size, "counts": [int(c) for c in counts]}, height, width)
    elif isinstance(counts, (str, bytes)):
        rle = {"size": size, "counts": counts.encode() if isinstance(counts, str) else counts}
        runs = _rle_string_counts(rle["counts"])
        # pycocotools decodes without bounds checks: a string whose runs do not add up must never reach it.
        if runs is None or min(runs, default=0) < 0 or sum(runs) != height * width:
            raise SkipAnnotation("invalid_segmentation", "RLE 'counts' is not a compressed RLE of "
                                                         f"height * width = {height * width} pixels")
    else:
        raise SkipAnnotation("invalid_segmentation", f"RLE 'counts' must be a string or a list, got "
                                                     f"{type(counts).__name__}")
    try:
        area = int(mask_utils.area(rle))
        mask_utils.toBbox(rle)
    except Exception:  # noqa: BLE001 - pycocotools raises plain Exceptions on bad strings
        raise SkipAnnotation("invalid_segmentation", "RLE 'counts' is not a valid compressed RLE") from None
    if area == 0:
        raise SkipAnnotation("zero_area")
    return {"size": size, "counts": rle["counts"].decode()}


def _rle_string_counts(data: bytes) -> list[int] | None:
    """The run lengths of a COCO compressed RLE string (pycocotools' ``rleFrString``), None if malformed."""
    runs: list[int] = []
    p, n = 0, len(data)
    while p < n:
        x = k = 0
        more = True
        while more:
            if p >= n:
                return None
            c = data[p] - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def check_segmentation(segm: Any, height: int, width: int, problems: Problems, where: str) -> Any:
    """A usable ``segmentation`` (not empty): normalized polygons or RLE, else SkipAnnotation.

    Returns:
        ``list[list[float]]`` polygon parts of at least 3 points each, or ``{"size": [h, w], "counts": str}``
        (compressed RLE). Dropped parts are counted in ``problems``.

    Raises:
        SkipAnnotation: the annotation cannot be used (its key says why).
    """
    if isinstance(segm, dict):
        return _check_rle(segm, height, width)
    if not isinstance(segm, list):
        raise SkipAnnotation("invalid_segmentation", f"got {type(segm).__name__}")
    if all(is_number(v) for v in segm):  # one flat polygon
        segm = [segm]
    parts = []
    for part in segm:
        coords = _numbers(part)
        if len(coords) % 2:
            raise SkipAnnotation("odd_length_polygons", f"{len(coords)} coordinates")
        if len(coords) and _far_outside(coords[0::2], coords[1::2], height, width):
            raise SkipAnnotation("far_outside")
        if len(coords) < 6:
            problems.add("degenerate_polygon_parts", where, f"{len(coords) // 2} points")
            continue
        parts.append(coords)
    if not parts:
        raise SkipAnnotation("zero_area", "no polygon part with 3 or more points")
    area = perimeter = 0.0
    for coords in parts:
        a, p = _polygon_area_perimeter(coords)
        area, perimeter = area + a, perimeter + p
    if area <= 0:
        raise SkipAnnotation("zero_area")
    inside = all(c[0::2].min() >= 0 and c[0::2].max() <= width and c[1::2].min() >= 0 and c[1::2].max() <= height
                 for c in parts)
    out = [c.tolist() for c in parts]
    # A polygon inside the image whose area is large for its perimeter covers some pixel centre; thin
    # ones and ones reaching outside are rasterized (as training does) to see whether any pixel is left.
    if (not inside or area < 2 * perimeter) and int(mask_utils.area(mask_utils.merge(
            mask_utils.frPyObjects(out, height, width)))) == 0:
        raise SkipAnnotation("zero_area", "the polygon covers no pixel centre inside the image")
    return out


def check_bbox(value: Any, height: int, width: int, problems: Problems,
               where: str) -> tuple[float, float, float, float] | None:
    """A COCO ``bbox`` clipped to the image; ``None`` when nothing of it is inside.

    Raises:
        SkipAnnotation: not 4 finite numbers, a negative width/height or far outside the image.
    """
    if not (isinstance(value, (list, tuple)) and len(value) == 4 and all(is_number(v) for v in value)):
        raise SkipAnnotation("invalid_bbox", f"got {value!r}"[:80])
    x, y, w, h = (float(v) for v in value)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise SkipAnnotation("non_finite_values", "NaN or Inf in 'bbox'")
    if w < 0 or h < 0:
        raise SkipAnnotation("invalid_bbox", f"negative width or height {[x, y, w, h]}")
    if _far_outside(np.array([x, x + w]), np.array([y, y + h]), height, width):
        raise SkipAnnotation("far_outside")
    x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if (x1, y1, x2, y2) != (x, y, x + w, y + h):
        problems.add("clipped_boxes", where)
    if x2 <= x1 or y2 <= y1:
        return None
    return (x1, y1, x2 - x1, y2 - y1)
