"""Sharded TFRecords: the fast input path for big COCO-format datasets.

Convert once::

    python -m mrcnn_tf2.pipelines.tfrecord --annotations A.json --images DIR --output OUT --shards N [--workers W]

writes ``OUT/data-00000-of-0000N.tfrecord ...`` (image ``i`` of the JSON goes to shard ``i % N``; each
record holds the features of ``pipelines/example.py``: the image file bytes, PNG-encoded instance masks
rendered by pycocotools, contiguous labels) and ``OUT/dataset_info.json`` (the category mapping, the
source annotation file, image and per-image instance counts). Crowd regions are not stored (they never
become ground truth). Each shard is written under a temporary name and renamed when complete, and
``dataset_info.json`` comes last, so a dataset with an info file is whole. Training reads it with
``data.train_tfrecords=OUT`` (a folder or a glob). The conversion applies the JSON path's checks
(``pipelines/coco_fields.py`` rules, every image file checked, ``--bad_images=error|skip``), so
training from TFRecords needs none.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import multiprocessing
import os
from collections.abc import Sequence

import tensorflow as tf
from mrcnn_tf2.pipelines.coco import CocoDataset, DatasetError, ImageRecord, load_coco
from mrcnn_tf2.pipelines.dataset_info import INFO_FILE, list_tfrecord_files, read_dataset_info
from mrcnn_tf2.pipelines.example import encode_record, serialize_example
from mrcnn_tf2.pipelines.image_check import check_images

from mrcnn_tf2.config.choices import BAD_IMAGES
from mrcnn_tf2.config.schema import ExportConfig

__all__ = ["INFO_FILE", "write_tfrecords", "list_tfrecord_files", "read_dataset_info", "main"]

def _write_shard(records: Sequence[ImageRecord], path: str) -> int:
    tmp = f"{path}.tmp.{os.getpid()}"
    with tf.io.TFRecordWriter(tmp) as writer:
        for record in records:
            writer.write(serialize_example(encode_record(record)))
    os.replace(tmp, path)
    return len(records)


def write_tfrecords(dataset: CocoDataset, output_dir: str, num_shards: int, workers: int = 1,
                    prefix: str = "data") -> list[str]:
    """Writes ``dataset`` as ``num_shards`` TFRecord files plus ``dataset_info.json``.

    Args:
        dataset: a loaded :class:`~mrcnn_tf2.pipelines.coco.CocoDataset`.
        output_dir: the output folder (created).
        num_shards: number of files (use at least the number of input pipelines/hosts, e.g. 8-256).
        workers: processes writing shards in parallel.
        prefix: file name prefix.

    Returns:
        The shard paths, sorted.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    os.makedirs(output_dir, exist_ok=True)
    paths = [os.path.join(output_dir, f"{prefix}-{k:05d}-of-{num_shards:05d}.tfrecord")
             for k in range(num_shards)]
    shards = [dataset.images[k::num_shards] for k in range(num_shards)]
    if workers > 1:
        context = multiprocessing.get_context("spawn")  # TF is not fork-safe
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            list(pool.map(_write_shard, shards, paths))
    else:
        for records, path in zip(shards, paths):
            _write_shard(records, path)
    histogram = collections.Counter(len(r.instances) for r in dataset.images)
    info = {
        "category_ids": list(dataset.category_ids),
        "category_names": list(dataset.category_names),
        "source_annotations": os.path.abspath(dataset.annotation_file),
        "source_images": os.path.abspath(dataset.image_dir),
        "num_images": len(dataset.images),
        "num_instances": sum(len(r.instances) for r in dataset.images),
        "instances_per_image": {str(k): v for k, v in sorted(histogram.items())},
        "files": [os.path.basename(p) for p in paths],
    }
    tmp = os.path.join(output_dir, f".{INFO_FILE}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)
    os.replace(tmp, os.path.join(output_dir, INFO_FILE))
    return paths


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description="Convert a COCO-format dataset to sharded TFRecords.")
    parser.add_argument("--annotations", required=True, help="COCO instances JSON")
    parser.add_argument("--images", required=True, help="image folder the file names are relative to")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--skip_empty", action="store_true", help="drop images without instances")
    parser.add_argument("--bad_images", choices=BAD_IMAGES, default="error",
                        help="unusable image files (missing, corrupt, wrong size, too large): refuse the dataset "
                             "(error) or leave them out (skip), as data.bad_images")
    parser.add_argument("--max_image_pixels", type=int, default=ExportConfig().max_image_pixels,
                        help="images above this many pixels (by their header) are bad images")
    args = parser.parse_args(argv)
    try:
        dataset = load_coco(args.annotations, args.images, skip_empty=args.skip_empty, check_files=False)
        dataset = check_images(dataset, args.bad_images, args.max_image_pixels)
        if not dataset.num_instances:
            raise DatasetError(f"{args.annotations}: no usable instance in {len(dataset.images)} images "
                               f"(skipped: {dict(dataset.skipped)}); fix the annotations")
        paths = write_tfrecords(dataset, args.output, args.shards, args.workers)
    except DatasetError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"wrote {len(dataset.images)} images ({dataset.num_categories} categories) to {len(paths)} "
          f"shards in {args.output}")


if __name__ == "__main__":
    main()
