"""Importing torch/torchvision in a process that has already imported TensorFlow (every test does).

Importing torchvision after TensorFlow pulls in triton, whose native library crashes the process
(segmentation fault) next to TensorFlow's. Tests only need torchvision's CPU ops, so triton is marked
absent first (torch then treats it as not installed, as on a machine without it).
"""

from __future__ import annotations

import sys
from types import ModuleType

import pytest


def import_torch() -> tuple[ModuleType, ModuleType]:
    """``(torch, torchvision)``, or skips the calling test module when they are not installed."""
    sys.modules.setdefault("triton", None)  # type: ignore[arg-type]
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    torch.set_num_threads(1)  # small inputs; do not compete with TF's thread pools on 2 cores
    return torch, torchvision
