"""The optimizer: SGD with momentum on the warm-up/decay schedule, with decoupled or coupled weight decay.

- ``build_optimizer``: the optimizer of a run from ``TrainConfig`` (LR scaled to the global batch,
  weight decay that skips the variables ``NO_DECAY_PATTERN`` names, loss scaling for float16).
- ``CoupledWeightDecaySGD``: weight decay added to the gradient before momentum, as ``torch.optim.SGD``.

Gradient clipping is not done here: the model's ``train_step`` clips after the cross-replica reduction.
"""

from __future__ import annotations

import keras

from mrcnn_tf2.config import TrainConfig
from mrcnn_tf2.lr_schedule import absolute_decay_steps, learning_rate_schedule, scaled_learning_rate

__all__ = ["build_optimizer", "CoupledWeightDecaySGD", "NO_DECAY_PATTERN", "NORM_PARAMETER_PATTERN",
           "no_decay_pattern"]


# Matched with ``re.search`` against each variable's ``name`` by Keras' ``exclude_from_weight_decay``.
# Keras 3 variable names are the last path component (``gamma``, ``beta``, ``bias``, ``kernel``); a raw
# ``tf.Variable`` name looks like ``dense/bias:0``. Batch norm, group norm and layer norm all name their
# scale and offset ``gamma`` and ``beta``.
NO_DECAY_PATTERN = r"(?:^|/)(?:gamma|beta|bias)(?::\d+)?$"
NORM_PARAMETER_PATTERN = r"(?:^|/)(?:gamma|beta)(?::\d+)?$"


def no_decay_pattern(decay_biases: bool) -> str:
    """The variable-name pattern exempt from weight decay: normalization ``gamma``/``beta`` always, and
    every ``bias`` unless ``decay_biases`` (``train.weight_decay_biases``)."""
    return NORM_PARAMETER_PATTERN if decay_biases else NO_DECAY_PATTERN


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
    decay skips normalization ``gamma``/``beta``, and every ``bias`` unless ``train_cfg.weight_decay_biases``
    (``no_decay_pattern``), and takes one of two forms (``train_cfg.weight_decay_mode``):

    - ``decoupled``: Keras' ``w -= lr * weight_decay * w`` each step. Unlike an L2 term in the loss it is
      not amplified by momentum (about ``1 / (1 - momentum)`` weaker than L2 with the same coefficient).
    - ``coupled``: ``weight_decay * w`` is added to the gradient before momentum, as ``torch.optim.SGD``
      does (torchvision's and detectron2's recipes): the gradient of ``weight_decay / 2 * |w|^2``.

    No gradient clipping here.

    Args:
        train_cfg: ``TrainConfig``; reads learning_rate, reference_batch_size, momentum, weight_decay,
            weight_decay_mode, weight_decay_biases, warmup_steps, warmup_factor, schedule, decay_fractions,
            decay_rate, decay_steps and steps (absolute ``decay_steps`` win over fractions of ``steps``; see
            ``absolute_decay_steps``).
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
    optimizer.exclude_from_weight_decay(var_names=[no_decay_pattern(train_cfg.weight_decay_biases)])
    if mixed_precision == "float16":
        return keras.optimizers.LossScaleOptimizer(optimizer)
    if mixed_precision not in ("", "bfloat16"):
        raise ValueError(f"mixed_precision='{mixed_precision}' must be '', 'float16' or 'bfloat16'")
    return optimizer
