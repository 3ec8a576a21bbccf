"""pipelines/dataset_info.py and the CLI's checks before TensorFlow starts: no TensorFlow import."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.pipelines.coco_fixtures import rectangles_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _no_tensorflow(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print('TF', 'tensorflow' in sys.modules)"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("TF False"), out.stdout + out.stderr
    return out.stdout


def test_pre_training_checks_import_no_tensorflow(tmp_path):
    ann, image_dir, _ = rectangles_dataset(str(tmp_path / "rects"), num_images=3)
    records = tmp_path / "records"
    records.mkdir()
    (records / "data-00000-of-00001.tfrecord").write_bytes(b"")
    (records / "dataset_info.json").write_text(json.dumps({"category_ids": [3, 7], "category_names": ["a", "b"],
                                                           "num_images": 3}))
    code = f"""
from mrcnn_tf2.pipelines import coco, dataset_check, dataset_info, image_check, image_header
from mrcnn_tf2.cli.run_args import RunArgs
from mrcnn_tf2.cli.run_config import prepare
args = dict(mode="train", config="shapes", model_dir={str(tmp_path / 'run')!r}, verbose=False,
            config_override=["train.eval_every=5"], val_annotations={ann!r}, val_images={image_dir!r})
json_run = prepare(RunArgs(train_annotations={ann!r}, train_images={image_dir!r}, **args))
assert json_run.cfg.data.category_ids == (3, 7), json_run.cfg.data.category_ids
tf_run = prepare(RunArgs(config_override=["data.train_tfrecords={records}", "train.eval_every=5"],
                         **{{k: v for k, v in args.items() if k != "config_override"}}))
assert tf_run.cfg.data.category_names == ("a", "b")
print(dataset_info.read_dataset_info({str(records)!r})["num_images"])
"""
    assert _no_tensorflow(code).splitlines()[0] == "3"
