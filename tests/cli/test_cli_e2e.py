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
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import cli
from cli import train as train_cli
from cli.weights import restore_model
from mrcnn_tf2 import build_model
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
