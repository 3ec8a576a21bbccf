"""Tests for mrcnn_tf2.evaluation against pycocotools on a tiny COCO JSON written in tmp_path.

Every object is a 16 x 16 (M x M) shape in original pixels, so pasting its M x M mask back with
aligned-centre bilinear sampling (ops.mask_ops.paste_masks_numpy) reproduces it exactly and perfect
detections score AP 1.0.
"""

import json

import numpy as np
import pytest
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mrcnn_tf2 import evaluation

M = 16
CATEGORY_IDS = (3, 7)
CATEGORY_NAMES = ("angular", "round")


def _shape(kind):
    i, j = np.mgrid[0:M, 0:M] + 0.5 - M / 2
    if kind == "square":
        return np.ones((M, M), np.uint8)
    if kind == "diamond":
        return (np.abs(i) + np.abs(j) <= M / 2).astype(np.uint8)
    return (i * i + j * j <= (M / 2) ** 2).astype(np.uint8)  # disk


# image id -> (height, width, [(category id, shape, top, left, iscrowd)])
IMAGES = {
    11: (40, 48, [(3, "square", 2, 4, 0), (7, "disk", 20, 28, 0), (3, "square", 22, 2, 1)]),
    12: (36, 44, [(3, "diamond", 10, 20, 0)]),
    13: (32, 32, [(7, "disk", 4, 4, 0)]),  # never passed to the evaluator
}
# image_info per image: original size, scaled size, (y_scale, x_scale), (y_offset, x_offset).
SCALES = {11: ((2.0, 0.5), (0.0, 0.0)), 12: ((0.5, 2.0), (3.0, 4.0))}


@pytest.fixture
def gt_file(tmp_path):
    images, annotations = [], []
    for image_id, (h, w, objects) in IMAGES.items():
        images.append({"id": image_id, "height": h, "width": w, "file_name": f"{image_id}.png"})
        for cat, kind, top, left, crowd in objects:
            full = np.zeros((h, w), np.uint8)
            full[top:top + M, left:left + M] = _shape(kind)
            rle = mask_util.encode(np.asfortranarray(full))
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": cat, "iscrowd": crowd,
                "bbox": [float(v) for v in mask_util.toBbox(rle)], "area": float(mask_util.area(rle)),
                "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")}})
    categories = [{"id": c, "name": n} for c, n in zip(CATEGORY_IDS, CATEGORY_NAMES)]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return str(path)


def _batch(dets_per_image, num_slots=4):
    """Model outputs for images 11 and 12 from per-image lists of (shape, top, left, label, score) in
    original pixels, mapped into the model frame with SCALES."""
    ids = [11, 12]
    out = {"detection_boxes": np.zeros((2, num_slots, 4), np.float32),
           "detection_scores": np.zeros((2, num_slots), np.float32),
           "detection_classes": np.zeros((2, num_slots), np.int32),
           "detection_masks": np.zeros((2, num_slots, M, M), np.float32),
           "num_detections": np.zeros((2,), np.int32)}
    info = np.zeros((2, 4, 2), np.float32)
    for b, image_id in enumerate(ids):
        h, w, _ = IMAGES[image_id]
        (sy, sx), (oy, ox) = SCALES[image_id]
        info[b] = [[h, w], [h * sy, w * sx], [sy, sx], [oy, ox]]
        for d, (kind, top, left, label, score) in enumerate(dets_per_image[b]):
            box = np.array([top, left, top + M, left + M], np.float64)
            out["detection_boxes"][b, d] = box * [sy, sx, sy, sx] - [oy, ox, oy, ox]
            out["detection_scores"][b, d] = score
            out["detection_classes"][b, d] = label
            out["detection_masks"][b, d] = _shape(kind)
        out["num_detections"][b] = len(dets_per_image[b])
    return out, info, np.array(ids)


PERFECT = [
    # The crowd region is detected with the highest score: counted as a false positive it would
    # lower AP, matched to the crowd it is ignored.
    [("square", 22, 2, 1, 0.99), ("square", 2, 4, 1, 0.9), ("disk", 20, 28, 2, 0.8)],
    [("diamond", 10, 20, 1, 0.95)],
]


def _evaluator(gt_file):
    return evaluation.CocoEvaluator(gt_file, CATEGORY_IDS, CATEGORY_NAMES)


def test_perfect_detections_give_ap_one(gt_file):
    ev = _evaluator(gt_file)
    ev.update(*_batch(PERFECT))
    metrics = ev.evaluate()
    assert set(metrics) == {"bbox", "segm", "per_class", "num_images", "checkpoint"}
    for iou_type in ("bbox", "segm"):
        assert set(metrics[iou_type]) == set(evaluation.METRIC_KEYS)
        assert metrics[iou_type]["AP"] == pytest.approx(1.0)
        assert metrics[iou_type]["AP50"] == pytest.approx(1.0)
        assert metrics[iou_type]["APs"] == pytest.approx(1.0)
        assert metrics[iou_type]["APl"] == -1.0  # no large objects
    assert metrics["per_class"] == {name: {"bbox_AP": pytest.approx(1.0), "segm_AP": pytest.approx(1.0)}
                                    for name in CATEGORY_NAMES}
    assert metrics["num_images"] == 2  # image 13 (not seen) is not evaluated
    json.dumps(metrics)
    table = evaluation.format_metrics(metrics)
    assert "round" in table and "1.000" in table


def test_shifted_box_lowers_ap(gt_file):
    shifted = [list(PERFECT[0]), list(PERFECT[1])]
    shifted[0][2] = ("disk", 20, 30, 2, 0.8)  # 2 px right: box IoU 14/18 = 0.78
    ev = _evaluator(gt_file)
    ev.update(*_batch(shifted))
    metrics = ev.evaluate()
    # "round" matches at IoU thresholds 0.50..0.75 only (6 of 10); "angular" stays perfect.
    assert metrics["per_class"]["round"]["bbox_AP"] == pytest.approx(0.6)
    assert metrics["per_class"]["angular"]["bbox_AP"] == pytest.approx(1.0)
    assert metrics["bbox"]["AP"] == pytest.approx(0.8)
    assert metrics["bbox"]["AP50"] == pytest.approx(1.0)
    assert metrics["segm"]["AP"] < 1.0


def test_results_file_reevaluates_to_same_ap(gt_file, tmp_path):
    shifted = [list(PERFECT[0]), list(PERFECT[1])]
    shifted[0][2] = ("disk", 20, 30, 2, 0.8)
    ev = _evaluator(gt_file)
    ev.update(*_batch(shifted))
    metrics = ev.evaluate()
    path = ev.write_results(str(tmp_path / "out" / "submission.json"))
    gt = COCO(gt_file)
    for iou_type in ("bbox", "segm"):
        coco_eval = COCOeval(gt, gt.loadRes(path), iouType=iou_type)
        coco_eval.params.imgIds = [11, 12]
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
        assert coco_eval.stats[0] == pytest.approx(metrics[iou_type]["AP"])
    with open(path) as f:
        results = json.load(f)
    assert len(results) == 4
    assert all(isinstance(r["segmentation"]["counts"], str) for r in results)


def test_empty_detections_give_zero(gt_file):
    ev = _evaluator(gt_file)
    ev.update(*_batch([[], []]))
    metrics = ev.evaluate()
    assert ev.results == []
    for iou_type in ("bbox", "segm"):
        assert metrics[iou_type]["AP"] == 0.0
    assert all(v == {"bbox_AP": 0.0, "segm_AP": 0.0} for v in metrics["per_class"].values())
    with pytest.raises(ValueError, match="no images"):
        _evaluator(gt_file).evaluate()


def test_update_skips_padding_and_repeats_rejects_unknown(gt_file):
    ev = _evaluator(gt_file)
    outputs, info, _ = _batch(PERFECT)
    ev.update(outputs, info, np.array([11, -1]))
    ev.update(outputs, info, np.array([11, 12]))  # 11 again: skipped
    assert ev.image_ids == [11, 12]
    assert len(ev.results) == 4
    with pytest.raises(ValueError, match="not in the annotation file"):
        ev.update(outputs, info, np.array([11, 99]))


def test_mapping_to_original_pixels_hand_computed():
    # Original 100 x 200; model point = p * (0.5, 0.25) - (10, 5).
    info = np.array([[[100, 200], [50, 50], [0.5, 0.25], [10, 5]]], np.float32)
    outputs = {
        # (y1, x1, y2, x2) model pixels -> original ((y + 10) / 0.5, (x + 5) / 0.25), clipped:
        # [15, 20, 45, 60] -> [50, 100, 110 -> 100, 260 -> 200]; [0, 0, 5, 7.5] -> [20, 20, 30, 50]
        "detection_boxes": np.array([[[15, 20, 45, 60], [0, 0, 5, 7.5], [1, 1, 2, 2]]], np.float32),
        "detection_scores": np.array([[0.9, 0.7, 0.1]], np.float32),
        "detection_classes": np.array([[2, 1, 0]], np.int32),
        "detection_masks": np.ones((1, 3, 4, 4), np.float32),
        "num_detections": np.array([2], np.int32),
    }
    results = evaluation.detections_to_coco(outputs, info, np.array([42]), category_ids=[5, 9])
    assert len(results) == 2  # the padding row is skipped
    first, second = results
    assert first["image_id"] == 42 and first["category_id"] == 9 and second["category_id"] == 5
    assert first["bbox"] == pytest.approx([100.0, 50.0, 100.0, 50.0])
    assert second["bbox"] == pytest.approx([20.0, 20.0, 30.0, 10.0])
    assert first["score"] == pytest.approx(0.9)
    assert first["segmentation"]["size"] == [100, 200]
    expected = np.zeros((100, 200), np.uint8)
    expected[50:100, 100:200] = 1
    np.testing.assert_array_equal(mask_util.decode(first["segmentation"]), expected)
    expected = np.zeros((100, 200), np.uint8)
    expected[20:30, 20:50] = 1
    np.testing.assert_array_equal(mask_util.decode(second["segmentation"]), expected)
    json.dumps(results)


def test_bad_label_raises():
    outputs = {"detection_boxes": np.zeros((1, 1, 4), np.float32) + [0, 0, 4, 4],
               "detection_scores": np.ones((1, 1), np.float32),
               "detection_classes": np.array([[3]], np.int32),
               "detection_masks": np.ones((1, 1, 4, 4), np.float32),
               "num_detections": np.array([1], np.int32)}
    info = np.array([[[8, 8], [8, 8], [1, 1], [0, 0]]], np.float32)
    with pytest.raises(ValueError, match="outside 1..2"):
        evaluation.detections_to_coco(outputs, info, np.array([1]), category_ids=[1, 2])


def test_checked_ground_truth_evaluates_what_raw_pycocotools_cannot(gt_file, tmp_path):
    """Annotations that training skips crash pycocotools on the raw file; the checked ground truth
    (mrcnn_tf2.pipelines.coco.ground_truth) drops them, and scores exactly as the clean file does."""
    from mrcnn_tf2.pipelines import coco

    with open(gt_file) as f:
        data = json.load(f)
    clean = _evaluator(gt_file)
    clean.update(*_batch(PERFECT))
    expected = clean.evaluate()
    next_id = len(data["annotations"]) + 1
    for k, segm in enumerate([[[5.0, 5.0, 9.0, 9.0]], [[5.0, 5.0]], [[1.0, 1.0, float("nan"), 2.0, 3.0, 3.0]],
                              [[5.0, 5.0, 9.0, 5.0, 9.0]]]):
        data["annotations"].append({"id": next_id + k, "image_id": 11, "category_id": 3, "segmentation": segm})
    messy = tmp_path / "messy.json"
    messy.write_text(json.dumps(data))
    raw = evaluation.CocoEvaluator(str(messy), CATEGORY_IDS, CATEGORY_NAMES)
    raw.update(*_batch(PERFECT))
    with pytest.raises(Exception):  # noqa: B017, PT011 - whatever pycocotools raises on them
        raw.evaluate()
    dataset = coco.load_coco(str(messy), str(tmp_path), check_files=False)
    assert dataset.skipped["zero_area"] == 2
    checked = evaluation.CocoEvaluator(coco.ground_truth(dataset), CATEGORY_IDS, CATEGORY_NAMES)
    checked.update(*_batch(PERFECT))
    assert checked.evaluate() == expected
