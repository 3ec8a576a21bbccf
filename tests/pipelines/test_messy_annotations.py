"""Annotation values as real tools write them: each problem is refused or skipped-and-counted, never a crash."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os

import numpy as np
import pytest
from mrcnn_tf2.pipelines import coco, dataset_check
from mrcnn_tf2.pipelines.coco_fields import SKIP_KEYS
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tests.pipelines.coco_fixtures import rect_polygon, small_config, write_coco

H, W = 40, 50
GOOD = {"id": 1, "image_id": 1, "category_id": 2, "segmentation": [rect_polygon(5, 5, 10, 10)],
        "bbox": [5, 5, 10, 10], "area": 100.0, "iscrowd": 0}


def _dataset(tmp_path, *extra: dict, images: list[dict] | None = None, good: bool = True) -> tuple[str, str]:
    images = images or [{"id": 1, "file_name": "a.png", "height": H, "width": W}]
    anns = ([GOOD] if good else []) + [{"id": 100 + k, "image_id": 1, "category_id": 2, "iscrowd": 0, **e}
                                       for k, e in enumerate(extra)]
    path = os.path.join(str(tmp_path), "ann.json")
    _, image_dir = write_coco(str(tmp_path), images, [], [{"id": 2, "name": "two"}, {"id": 3, "name": "three"}])
    with open(path, "w") as f:  # json.dump writes NaN and Infinity, as Python-based exporters do
        json.dump({"images": images, "annotations": anns,
                   "categories": [{"id": 2, "name": "two"}, {"id": 3, "name": "three"}]}, f)
    return path, image_dir


NAN, INF = math.nan, math.inf
SKIPPED = [
    # (the annotation's fields, the counter that must count it)
    ({"segmentation": [[1, 1, NAN, 5, 9, 9, 1, 9]]}, "non_finite_values"),
    ({"segmentation": [rect_polygon(1, 1, 5, 5)], "bbox": [1, 1, INF, 5]}, "non_finite_values"),
    ({"bbox": [NAN, 1, 5, 5]}, "non_finite_values"),
    ({"bbox": [10, 10, -5, 5]}, "invalid_bbox"),
    ({"bbox": [10, 10, 5]}, "invalid_bbox"),
    ({"bbox": ["10", "10", "5", "5"]}, "invalid_bbox"),
    ({"bbox": [10, 10, True, 5]}, "invalid_bbox"),
    ({"bbox": "10 10 5 5"}, "invalid_bbox"),
    ({"segmentation": [["1", "1", "9", "1", "9", "9"]]}, "invalid_segmentation"),
    ({"segmentation": "polygon"}, "invalid_segmentation"),
    ({"segmentation": [[[1, 1, 9, 1, 9, 9]]]}, "invalid_segmentation"),
    ({"segmentation": 7}, "invalid_segmentation"),
    ({"segmentation": {"size": [H, W]}}, "invalid_segmentation"),
    ({"segmentation": {"size": [H, W], "counts": "not an rle!"}}, "invalid_segmentation"),
    ({"segmentation": {"size": [H, W], "counts": [5, 7]}}, "invalid_segmentation"),
    ({"segmentation": {"size": [H, W], "counts": 12}}, "invalid_segmentation"),
    ({"segmentation": {"size": [W, H], "counts": [H * W]}}, "rle_size_mismatch"),
    ({"segmentation": {"size": [H, W], "counts": [H * W]}}, "zero_area"),  # all background
    ({"segmentation": [[1, 1, 9, 1, 9]]}, "odd_length_polygons"),
    ({"segmentation": [[1, 1, 9, 9]]}, "zero_area"),  # a 4-number "polygon" (pycocotools reads it as a box)
    ({"segmentation": [[1, 1, 9, 9]], "bbox": [1, 1, 8, 8]}, "zero_area"),  # 2 points: no mask, box unused
    ({"segmentation": [[1, 1]]}, "zero_area"),
    ({"segmentation": [[1, 1, 5, 5, 9, 9]]}, "zero_area"),  # collinear
    ({"segmentation": [rect_polygon(60, 5, 10, 10)]}, "zero_area"),  # wholly outside, right of the image
    ({"segmentation": [[2.6, 2.6, 30.4, 2.6, 30.4, 2.9, 2.6, 2.9]]}, "zero_area"),  # between pixel centres
    ({"segmentation": [rect_polygon(5, 5, 10, 1e9)]}, "far_outside"),
    ({"bbox": [-1e6, 0, 10, 10]}, "far_outside"),
    ({"bbox": [5, 5, 0, 10]}, "zero_area"),
    ({"bbox": [50, 40, 5, 5]}, "zero_area"),  # outside, touching the corner
    ({"segmentation": [], "bbox": None}, "no_geometry"),
    ({}, "no_geometry"),
    ({"segmentation": {}}, "no_geometry"),
    ({**GOOD, "id": 1}, "duplicate_annotations"),  # the same annotation exported twice
]


@pytest.mark.parametrize("fields, key", SKIPPED, ids=[f"{k}-{i}" for i, (_, k) in enumerate(SKIPPED)])
def test_unusable_annotations_are_skipped_and_counted(tmp_path, fields, key, caplog):
    ann, image_dir = _dataset(tmp_path, fields)
    ds = coco.load_coco(ann, image_dir)
    assert [i.annotation_id for i in ds.images[0].instances] == [1], ds.skipped
    assert ds.skipped.get(key) == 1, ds.skipped
    assert key in SKIP_KEYS
    assert f"(key '{key}'" in caplog.text and "annotations[1]" in caplog.text  # logged with where it is
    coco.instance_masks(ds.images[0])  # renders
    _evaluates(coco.ground_truth(ds))


def test_kept_with_a_fix_and_counted(tmp_path):
    ann, image_dir = _dataset(
        tmp_path,
        {"id": 1, "segmentation": [rect_polygon(20, 20, 5, 5)]},  # same id, other content: kept
        {"segmentation": [], "bbox": [30, 30, 30, 30]},  # box-only, clipped to the image
        {"segmentation": [[1, 1, 3, 3], rect_polygon(30, 2, 6, 6)]},  # a 2-point part dropped
        {"segmentation": [rect_polygon(45, 30, 20, 20)], "bbox": [45, 30, 20, 20]},  # partly outside
        {"segmentation": [rect_polygon(1, 20, 4, 4)], "bbox": None, "area": "big"},  # no box/area: from the mask
        {"segmentation": [rect_polygon(10, 25, 4, 4)], "iscrowd": None, "id": 1.0},  # integral float id
    )
    ds = coco.load_coco(ann, image_dir)
    instances = ds.images[0].instances
    assert len(instances) == 7 and ds.num_instances == 7
    assert ds.skipped == {"duplicate_annotation_ids": 2, "box_only_masks": 1, "clipped_boxes": 2,
                          "degenerate_polygon_parts": 1}
    assert instances[2].bbox == (30.0, 30.0, 20.0, 10.0)
    assert instances[5].bbox == (1.0, 20.0, 4.0, 4.0) and instances[5].area is None
    gt = coco.ground_truth(ds)
    assert [a["id"] for a in gt["annotations"]] == list(range(1, 8))  # renumbered: no id collisions
    assert gt["annotations"][5]["area"] == 16.0
    masks = coco.instance_masks(ds.images[0])
    for mask, gt_ann in zip(masks, gt["annotations"]):  # the evaluator's masks are the training masks
        rle = gt_ann["segmentation"]
        rle = rle if isinstance(rle, dict) else mask_utils.merge(mask_utils.frPyObjects(rle, H, W))
        np.testing.assert_array_equal(mask_utils.decode(rle), mask)
    _evaluates(gt)


def _evaluates(gt: dict) -> dict:
    """pycocotools evaluates ``gt`` against itself (perfect detections): AP 1 where there is ground truth."""
    ground = COCO()
    ground.dataset = gt
    with contextlib.redirect_stdout(io.StringIO()):
        ground.createIndex()
        results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0,
                    "segmentation": a["segmentation"]} for a in gt["annotations"] if not a["iscrowd"]]
        stats = {}
        for iou_type in ("bbox", "segm"):
            if not results:
                break
            detections = ground.loadRes([dict(r) for r in results])
            ev = COCOeval(ground, detections, iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
            stats[iou_type] = ev.stats[0]
    assert all(v == pytest.approx(1.0) for v in stats.values()), stats
    return stats


def test_raw_file_crashes_pycocotools_but_the_ground_truth_evaluates(tmp_path):
    """The reason for ground_truth(): pycocotools fails on what training skips."""
    ann, image_dir = _dataset(tmp_path, {"segmentation": [[1, 1, 9, 9, 3]]}, {"segmentation": [[1, 1, 9, 1]]},
                              {"bbox": [5, 5, 5, 5]})
    raw = COCO(ann)
    with pytest.raises(Exception):  # noqa: B017, PT011 - whatever pycocotools raises
        for a in raw.dataset["annotations"]:
            raw.annToRLE(a)
    ds = coco.load_coco(ann, image_dir)
    assert ds.num_instances == 2
    _evaluates(coco.ground_truth(ds))


def test_crowd_regions_go_to_the_ground_truth_not_to_training(tmp_path):
    rle = {"size": [H, W], "counts": [200, 30, H * W - 230]}
    ann, image_dir = _dataset(tmp_path, {"segmentation": rle, "iscrowd": 1},
                              {"segmentation": [[1, 1, NAN, 2, 3, 3]], "iscrowd": 1})
    ds = coco.load_coco(ann, image_dir)
    assert ds.num_instances == 1 and ds.images[0].num_crowd == 1 and ds.skipped == {"non_finite_values": 1}
    gt = coco.ground_truth(ds)
    assert [a["iscrowd"] for a in gt["annotations"]] == [0, 1]
    assert gt["annotations"][1]["area"] == 30.0


def test_missing_width_height_come_from_the_file(tmp_path):
    images = [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png", "height": None, "width": None}]
    write_coco(str(tmp_path), [{**i, "height": H, "width": W} for i in images], [], [{"id": 2, "name": "two"}])
    ann, image_dir = _dataset(tmp_path, images=images)
    ds = coco.load_coco(ann, image_dir)
    assert [(r.height, r.width) for r in ds.images] == [(H, W), (H, W)]
    assert ds.skipped == {"image_size_from_file": 2}
    os.remove(os.path.join(image_dir, "b.png"))
    with pytest.raises(coco.DatasetError, match=r"images\[1\] \(id 2\): fields 'height'/'width' are missing"):
        coco.load_coco(ann, image_dir, check_files=False)


@pytest.mark.parametrize("extra, good", [((), False), (({"segmentation": [[1, 1, NAN, 5, 9, 9]]},
                                                        {"bbox": [1, 1, -3, 4]}), False)])
def test_a_dataset_without_a_usable_instance_is_refused(tmp_path, extra, good):
    ann, image_dir = _dataset(tmp_path, *extra, good=good)
    cfg = small_config(ann, image_dir)
    with pytest.raises(coco.DatasetError) as err:
        dataset_check.load_checked(cfg, "train")
    message = str(err.value)
    assert message.startswith(ann) and "no usable instance" in message and "only learn background" in message
    assert ("no annotations" in message) if not extra else ("non_finite_values" in message
                                                            and "invalid_bbox" in message)
    ann, image_dir = _dataset(tmp_path, *extra, good=True)
    assert dataset_check.load_checked(small_config(ann, image_dir), "train").num_instances == 1


def test_load_checked_is_memoized_and_sees_file_changes(tmp_path):
    ann, image_dir = _dataset(tmp_path)
    cfg = small_config(ann, image_dir)
    first = dataset_check.load_checked(cfg, "train")
    assert dataset_check.load_checked(cfg, "train") is first
    ann, image_dir = _dataset(tmp_path, {"segmentation": [rect_polygon(20, 20, 5, 5)]})
    os.utime(ann, ns=(os.stat(ann).st_atime_ns, os.stat(ann).st_mtime_ns + 10**9))
    assert dataset_check.load_checked(cfg, "train").num_instances == 2


def test_rle_string_runs_equal_the_mask_runs():
    from mrcnn_tf2.pipelines.coco_fields import _rle_string_counts

    rng = np.random.default_rng(0)
    for shape, density in [((40, 50), 0.5), ((31, 17), 0.02), ((300, 200), 0.999), ((5, 5), 0.0)]:
        mask = (rng.random(shape) < density).astype(np.uint8)
        flat = mask.flatten(order="F")
        bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
        runs = ([0] if flat[0] else []) + np.diff(bounds).tolist()
        encoded = mask_utils.encode(np.asfortranarray(mask))["counts"]
        assert _rle_string_counts(encoded) == runs
    assert _rle_string_counts(b"\x7f") is None and _rle_string_counts(b"o") is None  # bad char; cut short


def test_windows_separators_in_file_names(tmp_path):
    _, image_dir = write_coco(str(tmp_path), [{"id": 1, "file_name": "sub/a.png", "height": H, "width": W}], [],
                              [{"id": 2, "name": "two"}])
    ann = os.path.join(str(tmp_path), "win.json")
    with open(ann, "w") as f:
        json.dump({"images": [{"id": 1, "file_name": "sub\\a.png", "height": H, "width": W}], "annotations": [GOOD],
                   "categories": [{"id": 2, "name": "two"}]}, f)
    ds = coco.load_coco(ann, image_dir)
    assert ds.images[0].file_name == "sub/a.png" and ds.skipped == {"backslash_paths": 1}
