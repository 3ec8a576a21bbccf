"""--model=PATH: weights of a run with another number of classes load with the class layers skipped."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf

from cli.common import CliError, WeightsSource, find_checkpoint, run_config_path, write_config
from cli.weights import load_weights
from mrcnn_tf2 import build_model, config

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
