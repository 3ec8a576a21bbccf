"""Exact resume: with --deterministic, N steps equal N/2 steps, an interruption and N/2 resumed steps, bit for bit.

The interrupted run is the uninterrupted run's directory cut back to its checkpoint at N/2 (what a kill
during step N/2 + 1 leaves; the run is deterministic, so a separate run to N/2 would write the same
checkpoint and only cost another trace of the training step, the bulk of each run's time).

The shapes preset keeps its own shuffling (a buffer over the whole tiny dataset, reshuffled every epoch),
augmentation (flips, crops, scale and colour jitter) and random anchor and ROI sampling; only the dataset
size, the batch and the step counts are small. 6 images at batch 2 are 3 steps per epoch, so the resume at
step 2 lands mid-epoch and step 4 starts a reshuffled epoch.

The comparison is exact (``np.array_equal`` on every model and optimizer variable of the checkpoint), and
two tests show that it fails when the resume is broken: the input not skipped past the consumed batches,
or the samplers' step seed not restored (a counter that restarts in the new process, as TensorFlow's
stateful generator did).
"""

from __future__ import annotations

import glob
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from mrcnn_tf2.cli import train as cli_train
from tensorflow.python.framework import config as tf_config

from mrcnn_tf2 import cli, trainer
from mrcnn_tf2.model import MaskRCNN
from tests.cli.common import tiny_args

STEPS, HALF = 4, 2
COMMON = dict(overrides=("data.shapes_num_train=6",), batch_size=2, checkpoint_every=HALF, model="none",
              deterministic=True, steps=STEPS)


def _checkpoint_values(prefix: str) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(prefix)
    # save_counter counts the saves of this checkpoint object (bookkeeping, not training state).
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if not name.startswith(("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter"))}


def _cut_back(run_dir: str, step: int) -> None:
    """Leaves ``run_dir`` as a kill after the checkpoint of ``step`` would: later checkpoints removed."""
    checkpoints = os.path.join(run_dir, "checkpoints")
    kept = os.path.join(checkpoints, f"ckpt-{step}")
    assert os.path.isfile(kept + ".index")
    for path in glob.glob(os.path.join(checkpoints, "ckpt-*")):
        if int(os.path.basename(path).split(".")[0].split("-")[1]) > step:
            os.remove(path)
    with open(os.path.join(checkpoints, "checkpoint"), "w") as f:  # the state file CheckpointManager writes
        f.write(f'model_checkpoint_path: "ckpt-{step}"\nall_model_checkpoint_paths: "ckpt-{step}"\n')


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run of STEPS steps, and its copy cut back to the checkpoint at HALF (interrupted)."""
    root = str(tmp_path_factory.mktemp("resume"))
    seen = []
    with pytest.MonkeyPatch.context() as mp:
        train = trainer.train

        def recording_train(*args, **kwargs):
            seen.append(tf_config.is_op_determinism_enabled())
            return train(*args, **kwargs)

        mp.setattr(trainer, "train", recording_train)
        straight = cli.run(tiny_args(root, "train", model_dir="straight", **COMMON))
    assert seen == [True]  # --deterministic switched op determinism on during training ...
    assert not tf_config.is_op_determinism_enabled()  # ... and cli.run switched it off again
    assert straight["step"] == STEPS
    shutil.copytree(os.path.join(root, "straight"), os.path.join(root, "interrupted"))
    _cut_back(os.path.join(root, "interrupted"), HALF)
    assert tf.train.latest_checkpoint(os.path.join(root, "interrupted", "checkpoints")).endswith(f"ckpt-{HALF}")
    return root


def _resume(root: str, name: str) -> dict[str, np.ndarray]:
    """Copies the interrupted run to ``name``, resumes it with --model=last and returns its final checkpoint."""
    shutil.copytree(os.path.join(root, "interrupted"), os.path.join(root, name))
    logs = cli.run(tiny_args(root, "train", model_dir=name, **dict(COMMON, model="last", config=None)))
    assert logs["step"] == STEPS
    return _checkpoint_values(os.path.join(root, name, "checkpoints", f"ckpt-{STEPS}"))


def _differing(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> list[str]:
    assert sorted(a) == sorted(b)
    return [name for name in a if not np.array_equal(a[name], b[name])]


@pytest.mark.slow
def test_resume_is_bit_identical_to_uninterrupted_training(runs):
    straight = _checkpoint_values(os.path.join(runs, "straight", "checkpoints", f"ckpt-{STEPS}"))
    resumed = _resume(runs, "resumed")
    # Trainable weights under optimizer/_trainable_variables, momentum under optimizer/_variables, BN statistics.
    assert sum(k.startswith("optimizer/_variables/") for k in straight) > 100
    assert sum("moving_variance" in k for k in straight) > 10
    assert straight["optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"] == STEPS
    assert straight["step/.ATTRIBUTES/VARIABLE_VALUE"] == resumed["step/.ATTRIBUTES/VARIABLE_VALUE"] == STEPS
    assert _differing(straight, resumed) == []
    # The last steps really moved the weights (the equality is not that of two untouched copies).
    half = _checkpoint_values(os.path.join(runs, "straight", "checkpoints", f"ckpt-{HALF}"))
    assert len(_differing(straight, half)) > 100


@pytest.mark.slow
def test_resume_without_skipping_consumed_batches_differs(runs, monkeypatch):
    # Broken resume: the input starts from the beginning of the stream again.
    dataset_fn = cli_train.TrainSession.dataset_fn
    monkeypatch.setattr(cli_train.TrainSession, "dataset_fn", lambda self, ctx, skip: dataset_fn(self, ctx, 0))
    straight = _checkpoint_values(os.path.join(runs, "straight", "checkpoints", f"ckpt-{STEPS}"))
    assert len(_differing(straight, _resume(runs, "no_skip"))) > 100


@pytest.mark.slow
def test_resume_without_restoring_the_step_seed_differs(runs, monkeypatch):
    # Broken resume: the samplers' step counter restarts at 0 in the new process.
    step_seed = MaskRCNN.step_seed
    monkeypatch.setattr(MaskRCNN, "step_seed", lambda self, step: step_seed(self, step - HALF))
    straight = _checkpoint_values(os.path.join(runs, "straight", "checkpoints", f"ckpt-{STEPS}"))
    assert len(_differing(straight, _resume(runs, "seed_restarts"))) > 100
