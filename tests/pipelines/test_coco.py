"""pipelines/coco.py: decoding against pycocotools, crowd, category mapping, bad input, dataset paths."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from mrcnn_tf2.pipelines import coco
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from tests.pipelines.coco_fixtures import rect_polygon, small_config, write_coco


def _uncompressed_rle(mask: np.ndarray) -> dict:
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"size": list(mask.shape), "counts": counts}


@pytest.fixture
def mixed_dataset(tmp_path):
    """Polygons (multi-part), compressed and uncompressed RLE, a crowd region, an empty image."""
    h, w = 40, 50
    rng = np.random.default_rng(1)
    blob = np.zeros((h, w), np.uint8)
    blob[5:20, 10:30] = 1
    blob[25:35, 3:9] = 1
    blob[rng.random((h, w)) < 0.05] = 1
    compressed = mask_utils.encode(np.asfortranarray(blob))
    images = [{"id": 0, "file_name": "a.jpg", "height": h, "width": w},
              {"id": 5, "file_name": "nested/b.png", "height": h, "width": w},
              {"id": 9, "file_name": "c.bmp", "height": h, "width": w}]
    annotations = [
        {"id": 1, "image_id": 0, "category_id": 0, "iscrowd": 0, "bbox": [2, 3, 20, 20],
         "segmentation": [[2.5, 3.2, 22.0, 4.0, 12.0, 23.7], [30, 30, 45, 30, 45, 38, 30, 38]]},
        {"id": 2, "image_id": 0, "category_id": 4, "iscrowd": 0, "bbox": [0, 0, 1, 1],
         "segmentation": {"size": [h, w], "counts": compressed["counts"].decode()}},
        {"id": 3, "image_id": 5, "category_id": 4, "iscrowd": 0, "bbox": [0, 0, 1, 1],
         "segmentation": _uncompressed_rle(1 - blob)},
        {"id": 4, "image_id": 5, "category_id": 0, "iscrowd": 1, "bbox": [0, 0, 10, 10],
         "segmentation": _uncompressed_rle(blob)},
    ]
    categories = [{"id": 4, "name": "four"}, {"id": 0, "name": "zero"}]
    ann, image_dir = write_coco(str(tmp_path), images, annotations, categories)
    return ann, image_dir


def test_masks_equal_pycocotools(mixed_dataset):
    ann, image_dir = mixed_dataset
    ds = coco.load_coco(ann, image_dir)
    ref = COCO(ann)
    checked = 0
    for record in ds.images:
        masks = coco.instance_masks(record)
        assert masks.dtype == np.uint8 and masks.shape == (len(record.instances), 40, 50)
        for inst, mask in zip(record.instances, masks):
            expected = ref.annToMask(ref.anns[inst.annotation_id])
            np.testing.assert_array_equal(mask, expected)
            checked += 1
    assert checked == 3


def test_crowd_and_empty_images(mixed_dataset):
    ann, image_dir = mixed_dataset
    ds = coco.load_coco(ann, image_dir)
    by_id = {r.image_id: r for r in ds.images}
    assert [i.annotation_id for i in by_id[5].instances] == [3]  # the crowd region is not an instance
    assert by_id[5].num_crowd == 1
    assert by_id[9].instances == ()  # kept as a negative
    assert 9 not in {r.image_id for r in coco.load_coco(ann, image_dir, skip_empty=True).images}
    assert by_id[5].path == os.path.join(image_dir, "nested/b.png")


def test_category_mapping_zero_based_and_gapped(mixed_dataset, tmp_path):
    ann, image_dir = mixed_dataset
    ds = coco.load_coco(ann, image_dir)
    assert ds.category_ids == (0, 4) and ds.category_names == ("zero", "four")
    labels = {i.annotation_id: i.label for r in ds.images for i in r.instances}
    assert labels == {1: 1, 2: 2, 3: 2}
    # Gapped COCO-style ids keep ascending order; an explicit mapping (e.g. the train set's) wins.
    images = [{"id": 1, "file_name": "x.png", "height": 8, "width": 8}]
    cats = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 13, "name": "sign"}]
    anns = [{"id": 1, "image_id": 1, "category_id": 13, "bbox": [1, 1, 3, 3]}]
    ann2, dir2 = write_coco(str(tmp_path / "gap"), images, anns, cats)
    gapped = coco.load_coco(ann2, dir2)
    assert gapped.category_ids == (1, 13, 90) and gapped.images[0].instances[0].label == 2
    mapped = coco.load_coco(ann2, dir2, category_ids=(13, 90))
    assert mapped.images[0].instances[0].label == 1 and mapped.category_names == ("sign", "toothbrush")


def _bad(tmp_path, mutate, name="bad.json"):
    images = [{"id": 1, "file_name": "x.png", "height": 8, "width": 8}]
    anns = [{"id": 11, "image_id": 1, "category_id": 2, "segmentation": [rect_polygon(1, 1, 3, 3)],
             "bbox": [1, 1, 3, 3], "iscrowd": 0}]
    cats = [{"id": 2, "name": "two"}]
    _, image_dir = write_coco(str(tmp_path), images, [], cats)
    data = json.loads(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    mutate(data)
    path = os.path.join(str(tmp_path), name)
    with open(path, "w") as f:
        json.dump(data, f)
    return path, image_dir


@pytest.mark.parametrize("mutate, fragments", [
    (lambda d: d.pop("annotations"), ["top-level field 'annotations'"]),
    (lambda d: d.update(categories={}), ["top-level field 'categories' must be a list"]),
    (lambda d: d["images"][0].pop("file_name"), ["images[0]", "'file_name'"]),
    (lambda d: d["images"][0].update(file_name=""), ["images[0] (id 1)", "'file_name' is empty"]),
    (lambda d: d["images"][0].update(height="8"), ["images[0]", "'height'"]),
    (lambda d: d["images"][0].update(width=7.5), ["images[0]", "'width'", "positive integer"]),
    (lambda d: d["images"][0].update(id="1"), ["images[0]", "'id' must be an integer"]),
    (lambda d: d["images"].append(dict(d["images"][0])), ["images[1]", "duplicate image id 1"]),
    (lambda d: d["annotations"][0].pop("category_id"), ["annotations[0] (id 11)", "'category_id'"]),
    (lambda d: d["annotations"][0].update(image_id=99), ["annotations[0] (id 11)", "'image_id' = 99"]),
    (lambda d: d["annotations"][0].update(category_id=5), ["annotations[0] (id 11)", "'category_id' = 5",
                                                            "add the category"]),
    (lambda d: d["annotations"][0].update(category_id="2"), ["annotations[0] (id 11)", "'category_id'",
                                                              "integer"]),
    (lambda d: d["annotations"][0].update(iscrowd=2), ["annotations[0] (id 11)", "'iscrowd'"]),
    (lambda d: d["annotations"].append(7), ["annotations[1]", "JSON object"]),
    (lambda d: d["categories"].append({"id": 2, "name": "dup"}), ["categories[1]", "duplicate"]),
    (lambda d: d["images"][0].update(file_name="missing.png"), ["images[0] (id 1)", "'file_name'",
                                                                 "missing.png", "not found"]),
])
def test_bad_input_names_file_and_field(tmp_path, mutate, fragments):
    path, image_dir = _bad(tmp_path, mutate)
    with pytest.raises(coco.DatasetError) as err:
        coco.load_coco(path, image_dir)
    message = str(err.value)
    assert message.startswith(path), message
    for fragment in fragments:
        assert fragment in message, message


def test_malformed_json_and_missing_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [}')
    with pytest.raises(coco.DatasetError, match=r"broken\.json: malformed JSON at line 1 column"):
        coco.load_coco(str(path), str(tmp_path))
    with pytest.raises(coco.DatasetError, match=r"nope\.json: annotation file not found"):
        coco.load_coco(str(tmp_path / "nope.json"), str(tmp_path))


def test_recoverable_problems_are_counted(tmp_path):
    images = [{"id": 3, "file_name": "x.png", "height": 20, "width": 20}]
    anns = [
        # one degenerate part (2 points) and one good part: kept, the part is counted
        {"id": 1, "image_id": 3, "category_id": 1, "segmentation": [[1, 1, 5, 5], rect_polygon(2, 2, 4, 4)]},
        {"id": 2, "image_id": 3, "category_id": 1, "segmentation": [[1, 1, 5, 5]]},  # only degenerate
        {"id": 3, "image_id": 3, "category_id": 1, "segmentation": [[1, 1, 5, 5, 9, 9]]},  # zero area
        {"id": 4, "image_id": 3, "category_id": 1, "bbox": [15, 15, 10, 10]},  # box-only, clipped
        {"id": 5, "image_id": 3, "category_id": 1, "bbox": [30, 30, 5, 5]},  # box fully outside
    ]
    ann, image_dir = write_coco(str(tmp_path), images, anns, [{"id": 1, "name": "a"}])
    ds = coco.load_coco(ann, image_dir)
    assert [i.annotation_id for i in ds.images[0].instances] == [1, 4]
    assert ds.skipped == {"degenerate_polygon_parts": 2, "zero_area": 3, "clipped_boxes": 2,
                          "box_only_masks": 1}
    assert ds.images[0].instances[1].bbox == (15.0, 15.0, 5.0, 5.0)
    masks = coco.instance_masks(ds.images[0])
    assert masks[1].sum() == 25 and masks[1, 15:20, 15:20].all()


def test_dataset_paths_uses_given_files_or_generates_shapes(tmp_path):
    cfg = small_config("a.json", "imgs", **{"data.train_tfrecords": "recs"})
    assert coco.dataset_paths(cfg, "train") == coco.DatasetPaths("a.json", "imgs", "recs")
    assert coco.dataset_paths(cfg, "eval") == coco.DatasetPaths("a.json", "imgs", "")
    half = small_config("a.json", "", **{"data.train_tfrecords": ""})
    with pytest.raises(coco.DatasetError, match="data.train_images"):
        coco.dataset_paths(half, "train")
    shapes_dir = str(tmp_path / "shapes")
    cfg = small_config("", "", **{"data.val_annotations": "", "data.val_images": "", "data.data_dir": shapes_dir,
                                  "data.shapes_num_train": 4, "data.shapes_num_val": 2})
    paths = coco.dataset_paths(cfg, "eval")
    assert paths.annotations == os.path.join(shapes_dir, "val.json")
    ds = coco.load_coco(paths.annotations, paths.images)
    assert len(ds.images) == 2 and ds.category_names == ("square", "circle", "triangle")
    assert coco.category_mapping(cfg) == ((1, 2, 3), ("square", "circle", "triangle"))


def test_concurrent_shapes_generation(tmp_path):
    """Two processes generating at once leave one complete, consistent dataset."""
    target = str(tmp_path / "data")
    code = ("import sys; from mrcnn_tf2.pipelines import shapes; "
            f"shapes.ensure_shapes_dataset({target!r}, num_train=30, num_val=5)")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=root) for _ in range(2)]
    assert all(p.wait(timeout=60) == 0 for p in procs)
    ds = coco.load_coco(os.path.join(target, "train.json"), os.path.join(target, "images", "train"))
    assert len(ds.images) == 30
    assert sorted(os.listdir(os.path.join(target, "images", "train"))) == [f"{i:06d}.png" for i in range(1, 31)]
