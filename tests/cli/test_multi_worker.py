"""--strategy=multi_worker end to end: two worker processes on localhost ports train, then resume.

Each worker is ``python main.py --mode=train --strategy=multi_worker ...`` with its own ``TF_CONFIG``
(worker 0 = the chief). The test checks that both exit 0, that only the chief writes to ``--model_dir``
(worker 1 gets its own, which must stay empty, and its temporary checkpoint folder is removed), that
both end with bit-identical weights (each worker runs through ``tests/cli/dumping_worker.py``, which
installs a callback that writes the process's final weights; batch-norm moving statistics excepted, see
``_worker_weights``), that the chief's last checkpoint holds the chief's final weights, and that
``--model=last`` resumes on two workers. A hung collective cannot hang CI: each run has a deadline (generous:
it is there for hangs, and a loaded machine must not trip it), and a worker that fails stops the other. A
port that another process takes between ``_free_ports`` and a worker's bind is retried on fresh ports
(``PORT_TAKEN``).
"""

from __future__ import annotations

import glob
import json
import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from mrcnn_tf2.cli.weights import restore_model

from mrcnn_tf2 import build_model, cli
from mrcnn_tf2.run_dir import read_config
from tests.cli.common import SMALL_SAMPLING, TINY_OVERRIDES, tiny_args

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = os.path.join(ROOT, "tests", "cli", "dumping_worker.py")  # main.py that also writes its final weights
DEADLINE_S = 600
BN_STATISTICS = ("/moving_mean", "/moving_variance")
# The shapes preset cut down: 8 training images, a global batch of 2 (1 per worker), few anchors and ROIs.
SMALL = TINY_OVERRIDES + [*SMALL_SAMPLING, "train.warmup_steps=1", "train.learning_rate=0.01"]


# What a worker logs when its gRPC server cannot bind its port (another process took the port between
# ``_free_ports`` and the worker's start): the one failure that is retried, with fresh ports.
PORT_TAKEN = "Could not start gRPC server"
PORT_ATTEMPTS = 3


def _free_ports(n: int) -> list[int]:
    """n distinct ports free on all interfaces a moment ago (bound to port 0, then released; the workers'
    gRPC servers bind 0.0.0.0)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _start_and_wait(tmp_path, name: str, model_dirs: list[str], flags: tuple[str, ...]) -> list[subprocess.Popen]:
    """Starts one ``main.py`` per worker on fresh ports and waits until all exit, one fails, or the deadline."""
    cluster = {"worker": [f"localhost:{p}" for p in _free_ports(len(model_dirs))]}
    procs, logs = [], []
    for index, model_dir in enumerate(model_dirs):
        tmp = tmp_path / f"tmp{index}"
        tmp.mkdir(exist_ok=True)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TMPDIR=str(tmp),
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        log = open(tmp_path / f"{name}_worker{index}.log", "w")  # noqa: SIM115 - closed below
        logs.append(log)
        command = [sys.executable, WORKER, str(tmp_path / f"{name}_worker{index}.npz"), "--mode=train",
                   "--strategy=multi_worker", f"--model_dir={model_dir}", f"--data_dir={tmp_path / 'shapes'}",
                   "--batch_size=2",
                   *[f"--config_override={o}" for o in SMALL], *flags]
        procs.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=env))
    deadline = time.monotonic() + DEADLINE_S
    try:
        while any(p.poll() is None for p in procs):
            failed = any(p.poll() not in (None, 0) for p in procs)
            if failed or time.monotonic() > deadline:
                time.sleep(2 if failed else 0)  # let the failing worker's message reach its log
                break
            time.sleep(0.5)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        for log in logs:
            log.close()
    return procs


def _run_workers(tmp_path, name: str, model_dirs: list[str], *flags: str) -> list[subprocess.Popen]:
    """Runs the workers; fails with both logs if one fails or hangs. A port taken by another process before
    a worker bound it (``PORT_TAKEN``; nothing was trained or written yet) is retried on new ports."""
    attempt = 0
    while True:
        attempt += 1
        procs = _start_and_wait(tmp_path, name, model_dirs, flags)
        texts = [(tmp_path / f"{name}_worker{i}.log").read_text() for i in range(len(procs))]
        failed = any(p.returncode != 0 for p in procs)
        if not (failed and any(PORT_TAKEN in t for t in texts) and attempt < PORT_ATTEMPTS):
            break
    if any(p.returncode != 0 for p in procs):
        report = "\n".join(f"--- worker {i} (exit {p.returncode}):\n" + texts[i][-3000:] for i, p in enumerate(procs))
        pytest.fail(f"{name}: a worker failed or the run passed {DEADLINE_S} s (attempt {attempt})\n{report}")
    return procs


def _checkpoints(model_dir: str) -> list[int]:
    return sorted(int(re.search(r"ckpt-(\d+)", p).group(1))
                  for p in glob.glob(os.path.join(model_dir, "checkpoints", "ckpt-*.index")))


def _event_file_pids(directory: str) -> set[int]:
    """The writing process ids (``events.out.tfevents.<time>.<host>.<pid>.<n>.v2``)."""
    return {int(os.path.basename(p).split(".")[-3])
            for p in glob.glob(os.path.join(directory, "events.out.tfevents.*"))}


def _worker_weights(tmp_path, name: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Both workers' final weights; asserts that all but the batch-norm moving statistics are bit-identical.

    Batch-norm moving statistics (the ``bn`` norm of the shapes preset) are not synchronized without
    ``model.sync_bn``: Keras creates them with aggregation NONE, so each worker (each replica) averages
    its own batches, and the chief's values are the ones in the checkpoint. Training does not read them
    (batch statistics are used).
    """
    with np.load(tmp_path / f"{name}_worker0.npz") as f0, np.load(tmp_path / f"{name}_worker1.npz") as f1:
        w0, w1 = dict(f0), dict(f1)
    assert sorted(w0) == sorted(w1)
    synced = [k for k in w0 if not k.endswith(BN_STATISTICS)]
    assert len(synced) > 150
    for key in synced:
        np.testing.assert_array_equal(w0[key], w1[key], err_msg=key)
    return w0, w1


def _checkpoint_weights(model_dir: str, step: int) -> dict[str, np.ndarray]:
    model = build_model(read_config(os.path.join(model_dir, "config.json")))
    restore_model(model, os.path.join(model_dir, "checkpoints", f"ckpt-{step}"))
    return {w.path: w.numpy() for w in model.weights}


def test_two_workers_train_identically_only_the_chief_writes_and_resume(tmp_path):
    cli.prepare(tiny_args(str(tmp_path), "train"))  # generates the shapes data once, before the workers
    chief_dir, worker_dir = str(tmp_path / "run"), str(tmp_path / "worker1_run")

    first = _run_workers(tmp_path, "first", [chief_dir, worker_dir], "--model=none", "--steps=3",
                         "--checkpoint_every=2")
    assert _checkpoints(chief_dir) == [2, 3]
    assert os.path.isfile(os.path.join(chief_dir, "config.json"))
    assert _event_file_pids(os.path.join(chief_dir, "train")) == {first[0].pid}
    assert not os.path.exists(worker_dir)  # worker 1 wrote nothing to its --model_dir ...
    assert os.listdir(tmp_path / "tmp1") == []  # ... and removed its temporary checkpoints
    chief, worker = _worker_weights(tmp_path, "first")
    # The workers read different images (the dataset is sharded per input pipeline): their unsynchronized
    # batch-norm statistics differ, so identical trainable weights come from the gradient all-reduce.
    assert any(not np.array_equal(chief[k], worker[k]) for k in chief if k.endswith(BN_STATISTICS))
    saved, before = _checkpoint_weights(chief_dir, 3), _checkpoint_weights(chief_dir, 2)
    assert sorted(saved) == sorted(chief)
    for key, value in chief.items():  # the checkpoint holds the chief's final weights, statistics included
        np.testing.assert_array_equal(saved[key], value, err_msg=key)
    moved = [k for k in saved if not k.endswith(BN_STATISTICS) and not np.array_equal(saved[k], before[k])]
    assert len(moved) > 100  # step 3 changed the weights: identical workers is not a trivial outcome

    # Resume on two workers from the chief's run directory (shared, as on an NFS mount), now with
    # synchronized batch norm (model.sync_bn: the same variables, so the checkpoint restores as it is).
    second = _run_workers(tmp_path, "second", [chief_dir, chief_dir], "--model=last", "--steps=5",
                          "--checkpoint_every=2", "--config_override=model.sync_bn=true")
    assert _checkpoints(chief_dir) == [2, 3, 4, 5]
    assert _event_file_pids(os.path.join(chief_dir, "train")) == {first[0].pid, second[0].pid}
    assert os.listdir(tmp_path / "tmp1") == []
    chief, worker = _worker_weights(tmp_path, "second")
    # Both workers restored the chief's statistics and then averaged the global batch's (the all-reduced
    # mean and variance of both workers' images): the moving statistics now agree across the workers too.
    statistics = [k for k in chief if k.endswith(BN_STATISTICS)]
    assert len(statistics) > 20
    for key in statistics:
        np.testing.assert_array_equal(chief[key], worker[key], err_msg=key)
    saved = _checkpoint_weights(chief_dir, 5)
    for key, value in chief.items():
        np.testing.assert_array_equal(saved[key], value, err_msg=key)
    assert "resuming" in (tmp_path / "second_worker1.log").read_text()
