"""pipelines/tfrecord.py: conversion CLI, dataset_info, reading equals the JSON path, file sharding."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from mrcnn_tf2.pipelines import coco, tfrecord
from mrcnn_tf2.pipelines.example import parse_example
from mrcnn_tf2.pipelines.input_pipeline import build_dataset

from tests.pipelines.coco_fixtures import rectangles_dataset, small_config


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tfr"))
    ann, image_dir, _ = rectangles_dataset(root, num_images=7)
    out = os.path.join(root, "records")
    tfrecord.main(["--annotations", ann, "--images", image_dir, "--output", out, "--shards", "3"])
    return ann, image_dir, out


def test_cli_writes_shards_and_dataset_info(converted):
    ann, _, out = converted
    files = tfrecord.list_tfrecord_files(out)
    assert [os.path.basename(f) for f in files] == [f"data-0000{k}-of-00003.tfrecord" for k in range(3)]
    info = tfrecord.read_dataset_info(out)
    assert info["category_ids"] == [3, 7] and info["category_names"] == ["three", "seven"]
    assert info["num_images"] == 7 and info["source_annotations"] == os.path.abspath(ann)
    counts = [sum(1 for _ in tf.data.TFRecordDataset(f)) for f in files]
    assert counts == [3, 2, 2]
    assert tfrecord.list_tfrecord_files(os.path.join(out, "*.tfrecord")) == files


def test_tfrecord_training_equals_json_training(converted):
    """Without augmentation or shuffling the two sources give the same examples."""
    ann, image_dir, out = converted
    cfg = small_config(ann, image_dir, **{"data.augment.enabled": False, "train.batch_size": 7})
    from_json = next(iter(build_dataset(cfg, "train")))
    from_records = next(iter(build_dataset(small_config(ann, image_dir, **{
        "data.augment.enabled": False, "train.batch_size": 7, "data.train_tfrecords": out,
        "data.train_annotations": "", "data.train_images": ""}), "train")))
    order_json = np.argsort(from_json["image_id"].numpy())
    order_rec = np.argsort(from_records["image_id"].numpy())
    for key in from_json:
        np.testing.assert_array_equal(from_json[key].numpy()[order_json], from_records[key].numpy()[order_rec])


def test_two_pipelines_read_disjoint_files(converted):
    ann, image_dir, out = converted
    cfg = small_config("", "", **{"data.train_tfrecords": out, "train.batch_size": 2, "data.shuffle_buffer": 1,
                                  "data.augment.enabled": False})
    seen = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(2, pipeline_id, 2)
        ds = build_dataset(cfg, "train", context)
        ids = [int(i) for b in ds.take(8) for i in b["image_id"].numpy()]
        seen.append(set(ids))
    # Pipeline 0 reads shards 0 and 2 (images 0,3,6 + 2,5), pipeline 1 shard 1 (images 1,4).
    assert seen[0] == {100, 103, 106, 102, 105} and seen[1] == {101, 104}


def test_category_mapping_from_tfrecords_and_mismatch(converted):
    _, _, out = converted
    cfg = small_config("", "", **{"data.train_tfrecords": out})
    assert coco.category_mapping(cfg) == ((3, 7), ("three", "seven"))
    wrong = small_config("", "", **{"data.train_tfrecords": out, "data.category_ids": [1, 2],
                                    "data.category_names": ["a", "b"]})
    with pytest.raises(coco.DatasetError, match="dataset_info.json differ from data.category_ids"):
        build_dataset(wrong, "train")


def test_missing_files_and_info(tmp_path):
    with pytest.raises(coco.DatasetError, match="matches no TFRecord files"):
        tfrecord.list_tfrecord_files(str(tmp_path))
    with pytest.raises(coco.DatasetError, match="dataset_info.json: missing"):
        tfrecord.read_dataset_info(str(tmp_path))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"category_ids": []}))
    with pytest.raises(coco.DatasetError, match="missing field 'category_names'"):
        tfrecord.read_dataset_info(str(tmp_path))


def test_parallel_writers_give_the_same_records(tmp_path, converted):
    ann, image_dir, out = converted
    dataset = coco.load_coco(ann, image_dir)
    paths = tfrecord.write_tfrecords(dataset, str(tmp_path / "par"), 3, workers=2)
    for a, b in zip(paths, tfrecord.list_tfrecord_files(out)):
        records_a = list(tf.data.TFRecordDataset(a).map(parse_example))
        records_b = list(tf.data.TFRecordDataset(b).map(parse_example))
        assert len(records_a) == len(records_b)
        for x, y in zip(records_a, records_b):
            for key in x:
                np.testing.assert_array_equal(x[key].numpy(), y[key].numpy())
