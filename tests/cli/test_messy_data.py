"""A dataset as annotation tools export it trains and evaluates: what training skips, evaluation skips too."""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
from mrcnn_tf2.pipelines import coco, dataset_check, shapes
from mrcnn_tf2.pipelines.input_pipeline import build_dataset

from mrcnn_tf2 import cli
from mrcnn_tf2 import config as config_lib
from tests.cli.common import tiny_args


def _messy_copy(root: str, split: str, num: int) -> tuple[str, str]:
    """The shapes ``split`` plus what real exports contain, written beside a copy of its images."""
    source = os.path.join(root, "shapes")
    shapes.ensure_shapes_dataset(source, num_train=8, num_val=4, seed=0)
    image_dir = os.path.join(root, f"messy_{split}")
    shutil.copytree(os.path.join(source, "images", split), image_dir)
    with open(os.path.join(source, f"{split}.json")) as f:
        data = json.load(f)
    img = data["images"][0]
    extra = [
        {"segmentation": [[3.0, 3.0, 9.0, 9.0]]},  # 2 points: pycocotools reads it as a box, training skips it
        {"segmentation": [[3.0, 3.0, 9.0, 3.0]], "bbox": [3, 3, 6, 0]},  # zero area
        {"segmentation": [[1.0, 1.0]]},
        {"segmentation": [[1.0, 1.0, math.nan, 5.0, 9.0, 9.0]]},
        {"bbox": [1, 2, 3]},
        {"segmentation": [], "bbox": [2.0, 2.0, 12.0, 10.0]},  # box-only: kept
        {"segmentation": [[20, 20, 40, 20, 40, 40, 20, 40]], "iscrowd": 1},  # crowd: evaluation only
    ]
    next_id = max(a["id"] for a in data["annotations"]) + 1
    for k, fields in enumerate(extra):
        data["annotations"].append({"id": next_id + k, "image_id": img["id"], "category_id": 1, **fields})
    for ann in data["annotations"]:
        ann.pop("area", None)  # pycocotools' evaluation needs it; the checked ground truth computes it
    data["annotations"].append(dict(data["annotations"][0]))  # exported twice
    data["images"].append({"id": 10_000, "file_name": "broken.png", "height": img["height"], "width": img["width"]})
    with open(os.path.join(image_dir, "broken.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n broken")
    path = os.path.join(root, f"messy_{split}.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path, image_dir


def test_messy_dataset_trains_and_evaluates_with_the_same_instances(tmp_path):
    root = str(tmp_path)
    train_ann, train_images = _messy_copy(root, "train", 8)
    val_ann, val_images = _messy_copy(root, "val", 4)
    data = dict(train_annotations=train_ann, train_images=train_images, val_annotations=val_ann,
                val_images=val_images)
    logs = cli.run(tiny_args(root, "train", steps=2, batch_size=2, checkpoint_every=2, model="none",
                             overrides=("data.bad_images=skip",), **data))
    assert logs["step"] == 2 and np.isfinite(logs["loss"])
    metrics = cli.run(tiny_args(root, "eval", model="last", overrides=("data.bad_images=skip",), **data))
    assert metrics["num_images"] == 4  # the broken file is skipped in evaluation as in training
    assert all(-1 <= metrics[t][k] <= 1 for t in ("bbox", "segm") for k in metrics[t])

    # Same instances: the evaluator's non-crowd ground truth is what the eval pipeline feeds the model.
    with open(os.path.join(root, "run", "config.json")) as f:
        cfg = config_lib.from_dict(json.load(f))
    cfg = config_lib.apply_overrides(cfg, {"data.max_instances": 64, "data.val_annotations": val_ann,
                                           "data.val_images": val_images})
    dataset = dataset_check.load_checked(cfg, "eval")
    assert dataset.skipped == {"zero_area": 3, "degenerate_polygon_parts": 3, "non_finite_values": 1,
                               "invalid_bbox": 1, "box_only_masks": 1,
                               "duplicate_annotations": 1, "bad_images": 1}
    gt = coco.ground_truth(dataset)
    per_image_gt = {}
    for ann in gt["annotations"]:
        if not ann["iscrowd"]:
            per_image_gt[ann["image_id"]] = per_image_gt.get(ann["image_id"], 0) + 1
    fed = {}
    for batch in build_dataset(cfg, "eval"):
        for image_id, classes in zip(batch["image_id"].numpy(), batch["gt_classes"].numpy()):
            fed[int(image_id)] = int((classes > 0).sum())
    assert fed == per_image_gt
    assert sum(1 for a in gt["annotations"] if a["iscrowd"]) == 1
