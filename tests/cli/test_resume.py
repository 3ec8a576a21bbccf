"""Exact resume: 4 steps, then 4 more with --model=last, equal 8 uninterrupted steps.

Augmentation is off and the data order fixed (no shuffle). The model's samplers draw from TensorFlow's
stateful RNG, which a resumed process restarts; so the sampling is configured to take *every*
candidate (all anchors for the RPN, all proposals plus ground truth for the ROI heads), which makes the
sampled sets independent of the random draws and leaves only float summation-order noise (the first,
uninterrupted steps of both runs are bit-identical: initialization and data are seeded).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf

import cli
from tests.cli.common import tiny_args

# 128 px, levels P2-P5, 3 ratios: (32^2 + 16^2 + 8^2 + 4^2) * 3 = 4080 anchors; 200 proposals + 8 gt.
# 6 training images = 3 batches per epoch, so step 5 does not start an epoch: without the data
# position restored, the resumed run would see other batches.
EXACT = ("data.shapes_num_train=6", "data.augment.enabled=false", "data.shuffle_buffer=0",
         "model.rpn.anchors_per_image=4096", "model.rpn.positive_fraction=1.0", "model.roi.rois_per_image=256",
         "model.roi.positive_fraction=1.0",
         "train.warmup_steps=3", "train.learning_rate=0.01")


def _checkpoint_values(prefix: str) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(prefix)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if not name.startswith(("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter"))}  # saves, not state


def test_resume_equals_uninterrupted_training(tmp_path):
    root = str(tmp_path)
    common = dict(overrides=EXACT, batch_size=2, checkpoint_every=100, model="none")
    straight = cli.run(tiny_args(root, "train", model_dir="straight", steps=8, **common))
    first = cli.run(tiny_args(root, "train", model_dir="resumed", steps=4, **common))
    assert first["step"] == 4
    resumed = cli.run(tiny_args(root, "train", model_dir="resumed", steps=8,
                                **dict(common, model="last", config=None)))
    assert resumed["step"] == straight["step"] == 8
    assert resumed["learning_rate"] == pytest.approx(straight["learning_rate"], rel=1e-6)
    assert resumed["loss"] == pytest.approx(straight["loss"], rel=1e-2)

    a = _checkpoint_values(os.path.join(root, "straight", "checkpoints", "ckpt-8"))
    b = _checkpoint_values(os.path.join(root, "resumed", "checkpoints", "ckpt-8"))
    assert sorted(a) == sorted(b)
    # Trainable weights are stored under optimizer/_trainable_variables, momentum under optimizer/_variables.
    momentums = [k for k in a if k.startswith("optimizer/_variables/") and a[k].ndim > 0]
    assert len(momentums) > 100
    assert a["step/.ATTRIBUTES/VARIABLE_VALUE"] == b["step/.ATTRIBUTES/VARIABLE_VALUE"] == 8
    assert a["optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"] == 8
    assert b["optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"] == 8
    # Every value the resumed run trained is the straight run's up to float noise: the same batches,
    # the same sampled sets, only the order inside the sampled sets (hence float sums) differs, so the
    # difference must be a small fraction of how far steps 5-8 moved the value.
    start = _checkpoint_values(os.path.join(root, "resumed", "checkpoints", "ckpt-4"))
    ratios, moves = [], []
    for name, value in a.items():
        if value.dtype.kind != "f":
            np.testing.assert_array_equal(b[name], value, err_msg=name)
            continue
        diff, moved = np.linalg.norm(b[name] - value), np.linalg.norm(value - start[name])
        floor = 1e-3 * np.linalg.norm(value) + 1e-6 * np.sqrt(value.size)
        moves.append((name, diff, moved, floor))
        if moved > floor:
            ratios.append(diff / moved)
    # Values that barely move (e.g. a BN shift followed by another BN has ~zero gradient, and its momentum)
    # carry only float noise, so their relative difference says nothing; the others must agree to 5%.
    group = lambda name: name.split("/")[1] if name.startswith("optimizer/") else "model"  # noqa: E731
    largest = {}
    for name, _, moved, _ in moves:
        largest[group(name)] = max(largest.get(group(name), 0.0), moved)
    for name, diff, moved, floor in moves:
        if moved > 1e-2 * largest[group(name)]:
            assert diff <= 0.05 * moved + floor, (name, diff, moved)
    assert len(ratios) > 200 and np.median(ratios) < 0.01, np.median(ratios)
