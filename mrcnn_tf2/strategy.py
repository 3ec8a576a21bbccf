"""Distribution strategies by name: one_device, mirrored, multi_worker (``TF_CONFIG``) and tpu.

``create_strategy`` turns every way a strategy cannot be created (unknown name, missing or invalid
``TF_CONFIG``, an unreachable TPU) into a ``StrategyError`` whose message says what to fix.
"""

from __future__ import annotations

import json
import os
import socket

import tensorflow as tf

from mrcnn_tf2.config import STRATEGIES

__all__ = ["StrategyError", "STRATEGIES", "create_strategy", "TPU_CONNECT_TIMEOUT_S"]


class StrategyError(ValueError):
    """A strategy that cannot be created; the message says what to fix."""


def _check_tf_config() -> str:
    """Checks ``TF_CONFIG``; returns this task's ``host:port``."""
    text = os.environ.get("TF_CONFIG", "")
    example = ('e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
               '"task": {"type": "worker", "index": 0}}\'')
    if not text:
        raise StrategyError(f"--strategy=multi_worker needs the TF_CONFIG environment variable, {example}")
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise StrategyError(f"TF_CONFIG is not valid JSON ({e}); {example}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("cluster"), dict) \
            or not isinstance(spec.get("task"), dict):
        raise StrategyError(f"TF_CONFIG must hold a 'cluster' and a 'task' mapping; {example}")
    task = spec["task"]
    members = spec["cluster"].get(task.get("type"), None)
    if not isinstance(members, list) or not isinstance(task.get("index"), int) \
            or not 0 <= task["index"] < len(members):
        raise StrategyError(f"TF_CONFIG task {task} does not name a member of the cluster "
                            f"{spec['cluster']}; {example}")
    return str(members[task["index"]])


def _multi_worker_strategy() -> tf.distribute.MultiWorkerMirroredStrategy:
    """``MultiWorkerMirroredStrategy`` from a checked ``TF_CONFIG``; a port it cannot bind is a ``StrategyError``."""
    address = _check_tf_config()
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except tf.errors.OpError as e:
        if "gRPC server" not in str(e):
            raise
        port = address.rpartition(":")[2]
        raise StrategyError(
            f"--strategy=multi_worker: this worker could not listen on {address}, its address in TF_CONFIG "
            f"({type(e).__name__}: {e.message}). The port is most likely taken (by another program, another worker "
            f"on this machine, or an earlier run that is still alive: `ss -ltnp | grep :{port}` shows which), or "
            "the host is not an address of this machine. Free the port, or give this worker another one in the "
            "TF_CONFIG of every worker (the cluster lists must be identical).") from None


TPU_CONNECT_TIMEOUT_S = 10.0


def _check_reachable(master: str, timeout: float) -> None:
    """Fails fast when nothing listens at a ``grpc://host:port`` TPU address.

    TensorFlow itself waits for an unreachable remote worker for minutes without a message.
    """
    host, _, port = master.removeprefix("grpc://").rpartition(":")
    if not host or not port.isdigit():
        raise StrategyError(f"--tpu={master} is not a grpc://host:port address")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise StrategyError(f"--strategy=tpu: nothing answers at {master} within {timeout:.0f} s ({e}). Check "
                            "the TPU address and that the TPU is running and reachable from this machine.") from None


def _tpu_strategy(tpu_address: str) -> tf.distribute.TPUStrategy:
    """Resolves, connects to and initializes a TPU system; any failure becomes a ``StrategyError``."""
    shown = f"--tpu={tpu_address}" if tpu_address else "no --tpu (the TPU_NAME variable or the default TPU)"
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address or None)
        master = resolver.master()
        if master.startswith("grpc://"):
            _check_reachable(master, TPU_CONNECT_TIMEOUT_S)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    except StrategyError:
        raise
    except Exception as e:  # noqa: BLE001 - the resolver raises ValueError, OSError, HTTP and TF errors alike
        reason = " ".join(str(e).split()).rstrip(".")
        reason = reason if len(reason) <= 200 else reason[:200] + " ..."
        raise StrategyError(
            f"--strategy=tpu could not reach a TPU with {shown}: {type(e).__name__}: {reason}. Pass the TPU name "
            "(Cloud TPU Node), --tpu=local (on a TPU VM) or --tpu=grpc://host:port, check that the TPU is up, and "
            "that TensorFlow has TPU support (tensorflow-tpu on a TPU VM; tensorflow-cpu has none).") from None


def create_strategy(name: str, tpu_address: str = "") -> tf.distribute.Strategy:
    """Creates a ``tf.distribute.Strategy`` by name.

    Args:
        name: ``one_device`` (``/gpu:0`` when a GPU is visible, else ``/cpu:0``), ``mirrored`` (all local
            GPUs; without GPUs, all logical CPU devices), ``multi_worker`` (``MultiWorkerMirroredStrategy``
            from ``TF_CONFIG``; create it at program start, before any other TF op) or ``tpu``.
        tpu_address: for ``tpu``: a Cloud TPU name, ``local`` (a TPU VM) or ``grpc://host:port`` (empty:
            ``TPU_NAME`` or the resolver's default). A ``grpc://`` address (given or resolved) is probed with
            a TCP connection first (``TPU_CONNECT_TIMEOUT_S``): TensorFlow would wait minutes on a dead one.

    Raises:
        StrategyError: unknown name, missing or invalid ``TF_CONFIG``, a multi-worker port that cannot be
            bound (its message quotes TensorFlow's "Could not start gRPC server"), or no TPU reachable (the message
            carries the first 200 characters of the underlying error).
    """
    if name == "one_device":
        device = "/gpu:0" if tf.config.list_logical_devices("GPU") else "/cpu:0"
        return tf.distribute.OneDeviceStrategy(device)
    if name == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        devices = devices or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        return _multi_worker_strategy()
    if name == "tpu":
        return _tpu_strategy(tpu_address)
    raise StrategyError(f"unknown strategy '{name}'; choose one of: {', '.join(STRATEGIES)}")
