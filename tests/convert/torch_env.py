"""Importing torch in a test process that already runs TensorFlow.

torch imports triton lazily (torch.compile's GPU code generator, e.g. on the first torch.optim step), and
triton's bundled LLVM crashes the process with a segmentation fault when TensorFlow's is loaded already
(tests/conftest.py imports TensorFlow first). These tests never compile anything: hiding triton makes torch
take its no-triton path.
"""

from __future__ import annotations

import sys

import pytest


def import_torch():
    """Returns the torch module (the test is skipped when torch is not installed)."""
    sys.modules.setdefault("triton", None)  # `import triton` now raises ImportError: torch runs without it
    return pytest.importorskip("torch")
