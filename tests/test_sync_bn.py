"""``model.sync_bn``: trainable batch norm takes its statistics from the global batch of all replicas.

Two replicas on two logical CPUs get different data. With ``sync_bn`` the moving statistics after one
training step are those of the whole global batch (a NumPy reference) on both replicas; without it each
replica keeps the statistics of its own half, and the replicas disagree. The distributed checks run in a
fresh process
(``tests/sync_bn_worker.py`` says why); this file compares their numbers with NumPy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from mrcnn_tf2 import build_model, config
from mrcnn_tf2.layers.norm import FrozenBatchNormalization

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MOMENTUM = 0.9  # as in sync_bn_worker.py: moving = MOMENTUM * moving + (1 - MOMENTUM) * batch statistic


def _worker(check: str) -> dict:
    result = subprocess.run([sys.executable, "-m", "tests.sync_bn_worker", check], capture_output=True, text=True,
                            cwd=ROOT, timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _reference(halves: list, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Moving mean and variance after one update from (0, 1) with the biased statistics of these halves together."""
    whole = np.concatenate([np.asarray(h, np.float64) for h in halves], axis=0)
    return (1 - MOMENTUM) * whole.mean(axis=axes), MOMENTUM + (1 - MOMENTUM) * whole.var(axis=axes)


def test_norm_layer_uses_global_batch_statistics_only_when_synchronized():
    out = _worker("layer")
    halves = out["halves"]  # 2 and 3 images: unequal counts must weigh in
    want_mean, want_var = _reference(halves, (0, 1, 2))
    synced = out["True"]
    for mean, var in zip(synced["mean"], synced["var"]):
        np.testing.assert_allclose(mean, want_mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(var, want_var, rtol=1e-5, atol=1e-6)
    alone = out["False"]  # each replica keeps its own half's statistics
    assert not np.allclose(alone["mean"][0], alone["mean"][1], atol=1e-3)
    for half, mean, var in zip(halves, alone["mean"], alone["var"]):
        own_mean, own_var = _reference([half], (0, 1, 2))
        np.testing.assert_allclose(mean, own_mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(var, own_var, rtol=1e-5, atol=1e-6)
        assert not np.allclose(var, want_var, rtol=1e-2)


def _trainable_bns(layer: keras.layers.Layer) -> list[keras.layers.BatchNormalization]:
    return [sub for sub in layer._flatten_layers(include_self=False, recursive=True)
            if isinstance(sub, keras.layers.BatchNormalization) and not isinstance(sub, FrozenBatchNormalization)]


def test_builder_passes_sync_bn_to_every_trainable_batch_norm():
    for sync in (False, True):
        cfg = config.preset("shapes", overrides={"model.norm": "bn", "model.fpn_norm": "bn",
                                                 "model.roi.head_norm": "bn", "model.sync_bn": sync})
        model = build_model(cfg, build=False)
        layers = _trainable_bns(model)
        # MobileNetV3 (keras.applications), FPN, mask head
        assert {"conv_bn", "lateral_p2_bn", "output_p5_bn", "bn_0"} <= {layer.name for layer in layers}
        assert [layer.synchronized for layer in layers] == [sync] * len(layers)
        assert all(part.get_config()["sync_bn"] is sync for part in (model.fpn, model.box_head, model.mask_head))


@pytest.mark.slow
def test_training_step_on_two_replicas_uses_global_statistics():
    """One real ``train_step`` with ``sync_bn`` under MirroredStrategy, one different image per replica."""
    out = _worker("model")
    want_mean, want_var = _reference(out["first_input"], (0, 1, 2))
    first = out["first"]
    for mean, var in zip(first["mean"], first["var"]):
        np.testing.assert_allclose(mean, want_mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(var, want_var, rtol=1e-4, atol=1e-5)
    own_mean, own_var = _reference(out["first_input"][:1], (0, 1, 2))
    # The halves differ by far more than the tolerance: per-replica statistics could not pass the checks above.
    assert np.max(np.abs(own_var - want_var)) > 20 * 1e-4 * np.max(want_var)
    assert len(out["layers"]) > 20 and {"lateral_p2_bn", "bn_0"} <= set(out["layers"])  # FPN and a head too
    for name, stats in out["layers"].items():
        np.testing.assert_allclose(stats["mean"][0], stats["mean"][1], rtol=1e-4, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(stats["var"][0], stats["var"][1], rtol=1e-4, atol=1e-5, err_msg=name)
