"""Tests for mrcnn_tf2.tensorboard_log: scalars and images land in the event files; disabled writes nothing."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from mrcnn_tf2.tensorboard_log import TensorBoardLogger


def _read_events(directory):
    events = []
    for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
        for record in tf.data.TFRecordDataset(path):
            events.append(tf.compat.v1.Event.FromString(record.numpy()))
    return events


def test_tensorboard_logger_writes_scalars_and_images(tmp_path):
    logger = TensorBoardLogger(str(tmp_path), enabled=True)
    logger.scalars("train", {"loss_total": 1.5, "learning_rate": np.float32(0.01)}, step=7)
    logger.scalars("eval", {"bbox/AP": tf.constant(0.25)}, step=7)
    logger.images("eval", "predictions", np.zeros((2, 8, 8, 3), np.uint8), step=7)
    logger.flush()
    values = {}
    for event in _read_events(str(tmp_path / "train")) + _read_events(str(tmp_path / "eval")):
        for v in event.summary.value:
            values[v.tag] = (event.step, tf.make_ndarray(v.tensor) if v.HasField("tensor") else None)
    assert values["loss_total"][0] == 7 and float(values["loss_total"][1]) == pytest.approx(1.5)
    assert float(values["learning_rate"][1]) == pytest.approx(0.01)
    assert float(values["bbox/AP"][1]) == pytest.approx(0.25)
    assert "predictions" in values
    with pytest.raises(ValueError):
        logger.images("eval", "bad", np.zeros((2, 8, 8, 3), np.float32), step=1)
    logger.close()


def test_tensorboard_logger_disabled_writes_nothing(tmp_path):
    logger = TensorBoardLogger(str(tmp_path / "run"), enabled=False)
    logger.scalars("train", {"loss": 1.0}, step=1)
    logger.images("eval", "x", np.zeros((1, 4, 4, 3), np.uint8), step=1)
    logger.flush()
    logger.close()
    assert not os.path.exists(tmp_path / "run")
