"""--precision=bfloat16 through --mode=eval|predict|export (in-process, the tiny shapes run) and its refusals.

The checks look at what runs: the operations of the exported graph and their dtypes, the signatures'
dtypes, the files each mode writes, and the exit status and message of bad flags.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from mrcnn_tf2.cli.run_args import CliError
from tensorflow.core.protobuf import saved_model_pb2

from mrcnn_tf2 import cli
from tests.cli.common import tiny_args

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The heavy ops of the forward pass: convolutions (depthwise ones in MobileNetV3) and dense layers.
COMPUTE_OPS = ("Conv2D", "DepthwiseConv2dNative", "MatMul")
SIGNATURE_OUTPUTS = {"num_detections": tf.int32, "detection_boxes": tf.float32, "detection_classes": tf.int32,
                     "detection_scores": tf.float32, "detection_masks": tf.float32}
SIGNATURE_INPUTS = {"serving_default": tf.string, "serve_image_tensor": tf.uint8}

# The tests on a run (fixtures: a 3-step training run, then eval, predict and two exports) are slow.
slow = pytest.mark.slow


@pytest.fixture(scope="module")
def run_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("precision"))
    cli.run(tiny_args(root, "train", steps=3, batch_size=2, checkpoint_every=100, model="none"))
    yield root
    keras.mixed_precision.set_global_policy("float32")  # in case a failing run left it set


@pytest.fixture(scope="module")
def exports(run_root):
    """{precision: SavedModel path}: the same checkpoint exported in float32 and in bfloat16."""
    export_dir = os.path.join(run_root, "exported")
    return {precision: cli.run(tiny_args(run_root, "export", export_dir=export_dir, precision=precision))
            for precision in ("float32", "bfloat16")}


def _compute_op_dtypes(saved_model_dir: str) -> collections.Counter:
    """Counter of (op, dtype) of the compute ops in every function of the SavedModel's graph."""
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    graph = proto.meta_graphs[0].graph_def
    nodes = list(graph.node) + [n for function in graph.library.function for n in function.node_def]
    return collections.Counter((n.op, tf.dtypes.as_dtype(n.attr["T"].type).name)
                               for n in nodes if n.op in COMPUTE_OPS)


@slow
def test_eval_in_bfloat16_writes_metrics_and_restores_the_policy(run_root):
    metrics = cli.run(tiny_args(run_root, "eval", precision="bfloat16"))
    assert metrics["num_images"] == 4
    for iou_type in ("bbox", "segm"):
        assert all(np.isfinite(v) for v in metrics[iou_type].values()), metrics[iou_type]
    with open(metrics["metrics_file"]) as f:
        assert json.load(f)["bbox"] == metrics["bbox"]
    with open(metrics["results_file"]) as f:
        assert isinstance(json.load(f), list)
    assert keras.mixed_precision.global_policy().name == "float32"  # nothing leaks into the process


@slow
def test_predict_in_bfloat16_writes_pngs_and_jsons(run_root, tmp_path):
    images = os.path.join(run_root, "shapes", "images", "val")
    out = cli.run(tiny_args(run_root, "predict", images=images, output_dir=str(tmp_path / "out"),
                            precision="bfloat16"))
    assert out["images"] == 4 and len(out["files"]) == 4
    for png, json_path in out["files"]:
        assert os.path.getsize(png) > 0
        with open(json_path) as f:
            record = json.load(f)
        for detection in record["detections"]:
            assert 0.0 <= detection["score"] <= 1.0 and len(detection["bbox"]) == 4


@slow
def test_export_records_the_precision_beside_the_saved_model(exports):
    for precision, path in exports.items():
        with open(os.path.join(path, "assets.extra", "config.json")) as f:
            assert json.load(f)["eval"]["precision"] == precision


@slow
def test_bfloat16_export_computes_convolutions_in_bfloat16(exports):
    low = _compute_op_dtypes(exports["bfloat16"])
    # Every convolution of the backbone, FPN, RPN and heads, and the heads' dense layers, in bfloat16.
    assert {dtype for (op, dtype) in low if op != "MatMul"} == {"bfloat16"}, low
    assert low[("Conv2D", "bfloat16")] > 0 and low[("DepthwiseConv2dNative", "bfloat16")] > 0, low
    assert low[("MatMul", "bfloat16")] > 0, low
    full = _compute_op_dtypes(exports["float32"])
    assert {dtype for _, dtype in full} == {"float32"}, full
    # The same convolutions, only their dtype changed.
    assert sum(n for (op, _), n in low.items() if op == "Conv2D") == full[("Conv2D", "float32")]


@slow
def test_signature_dtypes_do_not_change_with_the_precision(exports):
    for precision, path in exports.items():
        loaded = tf.saved_model.load(path)
        for name, input_dtype in SIGNATURE_INPUTS.items():
            signature = loaded.signatures[name]
            (spec,) = signature.structured_input_signature[1].values()
            assert spec.dtype == input_dtype, (precision, name)
            outputs = {key: spec.dtype for key, spec in signature.structured_outputs.items()}
            assert outputs == SIGNATURE_OUTPUTS, (precision, name, outputs)
        image = np.zeros([1, 60, 90, 3], np.uint8)
        result = loaded.signatures["serve_image_tensor"](images=tf.constant(image))
        assert {key: value.dtype for key, value in result.items()} == SIGNATURE_OUTPUTS, precision


def test_precision_is_refused_in_train_mode_and_for_unknown_values(tmp_path):
    with pytest.raises(CliError, match="--mixed_precision=bfloat16"):
        cli.prepare(tiny_args(str(tmp_path), "train", precision="bfloat16"))
    with pytest.raises(CliError, match="must be float32 or bfloat16"):
        cli.prepare(tiny_args(str(tmp_path), "eval", precision="float16"))


@pytest.mark.parametrize("flags, expected", [
    (["--mode=train", "--config=shapes", "--precision=bfloat16"], "--mixed_precision=bfloat16"),
    (["--mode=export", "--precision=fp16"], "--precision=fp16 must be float32 or bfloat16"),
])
def test_bad_precision_exits_2_with_one_paragraph(tmp_path, flags, expected):
    environ = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), f"--model_dir={tmp_path / 'run'}",
                             f"--data_dir={tmp_path / 'shapes'}", *flags],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path, env=environ)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert expected in " ".join(result.stderr.split()), result.stderr
