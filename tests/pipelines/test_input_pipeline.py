"""pipelines/input_pipeline.py: the batch contract, modes, image_info round trip, sharding, determinism."""

import json
import logging
import os

import numpy as np
import pytest
import tensorflow as tf
from mrcnn_tf2.pipelines import coco
from mrcnn_tf2.pipelines.example import decode_example, encode_record
from mrcnn_tf2.pipelines.input_pipeline import build_dataset
from mrcnn_tf2.pipelines.preprocess import preprocess_image

from tests.pipelines.coco_fixtures import rect_polygon, rectangles_dataset, small_config, write_coco

OFF = {"data.augment.enabled": False}
GEOMETRY_ONLY = {"data.augment.hflip_prob": 0.0, "data.augment.brightness": 0.0, "data.augment.contrast": 0.0,
                 "data.augment.saturation": 0.0, "data.augment.hue": 0.0, "data.augment.crop_prob": 1.0,
                 "data.augment.scale_min": 0.7, "data.augment.scale_max": 1.5}


@pytest.fixture(scope="module")
def rects(tmp_path_factory):
    return rectangles_dataset(str(tmp_path_factory.mktemp("rects")), num_images=6)


def batches(ds, n):
    return [{k: v.numpy() for k, v in b.items()} for b in ds.take(n)]


def to_original(boxes: np.ndarray, info: np.ndarray) -> np.ndarray:
    """Model-input yxyx -> original-image yxyx: p_orig = (p + offset) / scale."""
    return (boxes + np.tile(info[3], 2)) / np.tile(info[2], 2)


def test_train_element_spec_is_static_and_matches_the_contract(rects):
    cfg = small_config(rects[0], rects[1])
    spec = build_dataset(cfg, "train").element_spec
    expected = {"images": ([2, 64, 64, 3], tf.float32), "image_info": ([2, 4, 2], tf.float32),
                "image_id": ([2], tf.int64), "gt_boxes": ([2, 4, 4], tf.float32),
                "gt_classes": ([2, 4], tf.int32), "gt_masks": ([2, 4, 8, 8], tf.float32)}
    assert {k: (s.shape.as_list(), s.dtype) for k, s in spec.items()} == expected
    eval_spec = build_dataset(cfg, "eval").element_spec
    assert eval_spec["gt_masks"].shape.as_list() == [None, 4, 8, 8]  # partial last batch kept


def test_eval_is_ordered_one_pass_with_partial_batch_and_uses_preprocess_image(rects):
    ann, image_dir, boxes = rects
    cfg = small_config(ann, image_dir, **{"eval.batch_size": 4, "model.pixel_normalization": "caffe"})
    out = batches(build_dataset(cfg, "eval"), 10)
    assert [b["image_id"].tolist() for b in out] == [[100, 101, 102, 103], [104, 105]]
    record = coco.load_coco(ann, image_dir).images[5]
    decoded = decode_example({k: tf.constant(v) for k, v in encode_record(record).items()})
    image, info = preprocess_image(decoded["image"], 64, "caffe")
    np.testing.assert_array_equal(out[1]["images"][1], image.numpy())
    np.testing.assert_array_equal(out[1]["image_info"][1], info.numpy())


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_image_info_round_trip_gives_back_the_coco_boxes(rects, mode):
    """A gt box mapped back with image_info is the COCO bbox (cut by the crop window in train mode)."""
    ann, image_dir, coco_boxes = rects
    with open(ann) as f:
        categories = {}
        for a in json.load(f)["annotations"]:
            categories.setdefault(a["image_id"], []).append(a["category_id"])
    label_of = {3: 1, 7: 2}  # contiguous labels follow the sorted category ids
    # Tight crops (down to 30% of a side) cut instances to a few pixels: each must still be there.
    cfg = small_config(ann, image_dir, **GEOMETRY_ONLY, **{"data.augment.crop_min_fraction": 0.3})
    for batch in batches(build_dataset(cfg, mode), 4):
        for i, image_id in enumerate(batch["image_id"]):
            info = batch["image_info"][i]
            valid = batch["gt_classes"][i] > 0
            got = to_original(batch["gt_boxes"][i][valid], info)
            got_labels = batch["gt_classes"][i][valid]
            window = np.concatenate([info[3] / info[2], (info[3] + info[1]) / info[2]])  # original pixels
            expected = []
            for (x, y, w, h), category in zip(coco_boxes[int(image_id)], categories[int(image_id)]):
                y1, x1 = max(y, window[0]), max(x, window[1])
                y2, x2 = min(y + h, window[2]), min(x + w, window[3])
                if y2 - y1 >= 0.5 and x2 - x1 >= 0.5:
                    expected.append([y1, x1, y2, x2, label_of[category]])
            if mode == "eval":
                np.testing.assert_array_equal(info[3], 0)
            # Every instance the window keeps, each exactly once (order differs: sorted by area). Crop
            # windows are whole original pixels, so the expected boxes are exact.
            assert len(got) == len(expected), (int(image_id), got, expected)
            remaining = [np.array(box) for box in expected]
            for box, label in zip(got, got_labels):
                errors = [np.abs(e[:4] - box).max() if e[4] == label else np.inf for e in remaining]
                assert errors and min(errors) < 1e-3, (int(image_id), box, label, expected)
                remaining.pop(int(np.argmin(errors)))
            assert not remaining


def test_crowd_regions_are_not_ground_truth_and_overflow_keeps_largest(tmp_path, caplog):
    images = [{"id": 1, "file_name": "a.png", "height": 40, "width": 40}]
    anns = [{"id": k + 1, "image_id": 1, "category_id": 1, "segmentation": [rect_polygon(k, k, 3 + k, 3 + k)]}
            for k in range(6)]
    anns.append({"id": 99, "image_id": 1, "category_id": 2, "iscrowd": 1, "bbox": [0, 0, 40, 40],
                 "segmentation": [rect_polygon(0, 0, 40, 40)]})
    ann, image_dir = write_coco(str(tmp_path), images, anns, [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
    cfg = small_config(ann, image_dir, **{"eval.batch_size": 1, "model.image_size": 64})
    with caplog.at_level(logging.WARNING):
        (batch,) = batches(build_dataset(cfg, "eval"), 1)
    assert "1 of 1 images have more than data.max_instances=4" in caplog.text
    assert batch["gt_classes"][0].tolist() == [1, 1, 1, 1]  # never the crowd class 2
    sides = (batch["gt_boxes"][0][:, 2] - batch["gt_boxes"][0][:, 0]) * 40 / 64
    np.testing.assert_allclose(sides, [8, 7, 6, 5], atol=1e-4)  # the 4 largest of 3..8


def test_normalizations_end_to_end(rects):
    ann, image_dir, _ = rects
    none = batches(build_dataset(small_config(ann, image_dir, **{"model.pixel_normalization": "none"}),
                                 "eval"), 1)[0]["images"]
    caffe = batches(build_dataset(small_config(ann, image_dir, **{"model.pixel_normalization": "caffe"}),
                                  "eval"), 1)[0]["images"]
    content = none[0, :48]  # 48 x 64 images: rows 48+ are padding
    np.testing.assert_allclose(caffe[0, :48], content[..., ::-1] - [103.939, 116.779, 123.68], atol=1e-3)
    assert not caffe[0, 48:].any() and content.max() == 255.0


def test_two_input_pipelines_shard_the_images(rects):
    ann, image_dir, _ = rects
    cfg = small_config(ann, image_dir, **{"train.batch_size": 4, "eval.batch_size": 4})
    seen = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id,
                                             num_replicas_in_sync=2)
        train = batches(build_dataset(cfg, "train", context), 3)
        assert train[0]["images"].shape[0] == 2  # per-replica batch
        ids = {int(i) for b in batches(build_dataset(cfg, "eval", context), 10) for i in b["image_id"]}
        assert {int(i) for b in train for i in b["image_id"]} == ids
        seen.append(ids)
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(100, 106))


def test_training_is_deterministic_and_seeded(rects):
    ann, image_dir, _ = rects
    over = {"data.shuffle_buffer": 100, "data.augment.rotation_prob": 0.5, "data.augment.noise_prob": 0.5}
    a = batches(build_dataset(small_config(ann, image_dir, **over), "train"), 4)
    b = batches(build_dataset(small_config(ann, image_dir, **over), "train"), 4)
    c = batches(build_dataset(small_config(ann, image_dir, **over, **{"data.seed": 1}), "train"), 4)
    for x, y in zip(a, b):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    assert any(not np.array_equal(x["images"], z["images"]) for x, z in zip(a, c))
    ids = [int(i) for x in a for i in x["image_id"]]  # the first epoch is a permutation of all images
    assert sorted(ids[:6]) == list(range(100, 106))


def test_skip_batches_resumes_the_same_stream(rects):
    ann, image_dir, _ = rects
    cfg = small_config(ann, image_dir, **{"data.shuffle_buffer": 100, "data.augment.rotation_prob": 0.5})
    full = batches(build_dataset(cfg, "train"), 5)
    resumed = batches(build_dataset(cfg, "train", skip_batches=3), 2)
    for x, y in zip(full[3:], resumed):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_uncached_path_equals_cached_path(rects):
    ann, image_dir, _ = rects
    over = {"data.shuffle_buffer": 100, "data.augment.rotation_prob": 0.5}
    cached = batches(build_dataset(small_config(ann, image_dir, **over), "train"), 4)
    streamed = batches(build_dataset(small_config(ann, image_dir, **over, **{"data.cache_max_mb": 0}),
                                     "train"), 4)
    for x, y in zip(cached, streamed):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_no_augmentation_and_no_shuffle_gives_a_fixed_order_equal_to_eval(rects):
    ann, image_dir, _ = rects
    cfg = small_config(ann, image_dir, **OFF, **{"eval.batch_size": 2})
    train = batches(build_dataset(cfg, "train"), 4)  # 8 images: wraps around after 6
    evaluation = batches(build_dataset(cfg, "eval"), 3)
    assert [int(i) for b in train for i in b["image_id"]] == [100, 101, 102, 103, 104, 105, 100, 101]
    for t, e in zip(train, evaluation):
        for key in t:
            np.testing.assert_array_equal(t[key], e[key])


def test_skip_empty_and_distribute_datasets_from_function(tmp_path):
    images = [{"id": i, "file_name": f"{i}.png", "height": 32, "width": 32} for i in range(4)]
    anns = [{"id": 1, "image_id": 2, "category_id": 1, "segmentation": [rect_polygon(4, 4, 10, 10)]}]
    ann, image_dir = write_coco(str(tmp_path), images, anns, [{"id": 1, "name": "a"}])
    cfg = small_config(ann, image_dir, **{"data.skip_empty": True, "train.batch_size": 4})
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    dist = strategy.distribute_datasets_from_function(lambda ctx: build_dataset(cfg, "train", ctx))
    batch = next(iter(dist))
    local = strategy.experimental_local_results(batch["image_id"])
    assert len(local) == 2 and all(x.numpy().tolist() == [2, 2] for x in local)
    assert strategy.experimental_local_results(batch["gt_masks"])[0].shape == (2, 4, 8, 8)


def test_bad_mode_and_bad_dataset(tmp_path, rects):
    with pytest.raises(ValueError, match="mode"):
        build_dataset(small_config(*rects[:2]), "predict")
    path = os.path.join(str(tmp_path), "bad.json")
    with open(path, "w") as f:
        json.dump({"images": [], "annotations": [], "categories": [{"id": 1}]}, f)
    with pytest.raises(coco.DatasetError, match=r"bad\.json: categories\[0\]: missing field 'name'"):
        build_dataset(small_config(path, str(tmp_path)), "train")


def test_resume_renders_only_what_it_uses(rects, monkeypatch):
    """Uncached JSON path: skipped examples are never read or rendered, and the stream is unchanged."""
    from mrcnn_tf2.pipelines import input_pipeline

    ann, image_dir, _ = rects
    cfg = small_config(ann, image_dir, **{"data.shuffle_buffer": 100, "data.augment.rotation_prob": 0.5,
                                          "data.cache_max_mb": 0})
    rendered = []
    real = input_pipeline.encode_record
    monkeypatch.setattr(input_pipeline, "encode_record", lambda r: rendered.append(r.image_id) or real(r))
    full = batches(build_dataset(cfg, "train"), 32)
    rendered.clear()
    resumed = batches(build_dataset(cfg, "train", skip_batches=30), 2)  # 60 examples = 10 epochs skipped
    for x, y in zip(full[30:], resumed):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    assert 4 <= len(rendered) < 30, len(rendered)  # the 4 used (+ prefetch), not the 60 skipped
