"""COCO-format instance annotations: loading, validation, host-side masks and evaluation ground truth.

This module reads a COCO instances JSON (as written by COCO itself, CVAT, labelme and Roboflow
exports) into validated, immutable records:

- images: any integer ids (0 and gaps allowed), ``file_name`` relative to the image folder (sub-folders
  allowed) or absolute; ``width``/``height`` read from the file header when missing;
- categories: any integer ids, mapped to contiguous labels ``1..K`` in ascending id order (label ``i``
  is ``category_ids[i - 1]``); the mapping travels with the dataset (and into TFRecords);
- annotations: polygons (several parts per instance, or one flat list), RLE with compressed string
  counts or uncompressed list counts, or only a ``bbox`` (the mask is then the box). ``iscrowd=1``
  regions never become training instances; they are kept for evaluation (pycocotools ignores
  detections on them).

What is refused (:class:`DatasetError`, naming the file and the field) and what is skipped (counted in
``CocoDataset.skipped`` and logged) is decided in ``pipelines/coco_fields.py``. Masks are rendered on the
host with pycocotools (:func:`instance_masks`); :func:`ground_truth` writes the same instances back as
a COCO dict, so evaluation scores against exactly what training learns from. Nothing here imports
TensorFlow. ``dataset_paths`` and ``category_mapping`` live in ``pipelines/dataset_info.py``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from absl import logging
from mrcnn_tf2.pipelines.coco_fields import (
    Checker,
    DatasetError,
    Problems,
    SkipAnnotation,
    check_bbox,
    check_segmentation,
    is_number,
    read_json,
)
from mrcnn_tf2.pipelines.dataset_info import DatasetPaths, category_mapping, dataset_paths
from mrcnn_tf2.pipelines.image_header import read_image_size
from pycocotools import mask as mask_utils

__all__ = [
    "DatasetError",
    "Instance",
    "ImageRecord",
    "CocoDataset",
    "DatasetPaths",
    "load_coco",
    "log_problems",
    "instance_masks",
    "ground_truth",
    "dataset_paths",
    "category_mapping",
]


@dataclass(frozen=True)
class Instance:
    """One object (or crowd region) of an image.

    Attributes:
        label: contiguous class label in ``1..K``.
        category_id: the dataset's category id.
        segmentation: polygons (``list[list[float]]``, x/y pairs in original pixels, parts of >= 3
            points), a compressed RLE dict (``{"size": [h, w], "counts": str}``) or ``None`` (the mask is
            the bbox).
        bbox: ``(x, y, w, h)`` float in original pixels, clipped to the image.
        annotation_id: the annotation's ``id`` or ``None`` when it has none.
        area: the annotation's ``area`` when it is a finite number >= 0, else ``None``.
    """

    label: int
    category_id: int
    segmentation: Any
    bbox: tuple[float, float, float, float]
    annotation_id: int | None = None
    area: float | None = None


@dataclass(frozen=True)
class ImageRecord:
    """One image: ``path`` is absolute-or-cwd-relative; ``instances`` excludes crowd regions (``crowd``)."""

    image_id: int
    file_name: str
    path: str
    height: int
    width: int
    instances: tuple[Instance, ...] = ()
    num_crowd: int = 0
    crowd: tuple[Instance, ...] = ()


@dataclass(frozen=True)
class CocoDataset:
    """A validated COCO dataset.

    Attributes:
        annotation_file: path of the instances JSON.
        image_dir: folder the ``file_name`` entries are relative to.
        category_ids: label ``i`` (1-based) -> dataset category id ``category_ids[i - 1]``.
        category_names: names in the same order.
        images: the image records in file order.
        skipped: counts of skipped or fixed problems (keys: ``mrcnn_tf2.pipelines.coco_fields.SKIP_KEYS``).
        num_annotations: entries of the JSON's ``annotations`` list.
        problems: one line per kind of skipped or fixed problem, with examples (what is logged).
    """

    annotation_file: str
    image_dir: str
    category_ids: tuple[int, ...]
    category_names: tuple[str, ...]
    images: tuple[ImageRecord, ...]
    skipped: Mapping[str, int] = field(default_factory=dict)
    num_annotations: int = 0
    problems: tuple[str, ...] = ()

    @property
    def num_categories(self) -> int:
        """K, the number of object categories (the model has K + 1 classes with background)."""
        return len(self.category_ids)

    @property
    def num_instances(self) -> int:
        """Non-crowd instances over all images (what training learns from)."""
        return sum(len(r.instances) for r in self.images)


def load_coco(annotation_file: str, image_dir: str, *, category_ids: Sequence[int] | None = None,
              check_files: bool = True, skip_empty: bool = False, log: bool = True) -> CocoDataset:
    """Reads and validates a COCO instances JSON (the rules: module docstring and ``coco_fields``).

    Args:
        annotation_file: path of the JSON.
        image_dir: folder that ``images[*].file_name`` is relative to.
        category_ids: an existing mapping (label ``i`` -> ``category_ids[i - 1]``), e.g. the training
            set's when loading the validation set; by default the JSON's categories in ascending id order.
        check_files: check that every image file exists (``mrcnn_tf2.pipelines.image_check`` checks their content).
        skip_empty: drop images without non-crowd instances (kept as negatives by default).
        log: log what was skipped or fixed now (else the caller logs ``CocoDataset.problems``).

    Returns:
        A :class:`CocoDataset`; ``skipped`` counts what was skipped or fixed (keys: ``coco_fields.SKIP_KEYS``).

    Raises:
        DatasetError: malformed JSON, missing or mistyped fields, duplicate image or category ids, an
            annotation that points at an unknown image or category, or a missing image file.
    """
    chk = Checker(annotation_file)
    data = read_json(annotation_file)
    problems = Problems()
    names_by_id = _read_categories(data["categories"], chk)
    if category_ids is None:
        ids = tuple(sorted(names_by_id))
    else:
        ids = tuple(int(c) for c in category_ids)
    if not ids:
        raise chk.fail("categories", "the dataset has no categories; add at least one {\"id\": 1, \"name\": ...}")
    label_of = {cid: i + 1 for i, cid in enumerate(ids)}
    names = tuple(names_by_id.get(cid, str(cid)) for cid in ids)
    images = _read_images(data["images"], image_dir, chk, problems)
    _read_annotations(data["annotations"], images, names_by_id, label_of, chk, problems)

    records = []
    missing = []
    for iid, img in images.items():
        path = os.path.join(image_dir, img["file_name"])
        if check_files and not os.path.isfile(path):
            missing.append((img["where"], iid, img["file_name"]))
        if skip_empty and not img["instances"]:
            continue
        records.append(ImageRecord(iid, img["file_name"], path, img["height"], img["width"],
                                   tuple(img["instances"]), len(img["crowd"]), tuple(img["crowd"])))
    if missing:
        where, iid, name = missing[0]
        raise chk.fail(f"{where} (id {iid})", f"field 'file_name' = '{name}': image file not found under "
                                              f"'{image_dir}' ({len(missing)} of {len(images)} images missing)")
    dataset = CocoDataset(annotation_file, image_dir, ids, names, tuple(records), dict(problems.counts),
                          len(data["annotations"]), tuple(problems.lines()))
    if log:
        log_problems(dataset)
    return dataset


def log_problems(dataset: CocoDataset) -> None:
    """Logs one warning per kind of skipped or fixed problem, with examples."""
    for line in dataset.problems:
        logging.warning("%s: %s", dataset.annotation_file, line)


def _read_categories(entries: list, chk: Checker) -> dict[int, str]:
    names_by_id: dict[int, str] = {}
    for i, cat in enumerate(entries):
        where = f"categories[{i}]"
        cid = chk.get(cat, where, "id", "int")
        name = chk.get(cat, where, "name", "str")
        if cid in names_by_id:
            raise chk.fail(where, f"duplicate category id {cid} (also '{names_by_id[cid]}'); give every "
                                  "category its own id")
        names_by_id[cid] = name
    return names_by_id


def _size_from_file(path: str) -> tuple[int, int] | None:
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 18)
            size = read_image_size(head)
            if size is None and len(head) == 1 << 18:
                size = read_image_size(head + f.read())
    except OSError:
        return None
    return size


def _read_images(entries: list, image_dir: str, chk: Checker, problems: Problems) -> dict[int, dict]:
    images: dict[int, dict] = {}
    for i, img in enumerate(entries):
        where = f"images[{i}]"
        iid = chk.get(img, where, "id", "int")
        if iid in images:
            raise chk.fail(where, f"duplicate image id {iid} (also {images[iid]['where']}); every image needs "
                                  "its own id, or the annotations are ambiguous")
        where = f"{where} (id {iid})"
        name = chk.get(img, where, "file_name", "str")
        if not name.strip():
            raise chk.fail(where, "field 'file_name' is empty")
        if "\\" in name and not os.path.exists(os.path.join(image_dir, name)):
            if os.path.exists(os.path.join(image_dir, name.replace("\\", "/"))):  # a Windows export
                name = name.replace("\\", "/")
                problems.add("backslash_paths", where)
        height = chk.get(img, where, "height", "posint", required=False)
        width = chk.get(img, where, "width", "posint", required=False)
        if height is None or width is None:
            size = _size_from_file(os.path.join(image_dir, name))
            if size is None:
                raise chk.fail(where, f"fields 'height'/'width' are missing and the size cannot be read from "
                                      f"'{os.path.join(image_dir, name)}'; add them")
            if (height or size[0]) != size[0] or (width or size[1]) != size[1]:
                raise chk.fail(where, f"only one of 'height'/'width' given and it differs from the file's "
                                      f"{size[0]} x {size[1]}")
            height, width = size
            problems.add("image_size_from_file", where)
        images[iid] = {"file_name": name, "height": height, "width": width, "instances": [], "crowd": [],
                       "where": where}
    return images


def _read_annotations(entries: list, images: dict[int, dict], names_by_id: Mapping[int, str],
                      label_of: Mapping[int, int], chk: Checker, problems: Problems) -> None:
    first_index: dict[int, int] = {}
    for i, ann in enumerate(entries):
        where = f"annotations[{i}]"
        ann_id = chk.get(ann, where, "id", "int", required=False)
        if ann_id is not None:
            where = f"annotations[{i}] (id {ann_id})"
        iid = chk.get(ann, where, "image_id", "int")
        cid = chk.get(ann, where, "category_id", "int")
        if iid not in images:
            raise chk.fail(where, f"field 'image_id' = {iid} refers to no entry of 'images'; add the image or "
                                  "remove its annotations")
        if cid not in names_by_id:
            raise chk.fail(where, f"field 'category_id' = {cid} refers to no entry of 'categories' "
                                  f"{sorted(names_by_id)}; add the category or remove its annotations")
        if cid not in label_of:
            raise chk.fail(where, f"field 'category_id' = {cid} is not in the training category mapping "
                                  f"{list(label_of)}")
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1, True, False, None):
            raise chk.fail(where, f"field 'iscrowd' must be 0 or 1, got {crowd!r}")
        if ann_id is not None:
            if ann_id in first_index:
                if entries[first_index[ann_id]] == ann:
                    problems.add("duplicate_annotations", where)
                    continue
                problems.add("duplicate_annotation_ids", where)
            else:
                first_index[ann_id] = i
        img = images[iid]
        try:
            segm, box = _geometry(ann, img["height"], img["width"], problems, where)
        except SkipAnnotation as skip:
            problems.add(skip.key, where, skip.detail)
            continue
        area = ann.get("area")
        area = float(area) if is_number(area) and math.isfinite(area) and area >= 0 else None
        instance = Instance(label_of[cid], cid, segm, box, ann_id, area)
        img["crowd" if crowd else "instances"].append(instance)


def _geometry(ann: dict, height: int, width: int, problems: Problems,
              where: str) -> tuple[Any, tuple[float, float, float, float]]:
    """``(segmentation or None, clipped xywh box)`` of one annotation, or SkipAnnotation."""
    segm = ann.get("segmentation")
    bbox = ann.get("bbox")
    if segm in (None, [], {}) and bbox is None:
        raise SkipAnnotation("no_geometry")
    box = check_bbox(bbox, height, width, problems, where) if bbox is not None else None
    if segm in (None, [], {}):
        if box is None:
            raise SkipAnnotation("zero_area", "the box has no area inside the image")
        problems.add("box_only_masks", where)
        return None, box
    segm = check_segmentation(segm, height, width, problems, where)
    if box is None:  # no bbox, or none inside the image: the mask's
        x, y, bw, bh = mask_utils.toBbox(_to_rle(segm, height, width)).tolist()
        box = (x, y, bw, bh)
    return segm, box


def _to_rle(segmentation: Any, height: int, width: int) -> dict:
    if segmentation is None:
        raise ValueError("a box-only instance has no segmentation")
    if isinstance(segmentation, dict):
        return {"size": segmentation["size"], "counts": segmentation["counts"].encode()}
    return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))


def instance_masks(record: ImageRecord) -> np.ndarray:
    """Renders the instance masks of one image with pycocotools.

    Args:
        record: an image record.

    Returns:
        ``[N, H, W]`` uint8 in {0, 1}, in ``record.instances`` order (N may be 0). Box-only instances
        get the pixels whose centres lie inside their box.
    """
    h, w = record.height, record.width
    masks = np.zeros((len(record.instances), h, w), np.uint8)
    for i, inst in enumerate(record.instances):
        if inst.segmentation is None:
            _fill_box(masks[i], inst.bbox)
        else:
            masks[i] = mask_utils.decode(_to_rle(inst.segmentation, h, w))
    return masks


def _fill_box(mask: np.ndarray, bbox: tuple[float, float, float, float]) -> None:
    """Sets the pixels of ``mask [H, W]`` whose centres lie inside the xywh box."""
    x, y, bw, bh = bbox
    y1, y2 = int(np.ceil(y - 0.5)), int(np.ceil(y + bh - 0.5))
    x1, x2 = int(np.ceil(x - 0.5)), int(np.ceil(x + bw - 0.5))
    mask[max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)] = 1


def _gt_annotation(inst: Instance, record: ImageRecord, ann_id: int, crowd: bool) -> dict[str, Any]:
    if inst.segmentation is None:  # box-only: the mask training renders, as an RLE
        mask = np.zeros((record.height, record.width), np.uint8)
        _fill_box(mask, inst.bbox)
        rle = mask_utils.encode(np.asfortranarray(mask))
        segmentation: Any = {"size": [record.height, record.width], "counts": rle["counts"].decode()}
    else:
        segmentation = inst.segmentation
    area = inst.area
    if area is None:
        area = float(mask_utils.area(_to_rle(segmentation, record.height, record.width)))
    return {"id": ann_id, "image_id": record.image_id, "category_id": inst.category_id,
            "iscrowd": int(crowd), "bbox": list(inst.bbox), "area": area, "segmentation": segmentation}


def ground_truth(dataset: CocoDataset) -> dict[str, Any]:
    """The dataset as a COCO dict for pycocotools: the instances and crowd regions that survived the checks.

    Annotation ids are renumbered ``1..`` (duplicates in the file do not collide); every annotation has
    ``iscrowd``, ``area`` (the file's when valid, else the mask's) and a segmentation pycocotools reads
    (polygons of >= 3 points, or RLE; box-only instances get the RLE of the mask training uses).

    Returns:
        ``{"images": [...], "annotations": [...], "categories": [...]}`` over ``dataset.images``.
    """
    images, annotations = [], []
    for record in dataset.images:
        images.append({"id": record.image_id, "file_name": record.file_name, "height": record.height,
                       "width": record.width})
        for crowd, instances in ((False, record.instances), (True, record.crowd)):
            for inst in instances:
                annotations.append(_gt_annotation(inst, record, len(annotations) + 1, crowd))
    categories = [{"id": cid, "name": name} for cid, name in zip(dataset.category_ids, dataset.category_names)]
    return {"images": images, "annotations": annotations, "categories": categories}
