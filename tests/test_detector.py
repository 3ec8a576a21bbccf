"""mrcnn_tf2.Detector: run directory and SavedModel in, detections in the original image frame out.

One random-weight ``shapes`` model (batch-norm statistics perturbed, score threshold 0 so that it
returns detections) is checkpointed into a run directory with its ``config.json``; the tests read it
back with ``Detector.from_run`` and check the results against plain NumPy computations on the model's
own outputs, against pycocotools, and against an export read with ``Detector.from_saved_model``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from mrcnn_tf2.pipelines.preprocess import preprocess_image
from pycocotools.coco import COCO

from mrcnn_tf2 import Detection, Detector, build_model, config
from mrcnn_tf2.checkpoints import CheckpointKeeper
from mrcnn_tf2.detector import ImageError, ModelServe
from mrcnn_tf2.run_dir import write_config
from tests.helpers import gradient_image

CATEGORY_IDS = (3, 7, 11)
NAMES = ("square", "circle", "triangle")
SIZES = ((50, 70), (90, 40), (128, 128))  # (h, w): wide, tall, the model's own size


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    keras.utils.set_random_seed(0)
    cfg = config.preset("shapes", overrides={"model.detection.score_threshold": 0.0, "eval.batch_size": 2,
                                             "data.category_ids": list(CATEGORY_IDS),
                                             "data.category_names": list(NAMES)})
    model = build_model(cfg)
    rng = np.random.default_rng(1)
    for v in model.non_trainable_variables:  # batch-norm statistics away from their initial values
        if v.path.endswith("moving_mean"):
            v.assign(rng.normal(0, 0.1, v.shape).astype(np.float32))
        elif v.path.endswith("moving_variance"):
            v.assign(rng.uniform(0.5, 2.0, v.shape).astype(np.float32))
    root = tmp_path_factory.mktemp("detector")
    model_dir = str(root / "run")
    CheckpointKeeper(model_dir, model).save(5)
    write_config(cfg, os.path.join(model_dir, "config.json"))
    images = [gradient_image(h, w, seed=i + 2) for i, (h, w) in enumerate(SIZES)]
    paths = []
    for i, image in enumerate(images):
        paths.append(str(root / f"image{i}.png"))
        tf.io.write_file(paths[-1], tf.io.encode_png(image))
    detector = Detector.from_run(model_dir)
    return types.SimpleNamespace(cfg=cfg, model=model, root=root, model_dir=model_dir, images=images, paths=paths,
                                 detector=detector)


def _assert_same(a: Detection, b: Detection, atol: float = 0.0) -> None:
    assert len(a) == len(b)
    assert a.category_names == b.category_names
    np.testing.assert_array_equal(a.category_ids, b.category_ids)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=atol, rtol=0)
    np.testing.assert_allclose(a.scores, b.scores, atol=atol, rtol=0)
    if atol == 0.0:
        np.testing.assert_array_equal(a.masks, b.masks)


def test_paths_bytes_and_arrays_of_different_sizes_give_identical_results(run):
    detector = run.detector
    assert detector.batch_size == 2 and detector.source.endswith("ckpt-5")
    encoded = []
    for path in run.paths:
        with open(path, "rb") as f:
            encoded.append(f.read())
    from_paths = detector.detect(run.paths)
    from_bytes = detector.detect(encoded)
    from_arrays = detector.detect(run.images)
    assert len(from_paths) == len(from_bytes) == len(from_arrays) == 3
    for p, b, a, image in zip(from_paths, from_bytes, from_arrays, run.images):
        assert len(a) > 0
        _assert_same(p, a)
        _assert_same(b, a)
        assert a.masks.shape == (len(a),) + image.shape[:2] and a.masks.dtype == bool
        assert a.boxes.dtype == np.float32 and a.boxes.shape == (len(a), 4)
        assert set(a.category_ids.tolist()) <= set(CATEGORY_IDS)
        assert a.category_names == tuple(NAMES[CATEGORY_IDS.index(c)] for c in a.category_ids)
        assert np.all(np.diff(a.scores) <= 0)  # best first
    # A single input gives a single result; alone in its batch it matches its batched self.
    single = detector.detect(run.images[1])
    assert isinstance(single, Detection)
    _assert_same(single, from_arrays[1], atol=1e-5)
    # A [B, H, W, 3] array is a list of B images.
    stacked = detector.detect(np.stack([run.images[2], run.images[2]]))
    assert len(stacked) == 2
    _assert_same(stacked[0], from_arrays[2], atol=1e-5)


def test_boxes_are_in_original_pixels_and_masks_inside_them(run):
    """Reference: the model's own outputs in model-input pixels, scaled back with plain NumPy."""
    results = run.detector.detect(run.images[:2])
    normalization = run.cfg.model.pixel_normalization
    prepared = [preprocess_image(tf.constant(image), 128, normalization) for image in run.images[:2]]
    inputs = tf.stack([p[0] for p in prepared])
    info = np.stack([p[1].numpy() for p in prepared])
    outputs = {k: v.numpy() for k, v in run.model(inputs, tf.constant(info), training=False).items()}
    for b, (result, image) in enumerate(zip(results, run.images[:2])):
        h, w = image.shape[:2]
        n = int(outputs["num_detections"][b])
        assert len(result) == n
        # The long side fits 128 px, the content size is rounded to whole pixels, each axis keeps its own
        # scale (scaled / original), and the offset is 0 at inference.
        scaled = np.round(np.array([h, w]) * 128 / max(h, w))
        np.testing.assert_allclose(info[b], [[h, w], scaled, scaled / [h, w], [0, 0]], rtol=1e-6)
        scale = np.tile(scaled / [h, w], 2)
        expected = np.clip(outputs["detection_boxes"][b, :n] / scale, 0, [h, w, h, w])
        np.testing.assert_allclose(result.boxes, expected, atol=1e-4, rtol=1e-6)
        np.testing.assert_allclose(result.scores, outputs["detection_scores"][b, :n], atol=1e-5)
        labels = outputs["detection_classes"][b, :n]
        np.testing.assert_array_equal(result.category_ids, np.array(CATEGORY_IDS)[labels - 1])
        np.testing.assert_array_equal(result.labels, labels)
        for mask, (y1, x1, y2, x2) in zip(result.masks, result.boxes):
            rows, cols = np.nonzero(mask)
            if rows.size:  # foreground pixel centres lie inside the box
                assert rows.min() + 0.5 >= y1 and rows.max() + 0.5 <= y2
                assert cols.min() + 0.5 >= x1 and cols.max() + 0.5 <= x2


def test_thresholds_and_probabilities(run):
    image = run.images[0]
    full = run.detector.detect(image)
    probabilities = run.detector.detect(image, return_probabilities=True)
    assert probabilities.masks.dtype == np.float32
    assert probabilities.masks.min() >= 0.0 and probabilities.masks.max() <= 1.0
    np.testing.assert_array_equal(probabilities.masks >= 0.5, full.masks)
    loose = run.detector.detect(image, mask_threshold=0.2)
    assert loose.masks.sum() >= full.masks.sum()
    cut = float(np.median(full.scores))
    kept = run.detector.detect(image, score_threshold=cut)
    assert 0 < len(kept) < len(full) and np.all(kept.scores >= cut)
    np.testing.assert_array_equal(kept.boxes, full.boxes[full.scores >= cut])


def test_to_coco_loads_with_pycocotools_and_draw_renders_the_image(run):
    results = run.detector.detect(run.images)
    gt = COCO()
    gt.dataset = {"images": [{"id": i + 1, "height": im.shape[0], "width": im.shape[1]}
                             for i, im in enumerate(run.images)],
                  "annotations": [], "categories": [{"id": c, "name": n} for c, n in zip(CATEGORY_IDS, NAMES)]}
    gt.createIndex()
    entries = [entry for i, result in enumerate(results) for entry in result.to_coco(i + 1)]
    loaded = gt.loadRes(entries)
    for i, result in enumerate(results):
        anns = loaded.loadAnns(loaded.getAnnIds(imgIds=[i + 1]))
        assert len(anns) == len(result)
        for ann, box, mask, cid in zip(anns, result.boxes, result.masks, result.category_ids):
            y1, x1, y2, x2 = box
            np.testing.assert_allclose(ann["bbox"], [x1, y1, x2 - x1, y2 - y1], atol=1e-4)
            np.testing.assert_array_equal(loaded.annToMask(ann).astype(bool), mask)
            assert ann["category_id"] == cid
    picture = results[0].draw(score_threshold=0.0)
    assert picture.dtype == np.uint8 and picture.shape == run.images[0].shape
    biggest = int(np.argmax(results[0].masks.reshape(len(results[0]), -1).sum(1)))
    assert np.any(picture[results[0].masks[biggest]] != run.images[0][results[0].masks[biggest]])
    nothing = results[0].draw(score_threshold=1.01)
    np.testing.assert_array_equal(nothing, run.images[0])


def test_bad_inputs_name_what_is_wrong(run, tmp_path):
    with pytest.raises(ImageError, match="nope.png"):
        run.detector.detect(str(tmp_path / "nope.png"))
    with pytest.raises(ImageError, match="12 bytes is not a readable"):
        run.detector.detect(b"not an image")
    with pytest.raises(ImageError, match="uint8"):
        run.detector.detect(np.zeros([10, 10, 3], np.float32))
    with pytest.raises(FileNotFoundError, match="config.json"):
        Detector.from_run(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no SavedModel"):
        Detector.from_saved_model(str(tmp_path))


def test_injected_preprocess_is_used(run):
    calls = []

    def preprocess(image, cfg):
        calls.append(cfg.model.image_size)
        return preprocess_image(image, cfg.model.image_size, cfg.model.pixel_normalization)

    detector = Detector.from_model(run.model, run.cfg, preprocess=preprocess)
    assert isinstance(detector.serve, ModelServe)
    _assert_same(detector.detect(run.images[0]), run.detector.detect(run.images[0]), atol=1e-5)
    assert calls == [128]  # traced once


def test_importing_the_detector_imports_neither_pipelines_nor_export_nor_cli():
    code = ("import sys, mrcnn_tf2; assert 'tensorflow' not in sys.modules; from mrcnn_tf2 import Detector; "
            "print(sorted({m.removeprefix('mrcnn_tf2.').split('.')[0] for m in sys.modules} "
            "& {'pipelines', 'export', 'cli'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_saved_model_gives_the_detections_of_the_run(run):
    """Same weights, same preprocessing graph: boxes within 1e-3 px, scores within 1e-5, masks 99.9% equal.

    The SavedModel computes in float32 inside one graph (boxes scaled back in float32, not float64),
    and batches only images of equal size, so results agree to float32 rounding, not bit for bit.
    """
    from mrcnn_tf2.export.saved_model import export_saved_model

    export_dir = str(run.root / "exported")
    path = export_saved_model(run.model, run.cfg, export_dir)
    detector = Detector.from_saved_model(export_dir)  # the base path: its newest version
    assert detector.source == path and detector.category_names == NAMES and detector.batch_size == 2
    served = detector.detect(run.paths + [run.images[0]])
    reference = run.detector.detect(run.paths + [run.images[0]])
    for got, want in zip(served, reference):
        assert len(got) == len(want) > 0
        np.testing.assert_array_equal(got.category_ids, want.category_ids)
        np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-3, rtol=0)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-5, rtol=0)
        assert np.mean(got.masks != want.masks) < 1e-3
