"""--model=PATH: weights of a run with another number of classes load with the class layers skipped;
without the run's config.json, eval/predict/export need --config; export refuses a checkpoint that does
not restore every model variable (through the real command line: exit 2, one paragraph)."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from mrcnn_tf2.cli.common import CliError, WeightsSource, find_checkpoint, prepare, run_config_path, write_config
from mrcnn_tf2.cli.weights import load_weights

from mrcnn_tf2 import build_model, config
from mrcnn_tf2.training import CheckpointKeeper
from tests.cli.common import tiny_args
from tests.cli.test_bad_input import _check_one_paragraph, _main

CLASS_LAYERS = {"mask_rcnn/box_head/class_logits", "mask_rcnn/box_head/box_deltas", "mask_rcnn/mask_head/mask_logits"}


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A 2-category shapes model saved as a checkpoint and a .weights.h5 file, with its config.json."""
    root = tmp_path_factory.mktemp("source")
    cfg = config.preset("shapes", {"model.num_classes": 3, "data.category_ids": [7, 9],
                                   "data.category_names": ["a", "b"]})
    model = build_model(cfg)
    write_config(cfg, os.path.join(root, "config.json"))
    prefix = tf.train.Checkpoint(model=model).save(os.path.join(root, "checkpoints", "ckpt"))
    h5 = os.path.join(root, "weights", "model.weights.h5")
    os.makedirs(os.path.dirname(h5))
    model.save_weights(h5)
    return root, model, prefix, h5


def _layers(paths):
    return {p.rsplit("/", 1)[0] for p in paths}


@pytest.mark.parametrize("kind", ["checkpoint", "h5"])
def test_other_number_of_classes_skips_only_the_class_layers(source_run, kind):
    root, source, prefix, h5 = source_run
    path = prefix if kind == "checkpoint" else h5
    assert run_config_path(path) == os.path.join(root, "config.json")
    target = build_model(config.preset("shapes"))  # 3 categories + background
    before = {w.path: w.numpy() for w in target.weights}
    message = load_weights(target, WeightsSource(kind, path, run_config_path(path)), config.preset("shapes"))
    assert "skipped" in message and all(name in message for name in CLASS_LAYERS)
    by_path = {w.path: w.numpy() for w in source.weights}
    changed = []
    for weight in target.weights:
        if weight.path.rsplit("/", 1)[0] in CLASS_LAYERS:  # kernels and biases sized by num_classes
            assert weight.shape != by_path[weight.path].shape
            np.testing.assert_array_equal(weight.numpy(), before[weight.path])  # initial values kept
            changed.append(weight.path)
        else:
            np.testing.assert_array_equal(weight.numpy(), by_path[weight.path], err_msg=weight.path)
    assert _layers(changed) == CLASS_LAYERS


def test_mismatch_without_a_config_is_a_clear_error(source_run, tmp_path):
    _, _, prefix, _ = source_run
    target = build_model(config.preset("shapes"))
    with pytest.raises(CliError, match="do not fit"):
        load_weights(target, WeightsSource("checkpoint", prefix, ""), config.preset("shapes"))


def test_find_checkpoint_accepts_prefix_checkpoint_folder_and_run_folder(source_run, tmp_path):
    root, _, prefix, _ = source_run
    assert find_checkpoint(prefix) == prefix
    assert find_checkpoint(os.path.join(root, "checkpoints")) == prefix
    assert find_checkpoint(str(root)) == prefix
    assert find_checkpoint(str(tmp_path)) is None


# === --model=PATH without the run's config.json ===

def _bare_checkpoint(root) -> str:
    """A checkpoint prefix with no config.json beside it or one folder up (prepare only checks the .index)."""
    directory = root / "elsewhere" / "weights"
    directory.mkdir(parents=True)
    (directory / "ckpt-5.index").write_bytes(b"")
    return str(directory / "ckpt-5")


@pytest.mark.parametrize("mode", ["eval", "predict", "export"])
def test_model_path_without_config_json_needs_config(tmp_path, mode):
    prefix = _bare_checkpoint(tmp_path)
    flags = {"images": str(tmp_path / "*.jpg")} if mode == "predict" else {}
    with pytest.raises(CliError, match=r"--model=.*ckpt-5: there is no config.json beside these weights(.|\n)*"
                                       r"--config"):
        prepare(tiny_args(str(tmp_path), mode, model=prefix, **flags))
    # A config.json in --model_dir belongs to that run, not to these weights: still refused.
    write_config(config.preset("shapes"), os.path.join(tmp_path, "run", "config.json"))
    with pytest.raises(CliError, match="no config.json beside these weights"):
        prepare(tiny_args(str(tmp_path), mode, model=prefix, **flags))
    prep = prepare(tiny_args(str(tmp_path), mode, model=prefix, config="shapes", **flags))
    assert prep.config_source == "shapes" and prep.weights.path == prefix


def test_model_path_to_a_run_folder_uses_its_config_json(source_run, tmp_path):
    root, _, prefix, _ = source_run
    prep = prepare(tiny_args(str(tmp_path), "export", model=str(root)))
    assert prep.config_source == os.path.join(root, "config.json")
    assert prep.weights.path == prefix and prep.cfg.model.num_classes == 3


def test_cli_model_path_without_config_json_exits_2(tmp_path):
    result = _main(tmp_path, "--mode=export", f"--model={_bare_checkpoint(tmp_path)}")
    assert result.returncode == 2
    _check_one_paragraph(result, "no config.json beside these weights", "Pass --config")


@pytest.mark.slow
def test_cli_export_of_a_checkpoint_missing_variables_exits_2(tmp_path):
    """A checkpoint of a shallower mask head, exported with --config=shapes: refused, nothing written."""
    other = build_model(config.preset("shapes", {"model.roi.mask_head_convs": 1}))
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    optimizer.build(other.trainable_variables)
    CheckpointKeeper(str(tmp_path / "other"), other, optimizer).save(4)
    result = _main(tmp_path, "--mode=export", f"--model={tmp_path / 'other' / 'checkpoints'}", "--config=shapes",
                   f"--export_dir={tmp_path / 'exported'}", "--config_override=data.shapes_num_train=2",
                   "--config_override=data.shapes_num_val=1")
    assert result.returncode == 2
    _check_one_paragraph(result, "does not restore every variable of the 'shapes' model",
                         "mask_rcnn/mask_head/conv_1/kernel", "export with the config it was trained with")
    assert not os.path.exists(tmp_path / "exported" / "1")
