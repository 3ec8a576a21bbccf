"""The LR schedule under resume and staged training: absolute decay steps, kept across runs.

Raising ``--steps`` on resume used to move the decay points (fractions of ``train.steps``), so the LR
could jump back up 10-100x. Now ``train.decay_steps`` is resolved once, stored in ``config.json`` and
kept by ``--model=last`` runs (also with a new ``--train_layers``) unless the user passes new ones.
"""

from __future__ import annotations

import glob
import math
import os

import numpy as np
import pytest
import tensorflow as tf
from mrcnn_tf2.cli import train as cli_train
from mrcnn_tf2.cli.common import prepare, read_config, write_config

from mrcnn_tf2 import cli, config, training
from tests.cli.common import tiny_args

BASE_LR, WARMUP, FACTOR = 0.1, 10, 0.01


def _reference(step: int, total: int, schedule: str, boundaries: tuple[int, ...], end: int = 0) -> float:
    """The schedule written out by hand: linear warm-up times step decay (x0.1 each) or cosine to ``end``."""
    warm = FACTOR + (1 - FACTOR) * min(step / WARMUP, 1.0)
    if schedule == "step":
        return BASE_LR * warm * 0.1 ** sum(step >= b for b in boundaries)
    t = min(max((step - WARMUP) / ((end or total) - WARMUP), 0.0), 1.0)
    return BASE_LR * warm * 0.5 * (1 + math.cos(math.pi * t))


@pytest.mark.parametrize("schedule,decay_steps", [("step", (30, 60)), ("step", ()), ("cosine", (50,)),
                                                  ("cosine", ())])
def test_schedule_with_absolute_decay_steps_matches_reference(schedule, decay_steps):
    total = 100
    sched = training.learning_rate_schedule(BASE_LR, total, WARMUP, FACTOR, schedule, (0.5, 0.8), 0.1, decay_steps)
    boundaries = decay_steps if schedule == "step" and decay_steps else (50, 80)
    end = decay_steps[0] if schedule == "cosine" and decay_steps else 0
    for step in (0, 5, 10, 29, 30, 49, 50, 59, 60, 79, 80, 99, 100, 150):
        np.testing.assert_allclose(float(sched(step)), _reference(step, total, schedule, boundaries, end),
                                   rtol=1e-5, atol=1e-9, err_msg=str(step))
    restored = training.WarmupDecaySchedule.from_config(sched.get_config())
    assert restored.decay_steps == tuple(decay_steps)


def test_absolute_decay_steps():
    t = config.TrainConfig(steps=1000, decay_fractions=(0.667, 0.889))
    assert training.absolute_decay_steps(t) == (667, 889)
    assert training.absolute_decay_steps(config.TrainConfig(steps=300, schedule="cosine")) == (300,)
    assert training.absolute_decay_steps(config.TrainConfig(steps=300, decay_steps=(10, 20))) == (10, 20)


def test_decay_steps_validation():
    with pytest.raises(config.ConfigError, match="train.decay_steps"):
        config.preset("shapes", overrides={"train.decay_steps": [30, 10], "train.schedule": "step"})
    with pytest.raises(config.ConfigError, match="cosine"):
        config.preset("shapes", overrides={"train.decay_steps": [30, 60]})


def _fake_run(root: str, args) -> config.Config:
    """What the start of ``--mode=train`` leaves: config.json with the resolved decay steps, a checkpoint."""
    cfg = cli_train.resolve_decay_steps(prepare(args))
    write_config(cfg, os.path.join(args.model_dir, "config.json"))
    checkpoints = os.path.join(args.model_dir, "checkpoints")
    os.makedirs(checkpoints)
    with open(os.path.join(checkpoints, "checkpoint"), "w") as f:
        f.write('model_checkpoint_path: "ckpt-70"\n')
    open(os.path.join(checkpoints, "ckpt-70.index"), "w").close()
    return cfg


def _lrs(train_cfg: config.TrainConfig, steps: range) -> list[float]:
    sched = training.learning_rate_schedule(BASE_LR, train_cfg.steps, train_cfg.warmup_steps, FACTOR,
                                            train_cfg.schedule, train_cfg.decay_fractions, 0.1,
                                            train_cfg.decay_steps)
    return [float(v) for v in sched(tf.constant(list(steps)))]  # elementwise over a vector of steps


def _never_rises(lrs: list[float]) -> bool:
    return all(b <= a * (1 + 1e-6) for a, b in zip(lrs, lrs[1:]))


@pytest.mark.parametrize("schedule", ["step", "cosine"])
@pytest.mark.parametrize("change", [{"steps": 400}, {"steps": 400, "train_layers": "heads"}],
                         ids=["larger_steps", "stage_change"])
def test_lr_never_rises_after_warmup_across_a_resume(tmp_path, schedule, change):
    """First run: 100 steps; resumed at step 70 (past the first decay) with 400 steps (and a new stage)."""
    root = str(tmp_path)
    overrides = (f"train.schedule={schedule}", f"train.warmup_steps={WARMUP}")
    first = _fake_run(root, tiny_args(root, "train", overrides=overrides, steps=100, model="none"))
    assert first.train.decay_steps == ((66, 88) if schedule == "step" else (100,))
    assert read_config(os.path.join(root, "run", "config.json")).train.decay_steps == first.train.decay_steps
    resumed = cli_train.resolve_decay_steps(prepare(tiny_args(root, "train", model="last", config=None, **change)))
    assert resumed.train.steps == 400 and resumed.train.decay_steps == first.train.decay_steps
    lrs = _lrs(first.train, range(WARMUP, 70)) + _lrs(resumed.train, range(70, 400))
    assert _never_rises(lrs)
    # The scenario is a real test: decay points following the new train.steps would raise the LR.
    naive = config.apply_overrides(resumed, {"train.decay_steps": []})
    assert not _never_rises(_lrs(first.train, range(WARMUP, 70)) + _lrs(naive.train, range(70, 400)))


def test_explicit_decay_steps_or_new_fractions_win_on_resume(tmp_path):
    root = str(tmp_path)
    overrides = ("train.schedule=step",)
    _fake_run(root, tiny_args(root, "train", overrides=overrides, steps=100, model="none"))
    given = prepare(tiny_args(root, "train", model="last", config=None, steps=400,
                              overrides=("train.decay_steps=[300,350]",)))
    assert cli_train.resolve_decay_steps(given).train.decay_steps == (300, 350)
    rederived = prepare(tiny_args(root, "train", model="last", config=None, steps=400,
                                  overrides=("train.decay_steps=[]",)))
    assert cli_train.resolve_decay_steps(rederived).train.decay_steps == (266, 355)
    fractions = prepare(tiny_args(root, "train", model="last", config=None, steps=400,
                                  overrides=("train.decay_fractions=[0.5]",)))
    assert cli_train.resolve_decay_steps(fractions).train.decay_steps == (200,)
    # A new run (not a resume) resolves its own.
    fresh = prepare(tiny_args(root, "train", model_dir="other", overrides=overrides, steps=400, model="none"))
    assert cli_train.resolve_decay_steps(fresh).train.decay_steps == (266, 355)


def _logged(model_dir: str, tag: str) -> dict[int, float]:
    values = {}
    for path in sorted(glob.glob(os.path.join(model_dir, "train", "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    values[int(event.step)] = float(tf.make_ndarray(value.tensor))
    return values


@pytest.mark.slow
def test_trained_lr_never_rises_across_a_resume_with_more_steps_and_a_new_stage(tmp_path):
    """Real runs: 2 steps with a decay at step 1, then --model=last --steps=5 --train_layers=heads.

    The old rule (fractions of the new train.steps: int(0.9 * 5) = 4) would raise the LR 10x at step 3.
    """
    root = str(tmp_path)
    overrides = ("train.schedule=step", "train.warmup_steps=1", "train.decay_fractions=[0.9]")
    cli.run(tiny_args(root, "train", overrides=overrides, steps=2, batch_size=2, model="none"))
    assert read_config(os.path.join(root, "run", "config.json")).train.decay_steps == (1,)
    cli.run(tiny_args(root, "train", model="last", config=None, steps=5, batch_size=2, train_layers="heads"))
    assert read_config(os.path.join(root, "run", "config.json")).train.decay_steps == (1,)
    lrs = _logged(os.path.join(root, "run"), "learning_rate")
    assert sorted(lrs) == [1, 2, 3, 4, 5]
    decayed = 0.02 * 2 / 8 * 0.1  # shapes: learning_rate 0.02 at reference batch 8, run at batch 2, one decay
    np.testing.assert_allclose([lrs[s] for s in sorted(lrs)], [decayed] * 5, rtol=1e-5)
