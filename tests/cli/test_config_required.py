"""Training a user's dataset needs an explicit --config: the default preset is the 128 px shapes model."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from mrcnn_tf2.cli.run_args import CliError, RunArgs
from mrcnn_tf2.cli.run_config import prepare

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def dataset(tmp_path):
    """An (empty) annotation file and image folder: the check runs before either is read."""
    (tmp_path / "images").mkdir()
    annotations = tmp_path / "train.json"
    annotations.write_text("{}")
    return str(annotations), str(tmp_path / "images")


def test_dataset_flags_without_config_exit_2_listing_the_presets(tmp_path, dataset):
    annotations, images = dataset
    environ = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), "--mode=train",
                             f"--model_dir={tmp_path / 'run'}", f"--train_annotations={annotations}",
                             f"--train_images={images}"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path, env=environ)
    assert result.returncode == 2, result.stdout + result.stderr
    text = " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in ("--train_annotations, --train_images given without --config", "'shapes'", "128 px",
                     "shapes, coco_r50_fpn, coco_r101_fpn", "--config=PRESET"):
        assert fragment in text, text
    assert not os.path.exists(tmp_path / "run" / "config.json")


@pytest.mark.parametrize("flags", [
    {"val_annotations": "VAL"},
    {"config_override": ["data.train_tfrecords=/data/records"]},
])
def test_any_dataset_source_without_config_is_refused(tmp_path, dataset, flags):
    annotations, images = dataset
    flags = {k: annotations if v == "VAL" else v for k, v in flags.items()}
    if "val_annotations" in flags:
        flags["val_images"] = images
    args = RunArgs(mode="train", model_dir=str(tmp_path / "run"), verbose=False, **flags)
    with pytest.raises(CliError, match="without --config"):
        prepare(args)


def test_an_explicit_config_or_the_shapes_default_is_accepted(tmp_path, dataset):
    annotations, images = dataset
    # --config=shapes on a user's dataset is a deliberate choice: no refusal (the check for the
    # annotation file's content comes later, when the categories are read).
    args = RunArgs(mode="train", config="shapes", model_dir=str(tmp_path / "run"), verbose=False,
                   train_annotations=annotations, train_images=images)
    with pytest.raises(Exception) as info:
        prepare(args)
    assert "without --config" not in str(info.value)
    # No dataset flags: the built-in shapes dataset with the shapes preset, as before.
    args = RunArgs(mode="train", model_dir=str(tmp_path / "run2"), data_dir=str(tmp_path / "shapes"),
                   config_override=["data.shapes_num_train=2", "data.shapes_num_val=1"], verbose=False)
    assert prepare(args).cfg.name == "shapes"
