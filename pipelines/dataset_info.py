"""Which dataset files a mode reads and what they hold, without TensorFlow.

The CLI's checks before TensorFlow starts (``mrcnn_tf2.cli.common.prepare``) use this module: it reads only JSON
(a COCO instances file, or the ``dataset_info.json`` that ``python -m mrcnn_tf2.pipelines.tfrecord`` writes beside
its shards) and lists files. ``mrcnn_tf2.pipelines.coco`` and ``mrcnn_tf2.pipelines.tfrecord`` re-export its names.

- :func:`dataset_paths`: the annotation file / image folder / TFRecord glob of ``train`` or ``eval``,
  generating the built-in shapes dataset when none is configured;
- :func:`category_mapping`: ``(category_ids, category_names)`` of the training data;
- :func:`list_tfrecord_files`, :func:`read_dataset_info`: the TFRecord side.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from typing import Any

from mrcnn_tf2.pipelines.coco_fields import Checker, DatasetError, read_json

__all__ = ["INFO_FILE", "DatasetPaths", "dataset_paths", "category_mapping", "list_tfrecord_files",
           "read_dataset_info"]

INFO_FILE = "dataset_info.json"


@dataclass(frozen=True)
class DatasetPaths:
    """Files for one mode: a COCO JSON and its image folder, and/or a TFRecord glob (train only)."""

    annotations: str
    images: str
    tfrecords: str = ""


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
    from mrcnn_tf2.pipelines import shapes  # local import: shapes pulls in OpenCV drawing

    shapes.ensure_shapes_dataset(d.data_dir, d.shapes_num_train, d.shapes_num_val, seed=0)
    split = "train" if mode == "train" else "val"
    return DatasetPaths(os.path.join(d.data_dir, f"{split}.json"), os.path.join(d.data_dir, "images", split))


def list_tfrecord_files(pattern: str) -> list[str]:
    """Sorted TFRecord files of a folder (``*.tfrecord*``) or a glob pattern; DatasetError if none."""
    if os.path.isdir(pattern):
        files = glob.glob(os.path.join(pattern, "*.tfrecord*"))
    else:
        files = glob.glob(pattern)
    files = sorted(f for f in files if ".tmp." not in os.path.basename(f))
    if not files:
        raise DatasetError(f"{pattern}: data.train_tfrecords matches no TFRecord files")
    return files


def read_dataset_info(pattern: str) -> dict[str, Any]:
    """The ``dataset_info.json`` beside the TFRecords of a folder or glob pattern."""
    folder = pattern if os.path.isdir(pattern) else os.path.dirname(pattern)
    path = os.path.join(folder, INFO_FILE)
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: missing; TFRecords must be written by `python -m mrcnn_tf2.pipelines.tfrecord`, "
                           "which stores the category mapping there")
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: unreadable ({e}); convert the dataset again") from None
    if not isinstance(info, dict):
        raise DatasetError(f"{path}: must be a JSON object; convert the dataset again")
    for key in ("category_ids", "category_names", "num_images"):
        if key not in info:
            raise DatasetError(f"{path}: missing field '{key}'")
    return info


def category_mapping(cfg: Any) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """``(category_ids, category_names)`` of the training data (JSON, or TFRecord ``dataset_info.json``).

    The CLI uses it to fill ``cfg.data.category_ids/category_names`` and ``model.num_classes = K + 1``.
    """
    paths = dataset_paths(cfg, "train")
    if paths.tfrecords and not paths.annotations:
        info = read_dataset_info(paths.tfrecords)
        return tuple(info["category_ids"]), tuple(info["category_names"])
    data = read_json(paths.annotations)
    chk = Checker(paths.annotations)
    cats = {}
    for i, cat in enumerate(data["categories"]):
        cats[chk.get(cat, f"categories[{i}]", "id", "int")] = chk.get(cat, f"categories[{i}]", "name", "str")
    ids = tuple(sorted(cats))
    return ids, tuple(cats[c] for c in ids)
