"""COCO category mapping of torchvision's 91-output models, and evaluation skipping its 'N/A' labels."""

import json

import numpy as np
import pytest
from pycocotools import mask as mask_util

from mrcnn_tf2 import coco_categories, evaluation
from mrcnn_tf2.mask_paste import paste_masks_torchvision
from tests.torch_import import import_torch


def test_names_match_torchvision_meta():
    import_torch()
    from torchvision.models._meta import _COCO_CATEGORIES

    assert list(coco_categories.TORCHVISION_CATEGORY_NAMES) == list(_COCO_CATEGORIES[1:])
    assert coco_categories.TORCHVISION_CATEGORY_IDS == tuple(range(1, 91))
    assert len(coco_categories.COCO_CATEGORIES) == 80


def _outputs(labels):
    n = len(labels)
    return {"detection_boxes": np.tile(np.array([[[2, 3, 10, 12]]], np.float32), (1, n, 1)),
            "detection_scores": np.linspace(0.9, 0.5, n, dtype=np.float32)[None],
            "detection_classes": np.array([labels], np.int32),
            "detection_masks": np.ones((1, n, 6, 6), np.float32),
            "num_detections": np.array([n], np.int32)}


def test_detections_skip_na_labels_and_write_category_ids():
    info = np.array([[[16, 16], [16, 16], [1, 1], [0, 0]]], np.float32)
    ids, names = coco_categories.TORCHVISION_CATEGORY_IDS, coco_categories.TORCHVISION_CATEGORY_NAMES
    results = evaluation.detections_to_coco(_outputs([1, 12, 90, 83, 13]), info, np.array([7]), ids,
                                            category_names=names, paste_mode="torchvision")
    assert [r["category_id"] for r in results] == [1, 90, 13]  # 12 and 83 are 'N/A'
    assert [r["score"] for r in results] == pytest.approx([0.9, 0.7, 0.5])
    expected = paste_masks_torchvision(np.ones((1, 6, 6)), np.array([[2, 3, 10, 12]]), 16, 16)[0] >= 0.5
    np.testing.assert_array_equal(mask_util.decode(results[0]["segmentation"]), expected)
    # Without names every label is written (the old behaviour).
    assert len(evaluation.detections_to_coco(_outputs([1, 12]), info, np.array([7]), ids)) == 2
    with pytest.raises(ValueError, match="category names"):
        evaluation.detections_to_coco(_outputs([1]), info, np.array([7]), ids, category_names=names[:3])


def test_evaluator_leaves_na_categories_out(tmp_path):
    ann = {"images": [{"id": 1, "height": 16, "width": 16, "file_name": "a.jpg"}],
           "categories": [{"id": 1, "name": "person"}, {"id": 90, "name": "toothbrush"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [3, 2, 9, 8], "area": 72,
                            "iscrowd": 0, "segmentation": [[3, 2, 12, 2, 12, 10, 3, 10]]}]}
    path = tmp_path / "val.json"
    path.write_text(json.dumps(ann))
    evaluator = evaluation.CocoEvaluator(str(path), coco_categories.TORCHVISION_CATEGORY_IDS,
                                         coco_categories.TORCHVISION_CATEGORY_NAMES)
    info = np.array([[[16, 16], [16, 16], [1, 1], [0, 0]]], np.float32)
    evaluator.update(_outputs([1, 12]), info, np.array([1]))
    metrics = evaluator.evaluate()
    assert len(metrics["per_class"]) == 80 and "N/A" not in metrics["per_class"]
    assert metrics["bbox"]["AP"] == pytest.approx(1.0)
    assert all(r["category_id"] != 12 for r in evaluator.results)
