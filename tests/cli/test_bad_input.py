"""Bad input through the real command line: non-zero exit, one paragraph, no traceback, fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _main(tmp_path, *flags: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    environ.update(TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    return subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), f"--model_dir={tmp_path / 'run'}",
                           f"--data_dir={tmp_path / 'shapes'}", *flags],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=environ)


def _check_one_paragraph(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert result.returncode != 0, result.stdout + result.stderr
    err = result.stderr.strip()
    assert "Traceback" not in err and "Traceback" not in result.stdout
    # Drop TensorFlow's start-up lines, if any; what is left is the one error paragraph.
    lines = [line for line in err.splitlines() if not line.startswith(("WARNING: All log", "I0000", "W0000"))]
    text = "\n".join(lines).strip()
    assert text.startswith("error"), text
    assert "\n\n" not in text
    for fragment in expected:
        assert fragment in " ".join(text.split()), text


def test_image_size_not_a_multiple(tmp_path):
    result = _main(tmp_path, "--mode=train", "--config=shapes", "--config_override=model.image_size=100")
    _check_one_paragraph(result, "model.image_size=100", "multiple of 2^max_level = 32", "96 and 128")


def test_missing_annotation_file(tmp_path):
    (tmp_path / "images").mkdir()
    result = _main(tmp_path, "--mode=train", "--config=shapes", f"--train_annotations={tmp_path / 'nope.json'}",
                   f"--train_images={tmp_path / 'images'}")
    _check_one_paragraph(result, "nope.json", "does not exist")


def test_unknown_preset(tmp_path):
    result = _main(tmp_path, "--mode=train", "--config=coco_r50_fpnn")
    _check_one_paragraph(result, "unknown config preset 'coco_r50_fpnn'", "shapes, coco_r50_fpn, coco_r101_fpn")


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_model_last_without_checkpoint(tmp_path, mode):
    result = _main(tmp_path, f"--mode={mode}", "--model=last")
    _check_one_paragraph(result, "--model=last", "no checkpoint", "Train first")


def test_multi_worker_without_tf_config(tmp_path):
    overrides = ["--config_override=data.shapes_num_train=2", "--config_override=data.shapes_num_val=1"]
    result = _main(tmp_path, "--mode=train", "--strategy=multi_worker", "--model=none", *overrides)
    _check_one_paragraph(result, "TF_CONFIG")


def test_bad_tf_config(tmp_path):
    overrides = ["--config_override=data.shapes_num_train=2", "--config_override=data.shapes_num_val=1"]
    bad = json.dumps({"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 3}})
    result = _main(tmp_path, "--mode=train", "--strategy=multi_worker", "--model=none", *overrides,
                   env={"TF_CONFIG": bad})
    _check_one_paragraph(result, "TF_CONFIG", "does not name a member")


def _messy_dataset(tmp_path, annotations=None, images=None, truncate: str = "") -> list[str]:
    """Flags for a 2-image training set under tmp_path; ``truncate`` names a file to cut in half."""
    import cv2
    import numpy as np

    image_dir = tmp_path / "images"
    image_dir.mkdir(exist_ok=True)
    for name in ("a.jpg", "b.jpg"):
        data = cv2.imencode(".jpg", np.full((32, 48, 3), 128, np.uint8))[1].tobytes()
        (image_dir / name).write_bytes(data[: len(data) // 2] if name == truncate else data)
    images = images or [{"id": 1, "file_name": "a.jpg", "height": 32, "width": 48},
                        {"id": 2, "file_name": "b.jpg", "height": 32, "width": 48}]
    square = [4, 4, 20, 4, 20, 20, 4, 20]
    annotations = annotations or [{"id": k, "image_id": k, "category_id": 1, "segmentation": [square]} for k in (1, 2)]
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "thing"}]}))
    return ["--mode=train", "--config=shapes", "--model=none", f"--train_annotations={path}",
            f"--train_images={image_dir}"]


def test_truncated_image_is_refused_before_training(tmp_path):
    result = _main(tmp_path, *_messy_dataset(tmp_path, truncate="b.jpg"))
    assert result.returncode == 2
    _check_one_paragraph(result, "train.json", "1 of 2 images", "'b.jpg' (image id 2) does not decode",
                         "data.bad_images=skip")


def test_dataset_without_usable_instances_is_refused(tmp_path):
    nan = [{"id": k, "image_id": k, "category_id": 1, "segmentation": [[1, 1, float("nan"), 5, 9, 9]]}
           for k in (1, 2)]
    result = _main(tmp_path, *_messy_dataset(tmp_path, annotations=nan))
    assert result.returncode == 2
    _check_one_paragraph(result, "train.json", "no usable instance", "non_finite_values", "only learn background")


def test_duplicate_image_ids_are_refused(tmp_path):
    images = [{"id": 1, "file_name": "a.jpg", "height": 32, "width": 48},
              {"id": 1, "file_name": "b.jpg", "height": 32, "width": 48}]
    result = _main(tmp_path, *_messy_dataset(tmp_path, images=images))
    assert result.returncode == 2
    _check_one_paragraph(result, "train.json", "images[1]", "duplicate image id 1")


def test_bad_images_value_is_refused(tmp_path):
    result = _main(tmp_path, "--mode=train", "--config=shapes", "--config_override=data.bad_images=ignore")
    assert result.returncode == 2
    _check_one_paragraph(result, "data.bad_images='ignore'", "error", "skip")
