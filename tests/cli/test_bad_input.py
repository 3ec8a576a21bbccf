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
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, env=environ)


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
