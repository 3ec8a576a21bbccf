"""The dataset checks that run before training or evaluation starts (no TensorFlow).

:func:`load_checked` is the one way the JSON path reads a dataset: ``mrcnn_tf2.pipelines.coco.load_coco``
(annotation rules), then ``mrcnn_tf2.pipelines.image_check.check_images`` (every file, ``data.bad_images``,
``export.max_image_pixels``), then the rule that a dataset without a single usable instance is refused.
The CLI calls :func:`check_datasets` in ``mrcnn_tf2.cli.common.prepare``, so bad data exits with status 2 before
TensorFlow is imported; the input pipeline and the evaluator then get the same records from a small
in-process memo (keyed by the file's path, size and mtime and the settings), so training and evaluation
see exactly the same images and instances.
"""

from __future__ import annotations

import collections
import os
from typing import Any

from mrcnn_tf2.pipelines.coco import CocoDataset, DatasetError, load_coco, log_problems
from mrcnn_tf2.pipelines.coco_fields import SKIP_KEYS
from mrcnn_tf2.pipelines.dataset_info import dataset_paths
from mrcnn_tf2.pipelines.image_check import check_images

__all__ = ["load_checked", "check_datasets"]

_MEMO: collections.OrderedDict[tuple, CocoDataset] = collections.OrderedDict()
_MEMO_SIZE = 4


def _refuse_if_no_instances(dataset: CocoDataset) -> None:
    if dataset.num_instances:
        return
    skipped = ", ".join(f"{count} x {key}" for key, count in sorted(dataset.skipped.items())
                        if key in SKIP_KEYS and key not in ("clipped_boxes", "image_size_from_file"))
    crowd = sum(r.num_crowd for r in dataset.images)
    detail = (f"all {dataset.num_annotations} annotations were skipped ({skipped or 'none usable'}"
              f"{f'; {crowd} crowd regions' if crowd else ''})" if dataset.num_annotations
              else "it has no annotations")
    examples = " ".join(f"[{line}]" for line in dataset.problems)
    raise DatasetError(f"{dataset.annotation_file}: no usable instance in {len(dataset.images)} images: {detail}. "
                       f"Training on it would only learn background; fix the annotations. {examples}".strip())


def load_checked(cfg: Any, mode: str) -> CocoDataset:
    """The checked dataset of ``mode`` (``train`` or ``eval``) read from its COCO JSON.

    Args:
        cfg: a ``mrcnn_tf2.config.Config`` (``data.*``, ``export.max_image_pixels``; the category mapping
            ``data.category_ids`` when set).
        mode: ``train`` (``data.skip_empty`` applies) or ``eval``.

    Returns:
        The :class:`~mrcnn_tf2.pipelines.coco.CocoDataset` without the images that ``data.bad_images=skip`` drops.

    Raises:
        DatasetError: refused annotations, bad images under ``data.bad_images=error``, or no usable
            instance at all.
    """
    paths = dataset_paths(cfg, mode)
    d = cfg.data
    skip_empty = bool(d.skip_empty and mode == "train")
    try:
        st = os.stat(paths.annotations)
        stamp = (st.st_size, st.st_mtime_ns)
    except OSError:
        stamp = None
    key = (os.path.abspath(paths.annotations), stamp, os.path.abspath(paths.images), tuple(d.category_ids),
           skip_empty, d.bad_images, int(cfg.export.max_image_pixels))
    if stamp is not None and key in _MEMO:
        _MEMO.move_to_end(key)
        return _MEMO[key]
    dataset = load_coco(paths.annotations, paths.images, category_ids=d.category_ids or None, check_files=False,
                        skip_empty=skip_empty, log=False)
    dataset = check_images(dataset, d.bad_images, int(cfg.export.max_image_pixels))
    _refuse_if_no_instances(dataset)
    log_problems(dataset)  # only once accepted: a refusal is one message
    if stamp is not None:
        _MEMO[key] = dataset
        while len(_MEMO) > _MEMO_SIZE:
            _MEMO.popitem(last=False)
    return dataset


def check_datasets(cfg: Any, mode: str) -> None:
    """The checks of ``--mode=train`` (the training JSON, and the validation JSON when ``train.eval_every``)
    or ``--mode=eval`` (the validation JSON). TFRecord training data was checked when it was written."""
    modes = {"train": ["train"], "eval": ["eval"]}.get(mode, [])
    if mode == "train" and cfg.train.eval_every:
        modes.append("eval")
    for split in modes:
        paths = dataset_paths(cfg, split)
        if split == "train" and paths.tfrecords:
            continue
        load_checked(cfg, split)
