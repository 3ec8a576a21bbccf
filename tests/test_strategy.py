"""Tests for mrcnn_tf2.strategy: the strategies by name and the one-paragraph errors."""

import json
import socket

import pytest
import tensorflow as tf

from mrcnn_tf2 import strategy as strategy_lib


def test_one_device_and_mirrored_strategies():
    one = strategy_lib.create_strategy("one_device")
    assert one.num_replicas_in_sync == 1
    mirrored = strategy_lib.create_strategy("mirrored")
    assert mirrored.num_replicas_in_sync == 2  # the two logical CPUs of conftest.py

    def replica_value():
        return tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group + 1, tf.float32)

    total = mirrored.reduce(tf.distribute.ReduceOp.SUM, mirrored.run(replica_value), axis=None)
    assert float(total) == 3.0


def test_strategy_errors(monkeypatch):
    with pytest.raises(strategy_lib.StrategyError, match="unknown strategy"):
        strategy_lib.create_strategy("horovod")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(strategy_lib.StrategyError, match="TF_CONFIG"):
        strategy_lib.create_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(strategy_lib.StrategyError, match="not valid JSON"):
        strategy_lib.create_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1"]},
                                                "task": {"type": "worker", "index": 3}}))
    with pytest.raises(strategy_lib.StrategyError, match="does not name a member"):
        strategy_lib.create_strategy("multi_worker")


def test_tpu_strategy_error_without_a_tpu(monkeypatch):
    monkeypatch.delenv("TPU_NAME", raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # released: nothing listens there
    timeouts = []
    real_connect = socket.create_connection

    def connect(address, timeout=None, *args, **kwargs):  # records that the probe is bounded, then connects
        timeouts.append(timeout)
        return real_connect(address, timeout, *args, **kwargs)

    monkeypatch.setattr(strategy_lib.socket, "create_connection", connect)
    with pytest.raises(strategy_lib.StrategyError, match=f"nothing answers at grpc://127.0.0.1:{port}"):
        strategy_lib.create_strategy("tpu", f"grpc://127.0.0.1:{port}")
    assert timeouts == [strategy_lib.TPU_CONNECT_TIMEOUT_S] and 0 < timeouts[0] <= 60
    with pytest.raises(strategy_lib.StrategyError, match="could not reach a TPU"):
        strategy_lib.create_strategy("tpu", "")
    with pytest.raises(strategy_lib.StrategyError, match="not a grpc://host:port"):
        strategy_lib._check_reachable("grpc://nohost", 1.0)
