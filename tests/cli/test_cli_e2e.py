"""The CLI end to end on a tiny shapes dataset: train a few steps, eval, predict (in-process)."""

from __future__ import annotations

import contextlib
import glob
import io
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from mrcnn_tf2.cli import train as train_cli
from mrcnn_tf2.cli.common import write_config
from mrcnn_tf2.cli.weights import restore_model
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mrcnn_tf2 import build_model, cli
from tests.cli.common import tiny_args

LOSS_TAGS = {"loss", "loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask", "grad_norm",
             "learning_rate", "images_per_sec"}
METRIC_KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]


def _event_tags(directory: str) -> tuple[set[str], set[str]]:
    """(scalar tags, image tags) written by tf.summary under ``directory``."""
    scalars, images = set(), set()
    for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                kind = value.metadata.plugin_data.plugin_name
                (images if kind == "images" else scalars).add(value.tag)
    return scalars, images


@pytest.fixture(scope="module")
def run_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cli"))
    logs = cli.run(tiny_args(root, "train", steps=3, batch_size=2, checkpoint_every=2, eval_every=3, model="none"))
    return root, logs


@pytest.fixture(scope="module")
def evaluated(run_root):
    root, _ = run_root
    return root, cli.run(tiny_args(root, "eval"))


def test_train_writes_config_checkpoints_and_tensorboard(run_root):
    root, logs = run_root
    run = os.path.join(root, "run")
    assert logs["step"] == 3 and np.isfinite(logs["loss"])
    with open(os.path.join(run, "config.json")) as f:
        saved = json.load(f)
    assert saved["data"]["category_ids"] == [1, 2, 3]
    assert saved["data"]["category_names"] == ["square", "circle", "triangle"]
    assert saved["model"]["num_classes"] == 4
    assert saved["train"]["steps"] == 3 and saved["train"]["batch_size"] == 2
    ckpts = sorted(os.path.basename(p)[:-6] for p in glob.glob(os.path.join(run, "checkpoints", "*.index")))
    assert ckpts == ["ckpt-2", "ckpt-3"]  # every 2 steps and the last one
    scalars, _ = _event_tags(os.path.join(run, "train"))
    assert LOSS_TAGS <= scalars
    scalars, images = _event_tags(os.path.join(run, "eval"))  # --eval_every=3: AP and drawn images at step 3
    assert {"bbox/AP", "segm/AP50"} <= scalars and images == {"detections"}


def test_eval_writes_metrics_and_a_submission_that_reevaluates_the_same(evaluated):
    root, result = evaluated
    run = os.path.join(root, "run")
    with open(os.path.join(run, "eval", "metrics.json")) as f:
        metrics = json.load(f)
    for iou_type in ("bbox", "segm"):
        assert sorted(metrics[iou_type]) == sorted(METRIC_KEYS)
    assert sorted(metrics["per_class"]) == ["circle", "square", "triangle"]
    assert all(sorted(v) == ["bbox_AP", "segm_AP"] for v in metrics["per_class"].values())
    assert metrics["num_images"] == 4
    assert metrics["checkpoint"].endswith(os.path.join("checkpoints", "ckpt-3"))
    assert result["results_file"] == os.path.join(run, "submission.json")

    val_json = os.path.join(root, "shapes", "val.json")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(val_json)
        with open(result["results_file"]) as f:
            detections = json.load(f)
        assert detections, "an untrained model still returns low-scoring detections"
        for det in detections:
            image = gt.imgs[det["image_id"]]
            assert det["category_id"] in (1, 2, 3)
            assert det["segmentation"]["size"] == [image["height"], image["width"]]
        for iou_type in ("bbox", "segm"):
            coco_eval = COCOeval(gt, gt.loadRes(result["results_file"]), iou_type)
            coco_eval.params.imgIds = sorted(gt.getImgIds())
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
            np.testing.assert_allclose(coco_eval.stats[:6], [metrics[iou_type][k] for k in METRIC_KEYS], atol=1e-9)
    scalars, images = _event_tags(os.path.join(run, "eval"))
    assert {"bbox/AP", "segm/AP50"} <= scalars and images


def test_predict_writes_png_and_json_matching_the_submission(evaluated, tmp_path):
    root, result = evaluated
    files = sorted(glob.glob(os.path.join(root, "shapes", "images", "val", "*.png")))[:2]
    pattern = os.path.join(root, "shapes", "images", "val", "00000[12].png")
    summary = cli.run(tiny_args(root, "predict", images=pattern, output_dir=str(tmp_path / "out")))
    assert summary["images"] == 2
    with open(result["results_file"]) as f:
        submission = json.load(f)
    with open(os.path.join(root, "shapes", "val.json")) as f:
        image_ids = {os.path.basename(im["file_name"]): im["id"] for im in json.load(f)["images"]}
    for path, (png, json_path) in zip(files, summary["files"]):
        drawn = tf.io.decode_png(tf.io.read_file(png)).numpy()
        original = tf.io.decode_png(tf.io.read_file(path), channels=3).numpy()
        assert drawn.shape == original.shape
        with open(json_path) as f:
            record = json.load(f)
        assert record["image"] == path and (record["height"], record["width"]) == original.shape[:2]
        expected = [d for d in submission if d["image_id"] == image_ids[os.path.basename(path)]]
        assert len(record["detections"]) == len(expected) > 0
        for got, want in zip(record["detections"], expected):
            assert got["category_id"] == want["category_id"]
            assert got["category_name"] == ["square", "circle", "triangle"][want["category_id"] - 1]
            np.testing.assert_allclose(got["bbox"], want["bbox"], atol=1e-3)
            assert got["score"] == pytest.approx(want["score"], abs=1e-4)


def test_next_stage_with_other_train_layers_restores_weights_step_and_lr_position(run_root, tmp_path):
    root, _ = run_root
    shutil.copytree(os.path.join(root, "run"), tmp_path / "run")
    prep = cli.prepare(tiny_args(root, "train", model_dir=str(tmp_path / "run"), model="last", config=None,
                                 train_layers="heads", steps=6))
    assert prep.previous_cfg.model.train_layers == "all" and prep.cfg.model.train_layers == "heads"
    session = train_cli.setup(prep)
    assert int(session.keeper.step.numpy()) == 3 and int(session.optimizer.iterations.numpy()) == 3
    assert len(session.model.trainable_variables) < len(build_model(prep.previous_cfg).trainable_variables)
    reference = build_model(prep.previous_cfg)
    restore_model(reference, os.path.join(tmp_path, "run", "checkpoints", "ckpt-3"))
    by_path = {w.path: w.numpy() for w in reference.weights}
    for weight in session.model.weights:
        np.testing.assert_array_equal(weight.numpy(), by_path[weight.path], err_msg=weight.path)
    with open(tmp_path / "run" / "config.json") as f:
        assert json.load(f)["model"]["train_layers"] == "heads"


# --- Planted detections: the eval path (frame mapping, labels, mask pasting, RLE, metrics.json, the results
# file) scored on detections whose AP is known, instead of an untrained model's AP of ~0.

PLANTED_MASK_SIZE = 256  # > 2 x the image side: box-relative cells then land in one pixel each (exact masks)


def _box_relative(mask: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """[size, size] samples of a full-image binary mask at the cell centres of ``box`` (y1, x1, y2, x2)."""
    y1, x1, y2, x2 = box
    rows = np.clip(np.floor(y1 + (np.arange(size) + 0.5) * (y2 - y1) / size).astype(int), 0, mask.shape[0] - 1)
    cols = np.clip(np.floor(x1 + (np.arange(size) + 0.5) * (x2 - x1) / size).astype(int), 0, mask.shape[1] - 1)
    return mask[rows][:, cols].astype(np.float32)


def _exact(gt: COCO, image_id: int) -> list[tuple]:
    """The image's ground truth as detections: (y1, x1, y2, x2 original pixels, category id, score, mask)."""
    out = []
    for k, ann in enumerate(gt.loadAnns(gt.getAnnIds(imgIds=[image_id]))):
        x, y, w, h = ann["bbox"]  # shapes boxes are whole pixels (pycocotools' toBbox of the RLE)
        out.append((y, x, y + h, x + w, ann["category_id"], 0.9 - 0.01 * k, gt.annToMask(ann)))
    return out


def _imperfect(gt: COCO, image_id: int) -> list[tuple]:
    """Some exact, some shifted by 3 px, some missed, some with the wrong class, plus a confident false one."""
    out = []
    for k, (y1, x1, y2, x2, cat, score, mask) in enumerate(_exact(gt, image_id)):
        kind = (image_id + k) % 4
        if kind == 1:
            mask = np.roll(mask, 3, axis=1)
            mask[:, :3] = 0
            x1, x2 = x1 + 3, x2 + 3
        elif kind == 2:
            continue
        elif kind == 3:
            cat = cat % 3 + 1
        out.append((y1, x1, y2, x2, cat, score, mask))
    height, width = gt.imgs[image_id]["height"], gt.imgs[image_id]["width"]
    false = np.zeros((height, width), np.uint8)
    false[2:14, 3:20] = 1
    out.append((2, 3, 14, 20, 1 + image_id % 3, 0.95, false))
    return out


@pytest.fixture(scope="module")
def planted_root(tmp_path_factory):
    """The tiny shapes data and a run folder (its config.json and a placeholder checkpoint) for planted
    evaluations, which neither build nor train a model."""
    root = str(tmp_path_factory.mktemp("planted"))
    prep = cli.prepare(tiny_args(root, "train", model="none"))  # generates the shapes data
    run = os.path.join(root, "run")
    write_config(prep.cfg, os.path.join(run, "config.json"))
    checkpoint = tf.train.Checkpoint(step=tf.Variable(1))
    tf.train.CheckpointManager(checkpoint, os.path.join(run, "checkpoints"), 1).save(checkpoint_number=1)
    return root


def _planted_eval(root: str, model_dir: str, monkeypatch, plant, overrides=()) -> dict:
    """``--mode=eval`` with the model replaced by ``plant(gt, image_id)`` detections, mapped into the model
    frame with the batch's own ``image_info`` (as a model would output them)."""
    from mrcnn_tf2.cli import evaluate as eval_cli

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(os.path.join(root, "shapes", "val.json"))
    current: dict[str, list[int]] = {}
    real_build_dataset = eval_cli.build_dataset

    def build_dataset(cfg, mode, *args, **kwargs):  # remembers which images the batch being scored holds
        for batch in real_build_dataset(cfg, mode, *args, **kwargs):
            current["ids"] = [int(i) for i in batch["image_id"].numpy()]
            yield batch

    def inference_function(model):
        def infer(images, image_info):
            info = image_info.numpy().astype(np.float64)
            ids = current["ids"] + [current["ids"][0]] * (len(info) - len(current["ids"]))  # padding repeats row 0
            planted = [plant(gt, i) for i in ids]
            d = max(len(p) for p in planted)
            out = {"detection_boxes": np.zeros((len(ids), d, 4), np.float32),
                   "detection_scores": np.zeros((len(ids), d), np.float32),
                   "detection_classes": np.zeros((len(ids), d), np.int32),
                   "detection_masks": np.zeros((len(ids), d, PLANTED_MASK_SIZE, PLANTED_MASK_SIZE), np.float32),
                   "num_detections": np.array([len(p) for p in planted], np.int32)}
            for b, detections in enumerate(planted):
                scale, offset = np.tile(info[b, 2], 2), np.tile(info[b, 3], 2)
                for n, (y1, x1, y2, x2, cat, score, mask) in enumerate(detections):
                    out["detection_boxes"][b, n] = np.array([y1, x1, y2, x2]) * scale - offset
                    out["detection_scores"][b, n] = score
                    out["detection_classes"][b, n] = cat  # shapes: category ids 1..3 are the labels
                    out["detection_masks"][b, n] = _box_relative(mask, (y1, x1, y2, x2), PLANTED_MASK_SIZE)
            return {k: tf.constant(v) for k, v in out.items()}

        return infer

    monkeypatch.setattr(eval_cli, "build_dataset", build_dataset)
    monkeypatch.setattr(eval_cli, "inference_function", inference_function)
    monkeypatch.setattr(eval_cli, "build_model", lambda cfg: None)
    monkeypatch.setattr(eval_cli, "load_weights", lambda model, weights, cfg: "planted detections")
    return cli.run(tiny_args(root, "eval", model_dir=model_dir, overrides=tuple(overrides)))


def _pycocotools_metrics(gt_file: str, results_file: str, image_ids: list[int]) -> dict:
    """metrics.json's numbers computed here from the results file alone (all classes, then each class)."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_file)
        out = {}
        for iou_type in ("bbox", "segm"):
            with open(results_file) as f:
                results = json.load(f)
            drop = "bbox" if iou_type == "segm" else "segmentation"  # mask AP: areas from the masks
            dt = gt.loadRes([{k: v for k, v in r.items() if k != drop} for r in results])
            for cats in [[1, 2, 3], [1], [2], [3]]:
                coco_eval = COCOeval(gt, dt, iou_type)
                coco_eval.params.imgIds, coco_eval.params.catIds = sorted(image_ids), cats
                coco_eval.evaluate()
                coco_eval.accumulate()
                coco_eval.summarize()
                out[(iou_type, tuple(cats))] = coco_eval.stats[:6].copy()
    return out


@pytest.mark.parametrize("image_size", [128, 192])  # 192: eval images are scaled by 1.5 into the model input
def test_ground_truth_as_detections_scores_ap_one(planted_root, tmp_path, monkeypatch, image_size):
    root = planted_root
    shutil.copytree(os.path.join(root, "run"), tmp_path / "run")
    # eval.batch_size=3 over 4 images: the last batch is padded (its extra row must not count).
    result = _planted_eval(root, str(tmp_path / "run"), monkeypatch, _exact,
                           [f"model.image_size={image_size}", "eval.batch_size=3"])
    with open(result["metrics_file"]) as f:
        metrics = json.load(f)
    assert metrics["num_images"] == 4
    for iou_type in ("bbox", "segm"):
        assert [metrics[iou_type][k] for k in ("AP", "AP50", "AP75")] == [1.0, 1.0, 1.0], metrics
        assert {metrics[iou_type][k] for k in ("APs", "APm", "APl")} <= {1.0, -1.0}, metrics
    assert all(v == {"bbox_AP": 1.0, "segm_AP": 1.0} for v in metrics["per_class"].values()), metrics
    with open(result["results_file"]) as f:
        submission = json.load(f)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(os.path.join(root, "shapes", "val.json"))
    assert len(submission) == len(gt.getAnnIds())  # one per instance: the padded row added none
    for det in submission:  # the same boxes and masks come back in the results file
        anns = gt.loadAnns(gt.getAnnIds(imgIds=[det["image_id"]], catIds=[det["category_id"]]))
        assert any(np.allclose(det["bbox"], a["bbox"], atol=1e-4) for a in anns)
        assert any(mask_util.iou([det["segmentation"]], [a["segmentation"]], [0])[0, 0] == 1.0 for a in anns)


def test_planted_detections_metrics_equal_pycocotools_on_the_results_file(planted_root, tmp_path, monkeypatch):
    root = planted_root
    shutil.copytree(os.path.join(root, "run"), tmp_path / "run")
    result = _planted_eval(root, str(tmp_path / "run"), monkeypatch, _imperfect, ["model.image_size=192"])
    with open(result["metrics_file"]) as f:
        metrics = json.load(f)
    val_json = os.path.join(root, "shapes", "val.json")
    with open(val_json) as f:
        image_ids = [im["id"] for im in json.load(f)["images"]]
    want = _pycocotools_metrics(val_json, result["results_file"], image_ids)
    for iou_type in ("bbox", "segm"):
        got = [metrics[iou_type][k] for k in METRIC_KEYS]
        np.testing.assert_allclose(got, want[(iou_type, (1, 2, 3))], atol=1e-9)
        assert 0.1 < metrics[iou_type]["AP"] < 0.9, metrics  # neither the ~0 of an untrained model nor 1
        for cat, name in zip((1, 2, 3), ("square", "circle", "triangle")):
            assert metrics["per_class"][name][f"{iou_type}_AP"] == pytest.approx(want[(iou_type, (cat,))][0],
                                                                                 abs=1e-9)
