"""TensorBoard scalar and image summaries under ``<model_dir>/train`` and ``<model_dir>/eval``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

__all__ = ["TensorBoardLogger"]


class TensorBoardLogger:
    """Scalar and image summaries in ``<model_dir>/train`` and ``<model_dir>/eval``.

    Only the chief writes in multi-worker runs: pass ``enabled=False`` on the other workers and every
    method does nothing (no directory, no file). Writers are opened on first use.
    """

    SPLITS = ("train", "eval")

    def __init__(self, model_dir: str, enabled: bool = True):
        self.model_dir = model_dir
        self.enabled = enabled
        self._writers: dict[str, tf.summary.SummaryWriter] = {}

    def _writer(self, split: str) -> tf.summary.SummaryWriter:
        if split not in self.SPLITS:
            raise ValueError(f"split='{split}' must be one of {self.SPLITS}")
        if split not in self._writers:
            self._writers[split] = tf.summary.create_file_writer(os.path.join(self.model_dir, split))
        return self._writers[split]

    def scalars(self, split: str, values: Mapping[str, Any], step: int) -> None:
        """Writes ``{tag: number}`` (Python, NumPy or scalar tensors) at ``step``."""
        if not self.enabled:
            return
        with self._writer(split).as_default():
            for tag, value in values.items():
                tf.summary.scalar(tag, float(np.asarray(value)), step=int(step))

    def images(self, split: str, tag: str, images: Any, step: int, max_outputs: int = 8) -> None:
        """Writes ``images``: [N, H, W, 3] uint8 RGB (or one [H, W, 3] image) at ``step``."""
        if not self.enabled:
            return
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
        with self._writer(split).as_default():
            tf.summary.image(tag, images, step=int(step), max_outputs=max_outputs)

    def flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
