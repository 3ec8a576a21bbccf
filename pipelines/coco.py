"""COCO-format instance annotations: loading, validation, the category mapping and host-side masks.

This module owns everything that reads a COCO instances JSON (as written by COCO itself, CVAT, labelme
and Roboflow exports) and turns it into validated, immutable records:

- images: any integer ids (0 and gaps allowed), ``file_name`` relative to the image folder (sub-folders
  allowed) or absolute;
- categories: any integer ids, mapped to contiguous labels ``1..K`` in ascending id order (label ``i``
  is ``category_ids[i - 1]``); the mapping travels with the dataset (and into TFRecords);
- annotations: polygons (several parts per instance, or one flat list), RLE with compressed string
  counts or uncompressed list counts, or only a ``bbox`` (the mask is then the box). ``iscrowd=1``
  regions are counted but never become ground-truth instances.

Bad input raises :class:`DatasetError` naming the file and the field (checks in
``pipelines/coco_fields.py``). Recoverable problems are
counted in ``CocoDataset.skipped`` and logged: polygon parts with fewer than 3 points, instances whose
area is zero, boxes outside the image (clipped). Masks are rendered on the host with pycocotools
(:func:`instance_masks`); nothing here runs inside a TensorFlow graph. :func:`dataset_paths` picks the
files for a mode, generating the built-in shapes dataset when no dataset is configured.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from absl import logging
from pycocotools import mask as mask_utils

from pipelines.coco_fields import Checker, DatasetError, check_bbox, check_segmentation, read_json

__all__ = [
    "DatasetError",
    "Instance",
    "ImageRecord",
    "CocoDataset",
    "DatasetPaths",
    "load_coco",
    "instance_masks",
    "dataset_paths",
    "category_mapping",
]


@dataclass(frozen=True)
class Instance:
    """One non-crowd object of an image.

    Attributes:
        label: contiguous class label in ``1..K``.
        category_id: the dataset's category id.
        segmentation: polygons (``list[list[float]]``, x/y pairs in original pixels), an RLE dict
            (``{"size": [h, w], "counts": str | list[int]}``) or ``None`` (the mask is the bbox).
        bbox: ``(x, y, w, h)`` float in original pixels, clipped to the image.
        annotation_id: the annotation's ``id`` or ``None`` when it has none.
    """

    label: int
    category_id: int
    segmentation: Any
    bbox: tuple[float, float, float, float]
    annotation_id: int | None = None


@dataclass(frozen=True)
class ImageRecord:
    """One image: ``path`` is absolute-or-cwd-relative; ``instances`` excludes crowd regions."""

    image_id: int
    file_name: str
    path: str
    height: int
    width: int
    instances: tuple[Instance, ...] = ()
    num_crowd: int = 0


@dataclass(frozen=True)
class CocoDataset:
    """A validated COCO dataset.

    Attributes:
        annotation_file: path of the instances JSON (what pycocotools evaluates against).
        image_dir: folder the ``file_name`` entries are relative to.
        category_ids: label ``i`` (1-based) -> dataset category id ``category_ids[i - 1]``.
        category_names: names in the same order.
        images: the image records in file order.
        skipped: counts of recoverable problems (e.g. ``"degenerate_polygon_parts"``).
    """

    annotation_file: str
    image_dir: str
    category_ids: tuple[int, ...]
    category_names: tuple[str, ...]
    images: tuple[ImageRecord, ...]
    skipped: Mapping[str, int] = field(default_factory=dict)

    @property
    def num_categories(self) -> int:
        """K, the number of object categories (the model has K + 1 classes with background)."""
        return len(self.category_ids)


@dataclass(frozen=True)
class DatasetPaths:
    """Files for one mode: a COCO JSON and its image folder, and/or a TFRecord glob (train only)."""

    annotations: str
    images: str
    tfrecords: str = ""


def load_coco(annotation_file: str, image_dir: str, *, category_ids: Sequence[int] | None = None,
              check_files: bool = True, skip_empty: bool = False) -> CocoDataset:
    """Reads and validates a COCO instances JSON.

    Args:
        annotation_file: path of the JSON.
        image_dir: folder that ``images[*].file_name`` is relative to.
        category_ids: an existing mapping (label ``i`` -> ``category_ids[i - 1]``), e.g. the training
            set's when loading the validation set; by default the JSON's categories in ascending id order.
        check_files: check that every image file exists.
        skip_empty: drop images without non-crowd instances (kept as negatives by default).

    Returns:
        A :class:`CocoDataset`.

    Raises:
        DatasetError: malformed JSON, missing or mistyped fields, duplicate ids, an annotation that
            points at an unknown image or category, or a missing image file.
    """
    chk = Checker(annotation_file)
    data = read_json(annotation_file)
    names_by_id: dict[int, str] = {}
    for i, cat in enumerate(data["categories"]):
        where = f"categories[{i}]"
        cid = chk.get(cat, where, "id", "int")
        name = chk.get(cat, where, "name", "str")
        if cid in names_by_id:
            raise chk.fail(where, f"duplicate category id {cid}")
        names_by_id[cid] = name
    if category_ids is None:
        ids = tuple(sorted(names_by_id))
    else:
        ids = tuple(int(c) for c in category_ids)
    if not ids:
        raise chk.fail("categories", "the dataset has no categories")
    label_of = {cid: i + 1 for i, cid in enumerate(ids)}
    names = tuple(names_by_id.get(cid, str(cid)) for cid in ids)

    images: dict[int, dict] = {}
    order: list[int] = []
    for i, img in enumerate(data["images"]):
        where = f"images[{i}]"
        iid = chk.get(img, where, "id", "int")
        if iid in images:
            raise chk.fail(where, f"duplicate image id {iid}")
        entry = {"file_name": chk.get(img, where, "file_name", "str"),
                 "height": chk.get(img, where, "height", "posint"),
                 "width": chk.get(img, where, "width", "posint"),
                 "instances": [], "num_crowd": 0, "where": where}
        images[iid] = entry
        order.append(iid)

    skipped: collections.Counter = collections.Counter()
    for i, ann in enumerate(data["annotations"]):
        where = f"annotations[{i}]"
        ann_id = chk.get(ann, where, "id", "int", required=False)
        if ann_id is not None:
            where = f"annotations[{i}] (id {ann_id})"
        iid = chk.get(ann, where, "image_id", "int")
        cid = chk.get(ann, where, "category_id", "int")
        if iid not in images:
            raise chk.fail(where, f"field 'image_id' = {iid} refers to no entry of 'images'")
        if cid not in names_by_id:
            raise chk.fail(where, f"field 'category_id' = {cid} refers to no entry of 'categories'")
        if cid not in label_of:
            raise chk.fail(where, f"field 'category_id' = {cid} is not in the training category mapping "
                                  f"{list(ids)}")
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1, True, False):
            raise chk.fail(where, f"field 'iscrowd' must be 0 or 1, got {crowd!r}")
        img = images[iid]
        if crowd:
            img["num_crowd"] += 1
            continue
        h, w = img["height"], img["width"]
        segm = ann.get("segmentation")
        bbox = ann.get("bbox")
        if segm in (None, [], {}) and bbox is None:
            raise chk.fail(where, "needs a field 'segmentation' or 'bbox'")
        box = check_bbox(bbox, where, h, w, chk, skipped) if bbox is not None else None
        if segm in (None, [], {}):
            if box is None:
                skipped["zero_area"] += 1
                continue
            skipped["box_only_masks"] += 1
            segm = None
        else:
            segm = check_segmentation(segm, where, h, w, chk, skipped)
            if segm is None:
                continue
            if box is None:
                x, y, bw, bh = mask_utils.toBbox(_to_rle(segm, h, w)).tolist()
                box = (x, y, bw, bh)
        img["instances"].append(Instance(label_of[cid], cid, segm, box, ann_id))

    records = []
    missing = []
    for iid in order:
        img = images[iid]
        path = os.path.join(image_dir, img["file_name"])
        if check_files and not os.path.isfile(path):
            missing.append((img["where"], iid, img["file_name"]))
        if skip_empty and not img["instances"]:
            continue
        records.append(ImageRecord(iid, img["file_name"], path, img["height"], img["width"],
                                   tuple(img["instances"]), img["num_crowd"]))
    if missing:
        where, iid, name = missing[0]
        raise chk.fail(f"{where} (id {iid})", f"field 'file_name' = '{name}': image file not found under "
                                              f"'{image_dir}' ({len(missing)} of {len(order)} images missing)")
    for key, count in sorted(skipped.items()):
        logging.warning("%s: %d x %s (skipped or fixed)", annotation_file, count, key.replace("_", " "))
    return CocoDataset(annotation_file, image_dir, ids, names, tuple(records), dict(skipped))


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
            x, y, bw, bh = inst.bbox
            y1, y2 = int(np.ceil(y - 0.5)), int(np.ceil(y + bh - 0.5))
            x1, x2 = int(np.ceil(x - 0.5)), int(np.ceil(x + bw - 0.5))
            masks[i, max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)] = 1
        else:
            masks[i] = mask_utils.decode(_to_rle(inst.segmentation, h, w))
    return masks


def dataset_paths(cfg: Any, mode: str) -> DatasetPaths:
    """The dataset files to read for ``mode`` (``train`` or ``eval``).

    Uses ``cfg.data.train_annotations/train_images/train_tfrecords`` (train) or
    ``cfg.data.val_annotations/val_images`` (eval). When none is given, the built-in shapes dataset under
    ``cfg.data.data_dir`` is used and generated on first use (safe with concurrent processes).

    Args:
        cfg: a ``mrcnn_tf2.config.Config``.
        mode: ``train`` or ``eval`` (``predict``/``export`` read no dataset).

    Returns:
        A :class:`DatasetPaths`.
    """
    d = cfg.data
    if mode == "train":
        annotations, images, tfrecords = d.train_annotations, d.train_images, d.train_tfrecords
    elif mode == "eval":
        annotations, images, tfrecords = d.val_annotations, d.val_images, ""
    else:
        raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
    if annotations or images or tfrecords:
        if not tfrecords and not (annotations and images):
            prefix = "train" if mode == "train" else "val"
            raise DatasetError(f"data.{prefix}_annotations and data.{prefix}_images must both be set "
                               f"(got '{annotations}' and '{images}')")
        return DatasetPaths(annotations, images, tfrecords)
    from pipelines import shapes  # local import: shapes pulls in OpenCV drawing

    shapes.ensure_shapes_dataset(d.data_dir, d.shapes_num_train, d.shapes_num_val, seed=0)
    split = "train" if mode == "train" else "val"
    return DatasetPaths(os.path.join(d.data_dir, f"{split}.json"), os.path.join(d.data_dir, "images", split))


def category_mapping(cfg: Any) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """``(category_ids, category_names)`` of the training data (JSON, or TFRecord ``dataset_info.json``).

    main.py uses it to fill ``cfg.data.category_ids/category_names`` and ``model.num_classes = K + 1``.
    """
    paths = dataset_paths(cfg, "train")
    if paths.tfrecords and not paths.annotations:
        from pipelines import tfrecord

        info = tfrecord.read_dataset_info(paths.tfrecords)
        return tuple(info["category_ids"]), tuple(info["category_names"])
    data = read_json(paths.annotations)
    chk = Checker(paths.annotations)
    cats = {}
    for i, cat in enumerate(data["categories"]):
        cats[chk.get(cat, f"categories[{i}]", "id", "int")] = chk.get(cat, f"categories[{i}]", "name", "str")
    ids = tuple(sorted(cats))
    return ids, tuple(cats[c] for c in ids)
