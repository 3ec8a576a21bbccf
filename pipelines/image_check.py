"""Every image file checked once before training (host side, no TensorFlow), the outcome cached.

An image is **bad** when its file is missing or empty, is not a JPEG/PNG/BMP/GIF/WebP/TIFF, has a
header that cannot be read, does not decode (truncated or corrupt), decodes to another size than its
header says, has another size than the JSON's ``height``/``width`` (often a tool that applied the EXIF
rotation to the annotations but not to the pixels), or has more than ``export.max_image_pixels`` pixels
by its header (a decompression bomb: never decoded). ``data.bad_images=error`` (default) refuses the
dataset with one message listing the first bad images; ``skip`` drops them (and their annotations),
counted as ``bad_images`` and each logged.

Files are checked in parallel threads (OpenCV decodes without the GIL; JPEGs at 1/8 scale, which still
reads every coefficient). Results are cached per image folder in ``.mrcnn_tf2_image_check.json`` beside
the images (or, when that folder is read-only, under ``$XDG_CACHE_HOME/mrcnn_tf2/image_check/`` or
``~/.cache/...``), keyed by the file's relative path, size and modification time, so a second run only
``stat``s the files. The decoders agree with TensorFlow's on what fails (tests/pipelines/test_image_check.py).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os

import cv2
import numpy as np
from absl import logging
from mrcnn_tf2.pipelines.coco import CocoDataset, DatasetError, ImageRecord
from mrcnn_tf2.pipelines.image_header import image_format, read_exif_orientation, read_image_size

from mrcnn_tf2.config.choices import BAD_IMAGES

__all__ = ["CACHE_NAME", "FileFacts", "inspect_file", "cache_path", "check_images"]

CACHE_NAME = ".mrcnn_tf2_image_check.json"
_VERSION = 1
_TOO_LARGE = "too_large"  # status of a file not decoded because its header exceeds the pixel limit


@dataclasses.dataclass(frozen=True)
class FileFacts:
    """What one image file is, independent of the annotations.

    Attributes:
        height, width: from the header (0 when unreadable).
        orientation: the EXIF orientation tag (JPEG) or 0.
        status: ``ok``, ``too_large`` (not decoded: above the pixel limit it was checked with) or an
            error message.
    """

    height: int
    width: int
    orientation: int
    status: str


def _decode_ok(data: bytes, kind: str, height: int, width: int) -> str:
    buffer = np.frombuffer(data, np.uint8)
    if kind == "jpeg":
        image = cv2.imdecode(buffer, cv2.IMREAD_REDUCED_GRAYSCALE_8 | cv2.IMREAD_IGNORE_ORIENTATION)
        expected = (-(-height // 8), -(-width // 8))
    else:
        image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
        expected = (height, width)
    if image is None or image.size == 0:
        return "does not decode (truncated or corrupt file)"
    if image.shape[:2] != expected:
        return f"its header says {height} x {width} but it decodes to another size (corrupt file)"
    return "ok"


def inspect_file(path: str, max_pixels: int) -> FileFacts:
    """Reads one file: header size, EXIF orientation and, below ``max_pixels``, a full decode."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return FileFacts(0, 0, 0, "not found")
    except OSError as e:
        return FileFacts(0, 0, 0, f"cannot be read ({e.strerror})")
    if not data:
        return FileFacts(0, 0, 0, "is empty (0 bytes)")
    kind = image_format(data)
    if kind is None:
        return FileFacts(0, 0, 0, "is not a JPEG, PNG, BMP, GIF, WebP or TIFF file")
    size = read_image_size(data)
    if size is None:
        return FileFacts(0, 0, 0, f"has an unreadable {kind.upper()} header (truncated or corrupt file)")
    height, width = size
    orientation = read_exif_orientation(data) or 0
    if max_pixels and height * width > max_pixels:
        return FileFacts(height, width, orientation, _TOO_LARGE)
    return FileFacts(height, width, orientation, _decode_ok(data, kind, height, width))


def cache_path(image_dir: str) -> str:
    """Where the check results of ``image_dir`` are cached: beside the images, or in the user cache."""
    beside = os.path.join(image_dir, CACHE_NAME)
    if os.access(image_dir, os.W_OK) and (not os.path.exists(beside) or os.access(beside, os.W_OK)):
        return beside
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    digest = hashlib.sha256(os.path.abspath(image_dir).encode()).hexdigest()[:20]
    return os.path.join(root, "mrcnn_tf2", "image_check", f"{digest}.json")


def _read_cache(path: str) -> dict[str, list]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != _VERSION or not isinstance(data.get("files"), dict):
        return {}
    return data["files"]


def _write_cache(path: str, entries: dict[str, list]) -> None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        merged = {**_read_cache(path), **entries}  # another dataset may share the folder
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"version": _VERSION, "files": merged}, f, separators=(",", ":"))
        os.replace(tmp, path)
    except OSError as e:
        logging.warning("image check results not cached in %s (%s); the next run checks again", path, e)


def _problem(record: ImageRecord, facts: FileFacts, max_pixels: int) -> str:
    """Why ``record`` cannot be used ('' when it can)."""
    if facts.status == _TOO_LARGE or (max_pixels and facts.height * facts.width > max_pixels):
        return (f"has {facts.height} x {facts.width} = {facts.height * facts.width:,} pixels by its header, above "
                f"export.max_image_pixels={max_pixels:,}; downscale it (and its annotations) or raise the limit")
    if facts.status != "ok":
        return facts.status
    if (facts.height, facts.width) != (record.height, record.width):
        hint = ""
        if (facts.width, facts.height) == (record.height, record.width):
            hint = (f"; the EXIF orientation is {facts.orientation}, so the annotation tool probably rotated "
                    "the annotations but not the pixels: write the rotation into the file (e.g. "
                    "`mogrify -auto-orient`) or re-export" if facts.orientation >= 5 else
                    "; height and width look swapped in the JSON")
        return (f"is {facts.height} x {facts.width} (height x width) but the JSON says "
                f"{record.height} x {record.width}{hint}")
    return ""


def check_images(dataset: CocoDataset, bad_images: str = "error", max_pixels: int = 0,
                 workers: int | None = None, use_cache: bool = True) -> CocoDataset:
    """Checks every image file of ``dataset`` once (module docstring).

    Args:
        dataset: from ``mrcnn_tf2.pipelines.coco.load_coco`` (with ``check_files=False`` so missing files count as
            bad images here).
        bad_images: ``error`` (refuse) or ``skip`` (drop the bad images, count and log them).
        max_pixels: the ``export.max_image_pixels`` limit; 0 = none.
        workers: threads (default: 4 per CPU core, at most 32).
        use_cache: read and write the cache file (``cache_path``).

    Returns:
        ``dataset`` itself when every image is good, else (``skip``) a copy without the bad images and
        ``skipped["bad_images"]`` set.

    Raises:
        DatasetError: ``bad_images=error`` and at least one image is bad; names the first few, their
            ``images[i]`` entries and the fix.
    """
    if bad_images not in BAD_IMAGES:
        raise ValueError(f"data.bad_images must be one of {BAD_IMAGES}, got {bad_images!r}")
    records = dataset.images
    cache_file = cache_path(dataset.image_dir) if use_cache else ""
    cached = _read_cache(cache_file) if cache_file else {}
    keys = [os.path.relpath(os.path.abspath(r.path), os.path.abspath(dataset.image_dir)) for r in records]
    facts: list[FileFacts | None] = [None] * len(records)
    stats: list[tuple[int, int] | None] = [None] * len(records)
    todo = []
    for i, record in enumerate(records):
        try:
            st = os.stat(record.path)
        except OSError:
            facts[i] = FileFacts(0, 0, 0, f"not found under '{dataset.image_dir}'")
            continue
        if not os.path.isfile(record.path):
            facts[i] = FileFacts(0, 0, 0, "is not a file")
            continue
        stats[i] = (st.st_size, st.st_mtime_ns)
        entry = cached.get(keys[i])
        if isinstance(entry, list) and len(entry) == 6 and tuple(entry[:2]) == stats[i]:
            hit = FileFacts(*entry[2:])
            # A file left undecoded under a lower limit is decoded now that the limit allows it.
            if not (hit.status == _TOO_LARGE and not (max_pixels and hit.height * hit.width > max_pixels)):
                facts[i] = hit
                continue
        todo.append(i)
    if todo:
        count = workers or min(32, 4 * (os.cpu_count() or 1))
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # the bad files are reported below
        try:
            with concurrent.futures.ThreadPoolExecutor(count) as pool:
                for i, result in zip(todo, pool.map(lambda k: inspect_file(records[k].path, max_pixels), todo)):
                    facts[i] = result
        finally:
            cv2.utils.logging.setLogLevel(level)
        if cache_file:
            _write_cache(cache_file, {keys[i]: [*stats[i], *dataclasses.astuple(facts[i])] for i in todo})
        logging.info("%s: checked %d image files (%d from the cache)", dataset.annotation_file, len(todo),
                     len(records) - len(todo))
    bad = [(i, problem) for i, f in enumerate(facts) if (problem := _problem(records[i], f, max_pixels))]
    if not bad:
        return dataset
    lines = [f"'{records[i].file_name}' (image id {records[i].image_id}) {problem}" for i, problem in bad]
    if bad_images == "error":
        shown = "; ".join(lines[:5]) + ("; ..." if len(lines) > 5 else "")
        raise DatasetError(f"{dataset.annotation_file}: {len(bad)} of {len(records)} images in "
                           f"'{dataset.image_dir}' cannot be used: {shown}. Fix or remove these files (and their "
                           "'images' entries), or set data.bad_images=skip to train without them.")
    for line in lines[:20]:
        logging.warning("%s: skipping image %s", dataset.annotation_file, line)
    logging.warning("%s: skipped %d of %d images (data.bad_images=skip)%s", dataset.annotation_file, len(bad),
                    len(records), "; only the first 20 are listed" if len(bad) > 20 else "")
    drop = {i for i, _ in bad}
    skipped = dict(dataset.skipped)
    skipped["bad_images"] = skipped.get("bad_images", 0) + len(bad)
    return dataclasses.replace(dataset, images=tuple(r for i, r in enumerate(records) if i not in drop),
                               skipped=skipped)

