"""Coupled weight decay (``train.weight_decay_mode=coupled``) against ``torch.optim.SGD`` itself.

torch.optim.SGD with momentum mu, weight decay wd and no dampening updates ``b = mu * b + (g + wd * w)``,
``w -= lr * b``; our CoupledWeightDecaySGD must give the same weights step after step (float32: 1e-6),
decay only the variables that NO_DECAY_PATTERN does not exclude (torch: a param group with decay 0), and
differ from the decoupled form (which a test that cannot fail would not show).
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from mrcnn_tf2.config import TrainConfig
from mrcnn_tf2.optimizer import CoupledWeightDecaySGD, build_optimizer
from tests.torch_import import import_torch

torch, _ = import_torch()

LR, MOMENTUM, WD = 0.05, 0.9, 0.01  # a large decay so that coupled and decoupled differ clearly


def _train_cfg(mode: str) -> TrainConfig:
    return dataclasses.replace(TrainConfig(), learning_rate=LR, reference_batch_size=1, momentum=MOMENTUM,
                               weight_decay=WD, warmup_steps=0, schedule="step", decay_fractions=(0.99,),
                               steps=1000, weight_decay_mode=mode)


def _run_keras(mode: str, kernel0, bias0, grads):
    layer = keras.layers.Dense(kernel0.shape[1])
    layer.build((None, kernel0.shape[0]))
    layer.kernel.assign(kernel0)
    layer.bias.assign(bias0)
    optimizer = build_optimizer(_train_cfg(mode), global_batch_size=1)
    for g_kernel, g_bias in grads:
        optimizer.apply_gradients([(g_kernel, layer.kernel), (g_bias, layer.bias)])
    return optimizer, np.asarray(layer.kernel), np.asarray(layer.bias)


def _run_torch(kernel0, bias0, grads):
    kernel = torch.nn.Parameter(torch.tensor(kernel0))
    bias = torch.nn.Parameter(torch.tensor(bias0))
    optimizer = torch.optim.SGD([{"params": [kernel], "weight_decay": WD}, {"params": [bias], "weight_decay": 0.0}],
                                lr=LR, momentum=MOMENTUM)
    for g_kernel, g_bias in grads:
        kernel.grad, bias.grad = torch.tensor(g_kernel), torch.tensor(g_bias)
        optimizer.step()
    return kernel.detach().numpy(), bias.detach().numpy()


def test_coupled_sgd_matches_torch_sgd():
    rng = np.random.default_rng(0)
    kernel0 = rng.normal(size=(5, 3)).astype(np.float32)
    bias0 = rng.normal(size=(3,)).astype(np.float32)
    grads = [(rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32))
             for _ in range(3)]
    optimizer, kernel, bias = _run_keras("coupled", kernel0, bias0, grads)
    assert isinstance(optimizer, CoupledWeightDecaySGD)
    want_kernel, want_bias = _run_torch(kernel0, bias0, grads)
    np.testing.assert_allclose(kernel, want_kernel, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(bias, want_bias, rtol=1e-6, atol=1e-6)
    _, decoupled_kernel, decoupled_bias = _run_keras("decoupled", kernel0, bias0, grads)
    assert np.abs(decoupled_kernel - want_kernel).max() > 1e-3  # the two forms really differ
    np.testing.assert_allclose(decoupled_bias, want_bias, rtol=1e-6, atol=1e-6)  # biases: no decay in either
