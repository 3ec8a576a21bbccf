"""Training utilities: LR schedule, optimizer, distribution strategies, checkpoints and TensorBoard.

This module owns everything the training loop needs around the model, and no model code:

- ``WarmupDecaySchedule`` / ``learning_rate_schedule``: linear warm-up, then step decay or cosine;
  ``absolute_decay_steps`` turns ``train.decay_fractions`` into the absolute steps a run keeps.
- ``scaled_learning_rate`` and ``build_optimizer``: SGD with momentum, the linear scaling rule and
  weight decay (decoupled, or coupled as in torch.optim.SGD) that skips normalization parameters and biases.
- ``create_strategy``: one_device, mirrored, multi_worker (``TF_CONFIG``) and tpu.
- ``CheckpointKeeper``: ``tf.train.CheckpointManager`` checkpoints ``<model_dir>/checkpoints/ckpt-<step>``
  that refuse to save non-finite weights.
- ``TensorBoardLogger``: scalar and image summaries under ``<model_dir>/train`` and ``<model_dir>/eval``.

Gradient clipping is not done here: the model's ``train_step`` clips after the cross-replica reduction.
"""

from __future__ import annotations

import json
import math
import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from mrcnn_tf2.config import STRATEGIES, TrainConfig

__all__ = [
    "WarmupDecaySchedule",
    "learning_rate_schedule",
    "absolute_decay_steps",
    "scaled_learning_rate",
    "build_optimizer",
    "CoupledWeightDecaySGD",
    "NO_DECAY_PATTERN",
    "StrategyError",
    "STRATEGIES",
    "create_strategy",
    "TPU_CONNECT_TIMEOUT_S",
    "NonFiniteWeightsError",
    "CheckpointKeeper",
    "TensorBoardLogger",
]


# Matched with ``re.search`` against each variable's ``name`` by Keras' ``exclude_from_weight_decay``.
# Keras 3 variable names are the last path component (``gamma``, ``beta``, ``bias``, ``kernel``); a raw
# ``tf.Variable`` name looks like ``dense/bias:0``. Batch norm, group norm and layer norm all name their
# scale and offset ``gamma`` and ``beta``.
NO_DECAY_PATTERN = r"(?:^|/)(?:gamma|beta|bias)(?::\d+)?$"


# --------------------------------------------------------------------------------------------
# Learning rate


@keras.saving.register_keras_serializable(package="mrcnn_tf2")
class WarmupDecaySchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, then step decay or cosine decay to 0.

    ``lr(step) = base_lr * warmup(step) * decay(step)`` where ``warmup`` rises linearly from
    ``warmup_factor`` at step 0 to 1 at ``warmup_steps`` (and stays 1 after), and ``decay`` is
    ``decay_rate ** (number of boundaries <= step)`` for ``"step"``, or ``0.5 * (1 + cos(pi * t))`` with
    ``t = (step - warmup_steps) / (end - warmup_steps)`` clipped to [0, 1] for ``"cosine"`` (so the cosine
    starts at ``base_lr`` when warm-up ends, reaches 0 at ``end`` and stays 0). ``step`` is the
    optimizer's 0-based iteration count.

    The boundaries (step) or ``end`` (cosine) are ``decay_steps`` when given: absolute steps, which a
    resumed run keeps whatever its ``total_steps``, so the LR never jumps back up. Without them they
    follow ``total_steps``: ``int(f * total_steps)`` for each of ``decay_fractions``, or ``total_steps``.
    """

    def __init__(self, base_lr: float, total_steps: int, warmup_steps: int = 0, warmup_factor: float = 0.001,
                 schedule: str = "step", decay_fractions: Sequence[float] = (), decay_rate: float = 0.1,
                 decay_steps: Sequence[int] = ()):
        if schedule not in ("step", "cosine"):
            raise ValueError(f"schedule='{schedule}' must be 'step' or 'cosine'")
        if base_lr <= 0 or total_steps < 0 or warmup_steps < 0:
            raise ValueError(f"need base_lr > 0, total_steps >= 0, warmup_steps >= 0; got {base_lr}, "
                             f"{total_steps}, {warmup_steps}")
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)
        self.schedule = schedule
        self.decay_fractions = tuple(float(f) for f in decay_fractions)
        self.decay_rate = float(decay_rate)
        self.decay_steps = tuple(int(b) for b in decay_steps)
        if schedule == "cosine" and len(self.decay_steps) > 1:
            raise ValueError(f"the cosine schedule takes one decay step (its end), got {list(self.decay_steps)}")

    @property
    def boundaries(self) -> tuple[int, ...]:
        """Steps at which the step schedule multiplies the LR by ``decay_rate``."""
        if self.decay_steps:
            return tuple(sorted(self.decay_steps))
        return tuple(sorted(int(f * self.total_steps) for f in self.decay_fractions))

    @property
    def end(self) -> int:
        """The step at which the cosine schedule reaches 0."""
        return self.decay_steps[0] if self.decay_steps else self.total_steps

    def __call__(self, step: Any) -> tf.Tensor:
        step = tf.cast(tf.convert_to_tensor(step), tf.float32)
        if self.warmup_steps > 0:
            alpha = tf.minimum(step / float(self.warmup_steps), 1.0)
            warmup = self.warmup_factor + (1.0 - self.warmup_factor) * alpha
        else:
            warmup = tf.constant(1.0)
        if self.schedule == "step":
            passed = tf.zeros([], tf.float32)
            for boundary in self.boundaries:
                passed += tf.cast(step >= float(boundary), tf.float32)
            decay = tf.pow(self.decay_rate, passed)
        else:
            span = float(max(self.end - self.warmup_steps, 1))
            t = tf.clip_by_value((step - float(self.warmup_steps)) / span, 0.0, 1.0)
            decay = 0.5 * (1.0 + tf.cos(math.pi * t))
        return self.base_lr * warmup * decay

    def get_config(self) -> dict[str, Any]:
        return {
            "base_lr": self.base_lr,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "warmup_factor": self.warmup_factor,
            "schedule": self.schedule,
            "decay_fractions": list(self.decay_fractions),
            "decay_rate": self.decay_rate,
            "decay_steps": list(self.decay_steps),
        }


def learning_rate_schedule(base_lr: float, total_steps: int, warmup_steps: int, warmup_factor: float,
                           schedule: str, decay_fractions: Sequence[float], decay_rate: float,
                           decay_steps: Sequence[int] = ()) -> keras.optimizers.schedules.LearningRateSchedule:
    """A serializable ``WarmupDecaySchedule``; see its docstring for the formula."""
    return WarmupDecaySchedule(base_lr, total_steps, warmup_steps, warmup_factor, schedule,
                               decay_fractions, decay_rate, decay_steps)


def absolute_decay_steps(train_cfg: TrainConfig) -> tuple[int, ...]:
    """The absolute decay steps of a run: ``train.decay_steps`` when set, else resolved from ``train.steps``.

    step schedule: ``sorted(int(f * steps) for f in decay_fractions)``; cosine: ``(steps,)``, where the
    cosine reaches 0. The CLI stores the result in ``config.json`` when a run starts, so a resume with a
    larger ``--steps`` keeps it.
    """
    if train_cfg.decay_steps:
        return tuple(int(b) for b in train_cfg.decay_steps)
    if train_cfg.schedule == "cosine":
        return (int(train_cfg.steps),) if train_cfg.steps > 0 else ()
    return tuple(sorted(int(f * train_cfg.steps) for f in train_cfg.decay_fractions))


def scaled_learning_rate(base_lr: float, global_batch_size: int, reference_batch_size: int) -> float:
    """Linear scaling rule: ``base_lr * global_batch_size / reference_batch_size``."""
    if global_batch_size <= 0 or reference_batch_size <= 0:
        raise ValueError(f"batch sizes must be positive, got global={global_batch_size}, "
                         f"reference={reference_batch_size}")
    return float(base_lr) * global_batch_size / reference_batch_size


class CoupledWeightDecaySGD(keras.optimizers.SGD):
    """SGD whose weight decay is coupled: ``g += weight_decay * w`` before momentum (``torch.optim.SGD``).

    With momentum ``m`` and learning rate ``lr`` the update is ``v = m * v + (g + wd * w)``,
    ``w -= lr * v`` (Keras keeps ``-lr * v`` instead of ``v``: the same with a constant ``lr``, and the
    form Keras' SGD uses for the gradient anyway). Variables that ``exclude_from_weight_decay`` names
    get no decay, as in the decoupled form. Checkpoints hold the same variables as ``keras.optimizers.SGD``.
    """

    def _apply_weight_decay(self, variables):
        return  # the decay goes into the gradient in update_step

    def update_step(self, gradient, variable, learning_rate):
        if self.weight_decay is not None and self._use_weight_decay(variable):
            decay = keras.ops.cast(self.weight_decay, variable.dtype)
            gradient = keras.ops.cast(gradient, variable.dtype) + decay * variable
        super().update_step(gradient, variable, learning_rate)


def build_optimizer(train_cfg: TrainConfig, global_batch_size: int,
                    mixed_precision: str = "") -> keras.optimizers.Optimizer:
    """SGD with momentum, the warm-up/decay schedule and weight decay (decoupled or coupled).

    The LR is ``train_cfg.learning_rate`` scaled by ``global_batch_size / reference_batch_size``. Weight
    decay skips variables whose name matches ``NO_DECAY_PATTERN`` (normalization ``gamma``/``beta`` and
    every ``bias``) and takes one of two forms (``train_cfg.weight_decay_mode``):

    - ``decoupled``: Keras' ``w -= lr * weight_decay * w`` each step. Unlike an L2 term in the loss it is
      not amplified by momentum (about ``1 / (1 - momentum)`` weaker than L2 with the same coefficient).
    - ``coupled``: ``weight_decay * w`` is added to the gradient before momentum, as ``torch.optim.SGD``
      does (torchvision's and detectron2's recipes): the gradient of ``weight_decay / 2 * |w|^2``.

    No gradient clipping here.

    Args:
        train_cfg: ``TrainConfig``; reads learning_rate, reference_batch_size, momentum, weight_decay,
            weight_decay_mode, warmup_steps, warmup_factor, schedule, decay_fractions, decay_rate, decay_steps
            and steps (absolute ``decay_steps`` win over fractions of ``steps``; see ``absolute_decay_steps``).
        global_batch_size: images per step over all replicas.
        mixed_precision: ``"float16"`` wraps the optimizer in ``keras.optimizers.LossScaleOptimizer``;
            ``""`` and ``"bfloat16"`` need no loss scaling.

    Returns:
        An unbuilt ``keras.optimizers.SGD`` or ``CoupledWeightDecaySGD`` (or a ``LossScaleOptimizer``
        around one).
    """
    lr = scaled_learning_rate(train_cfg.learning_rate, global_batch_size, train_cfg.reference_batch_size)
    schedule = learning_rate_schedule(lr, train_cfg.steps, train_cfg.warmup_steps, train_cfg.warmup_factor,
                                      train_cfg.schedule, train_cfg.decay_fractions, train_cfg.decay_rate,
                                      absolute_decay_steps(train_cfg))
    mode = getattr(train_cfg, "weight_decay_mode", "decoupled")
    if mode not in ("decoupled", "coupled"):
        raise ValueError(f"train.weight_decay_mode='{mode}' must be 'decoupled' or 'coupled'")
    sgd = CoupledWeightDecaySGD if mode == "coupled" else keras.optimizers.SGD
    optimizer = sgd(learning_rate=schedule, momentum=train_cfg.momentum,
                    weight_decay=train_cfg.weight_decay or None)
    optimizer.exclude_from_weight_decay(var_names=[NO_DECAY_PATTERN])
    if mixed_precision == "float16":
        return keras.optimizers.LossScaleOptimizer(optimizer)
    if mixed_precision not in ("", "bfloat16"):
        raise ValueError(f"mixed_precision='{mixed_precision}' must be '', 'float16' or 'bfloat16'")
    return optimizer


# --------------------------------------------------------------------------------------------
# Distribution strategies


class StrategyError(ValueError):
    """A strategy that cannot be created; the message says what to fix."""


def _check_tf_config() -> None:
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
        StrategyError: unknown name, missing or invalid ``TF_CONFIG``, or no TPU reachable (the message
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
        _check_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        return _tpu_strategy(tpu_address)
    raise StrategyError(f"unknown strategy '{name}'; choose one of: {', '.join(STRATEGIES)}")


# --------------------------------------------------------------------------------------------
# Checkpoints


class NonFiniteWeightsError(RuntimeError):
    """Raised instead of writing a checkpoint whose variables hold NaN or Inf."""


def _variable_label(variable: Any) -> str:
    return str(getattr(variable, "path", None) or variable.name)


class CheckpointKeeper:
    """Numbered checkpoints of model, optimizer, global step and epoch under ``<model_dir>/checkpoints``.

    Files are ``ckpt-<step>.index`` / ``ckpt-<step>.data-*`` plus the ``checkpoint`` state file, the
    last ``max_to_keep`` are kept. Writes are atomic in the sense that matters for resuming: TF writes
    the data into temporary files, renames them, then writes the ``.index`` and only then rewrites the
    ``checkpoint`` state file (itself atomically, through a temporary file and a rename). A kill in the
    middle of ``save`` therefore leaves at worst stray temporary files and a checkpoint that no state
    file points to; ``latest_path``/``restore_latest`` still return the previous whole checkpoint.

    Create it (and build the model and optimizer, e.g. ``optimizer.build(model.trainable_variables)``)
    under the training strategy's scope before restoring, so every value has a variable to land in.

    Attributes:
        step: ``tf.Variable`` int64 scalar, the global step of the last save/restore.
        epoch: ``tf.Variable`` int64 scalar, the epoch counter.
        directory: ``<model_dir>/checkpoints``.
    """

    def __init__(self, model_dir: str, model: keras.Model,
                 optimizer: keras.optimizers.Optimizer | None = None, max_to_keep: int = 5):
        self.directory = os.path.join(model_dir, "checkpoints")
        self.model = model
        self.optimizer = optimizer
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        objects: dict[str, Any] = {"model": model, "step": self.step, "epoch": self.epoch}
        if optimizer is not None:
            objects["optimizer"] = optimizer
        self.checkpoint = tf.train.Checkpoint(**objects)
        self.manager = tf.train.CheckpointManager(self.checkpoint, directory=self.directory,
                                                  max_to_keep=max_to_keep, checkpoint_name="ckpt")

    def non_finite_variables(self) -> list[str]:
        """Names (paths) of the floating-point model and optimizer variables that hold NaN or Inf."""
        variables = list(self.model.variables)
        if self.optimizer is not None:
            variables += list(self.optimizer.variables)
        bad = []
        for v in variables:
            if not tf.as_dtype(v.dtype).is_floating:
                continue
            if not bool(tf.reduce_all(tf.math.is_finite(tf.convert_to_tensor(v)))):
                bad.append(_variable_label(v))
        return bad

    def save(self, step: int, epoch: int | None = None) -> str:
        """Writes ``ckpt-<step>`` and returns its path.

        Saving the step of the newest checkpoint again with the same epoch (a step checkpoint that
        coincides with the end of an epoch) returns that checkpoint without rewriting it.

        Args:
            step: the global step; the checkpoint number and the value stored in ``self.step``.
            epoch: stored in ``self.epoch`` when given.

        Raises:
            NonFiniteWeightsError: some variable is NaN/Inf; nothing is written.
        """
        step = int(step)
        latest = self.latest_path()
        same_epoch = epoch is None or int(epoch) == int(self.epoch.numpy())
        if latest is not None and latest.endswith(f"ckpt-{step}") and same_epoch:
            return latest
        bad = self.non_finite_variables()
        if bad:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise NonFiniteWeightsError(f"refusing to checkpoint step {step}: non-finite values in {shown}; "
                                        f"the last good checkpoint is {latest or 'none'}")
        self.step.assign(step)
        if epoch is not None:
            self.epoch.assign(int(epoch))
        return self.manager.save(checkpoint_number=step)

    def latest_path(self) -> str | None:
        """The newest checkpoint prefix (``.../checkpoints/ckpt-<step>``), or None."""
        return self.manager.latest_checkpoint

    @property
    def checkpoints(self) -> list[str]:
        """The kept checkpoint prefixes, oldest first."""
        return list(self.manager.checkpoints)

    def restore(self, path: str, strict: bool = True) -> str:
        """Restores a checkpoint prefix, or the newest checkpoint in a directory; returns the prefix.

        Args:
            path: ``.../ckpt-<step>`` or a directory holding a ``checkpoint`` state file.
            strict: require every existing model/optimizer variable to be found in the checkpoint
                (resume); False ignores unmatched values on both sides.

        Raises:
            FileNotFoundError: no checkpoint at ``path``.
        """
        prefix = tf.train.latest_checkpoint(path) if os.path.isdir(path) else path
        if not prefix or not tf.io.gfile.exists(prefix + ".index"):
            raise FileNotFoundError(f"no checkpoint found at '{path}'")
        status = self.checkpoint.restore(prefix)
        if strict:
            status.assert_existing_objects_matched()
        else:
            status.expect_partial()
        return prefix

    def restore_latest(self, strict: bool = True) -> str | None:
        """Restores the newest checkpoint of this keeper's directory; returns its prefix, or None."""
        latest = self.latest_path()
        if latest is None:
            return None
        return self.restore(latest, strict=strict)


# --------------------------------------------------------------------------------------------
# TensorBoard


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
