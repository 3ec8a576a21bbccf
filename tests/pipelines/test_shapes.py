"""pipelines/shapes.py: the synthetic dataset is valid COCO, deterministic, and masks match the pixels."""

import json
import os

import cv2
import numpy as np
from mrcnn_tf2.pipelines import coco, shapes


def test_generated_dataset_is_valid_coco_and_masks_match_pixels(tmp_path):
    out = str(tmp_path / "shapes")
    shapes.main(["--output", out, "--num_train", "12", "--num_val", "3", "--seed", "4"])
    train = coco.load_coco(os.path.join(out, "train.json"), os.path.join(out, "images", "train"))
    val = coco.load_coco(os.path.join(out, "val.json"), os.path.join(out, "images", "val"))
    assert len(train.images) == 12 and len(val.images) == 3
    assert train.category_ids == (1, 2, 3) and train.category_names == ("square", "circle", "triangle")
    for record in train.images:
        assert (record.height, record.width) == (128, 128) and 1 <= len(record.instances) <= 4
        image = cv2.cvtColor(cv2.imread(record.path), cv2.COLOR_BGR2RGB).astype(float)
        masks = coco.instance_masks(record)
        assert (masks.sum(axis=(1, 2)) >= 30).all()
        for mask in masks:
            # Each visible instance is painted in one flat colour.
            assert image[mask.astype(bool)].std(axis=0).max() < 1.0
        assert masks.sum(axis=0).max() == 1  # visible masks do not overlap


def test_same_seed_same_dataset(tmp_path):
    shapes.generate_shapes(str(tmp_path / "a"), 5, 1, seed=3)
    shapes.generate_shapes(str(tmp_path / "b"), 5, 1, seed=3)
    shapes.generate_shapes(str(tmp_path / "c"), 5, 1, seed=4)
    read = [json.load(open(tmp_path / d / "train.json")) for d in "abc"]
    assert read[0] == read[1] and read[0] != read[2]
    a = cv2.imread(str(tmp_path / "a" / "images" / "train" / "000003.png"))
    b = cv2.imread(str(tmp_path / "b" / "images" / "train" / "000003.png"))
    np.testing.assert_array_equal(a, b)


def test_ensure_is_a_no_op_when_complete(tmp_path):
    target = str(tmp_path / "d")
    shapes.ensure_shapes_dataset(target, 3, 1)
    stamp = os.path.getmtime(os.path.join(target, "train.json"))
    shapes.ensure_shapes_dataset(target, 3, 1)
    assert os.path.getmtime(os.path.join(target, "train.json")) == stamp
