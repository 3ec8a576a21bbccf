"""Tests for mrcnn_tf2.lr_schedule and mrcnn_tf2.optimizer: the schedule's values, the linear scaling rule and
weight decay."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn_tf2.config import TrainConfig
from mrcnn_tf2.lr_schedule import WarmupDecaySchedule, learning_rate_schedule, scaled_learning_rate
from mrcnn_tf2.optimizer import NO_DECAY_PATTERN, build_optimizer, no_decay_pattern

# Values below are worked out by hand from the documented formula
# lr(step) = base * warmup(step) * decay(step), warmup(step) = factor + (1 - factor) * min(step / warmup, 1),
# so no line of the implementation is repeated here.
STEP_CASES = [  # base 0.04, 1000 steps, 100 warm-up from factor 0.01, x0.1 at steps 500 and 800
    (0, 0.04 * 0.01), (1, 0.04 * 0.0199), (50, 0.04 * 0.505), (99, 0.04 * 0.9901), (100, 0.04), (101, 0.04),
    (499, 0.04), (500, 0.004), (650, 0.004), (799, 0.004), (800, 0.0004), (999, 0.0004), (1000, 0.0004),
    (1200, 0.0004)]
COSINE_CASES = [  # base 0.04, 1000 steps, 100 warm-up from 0.01; the cosine spans steps 100..1000 (900 steps)
    (0, 0.04 * 0.01), (50, 0.04 * 0.505), (100, 0.04), (325, 0.04 * (1 + 0.5**0.5) / 2), (550, 0.02),
    (775, 0.04 * (1 - 0.5**0.5) / 2), (1000, 0.0), (1200, 0.0)]


@pytest.mark.parametrize("schedule, cases", [("step", STEP_CASES), ("cosine", COSINE_CASES)])
def test_schedule_hand_computed_values(schedule, cases):
    sched = learning_rate_schedule(0.04, 1000, 100, 0.01, schedule, (0.5, 0.8), 0.1)
    for step, want in cases:
        got = float(sched(tf.constant(step, tf.int64)))
        assert got == pytest.approx(want, rel=1e-5, abs=1e-9), (schedule, step)


def test_schedule_hand_values():
    sched = learning_rate_schedule(0.1, 100, 10, 0.0, "step", (0.5,), 0.1)
    assert float(sched(0)) == pytest.approx(0.0)
    assert float(sched(5)) == pytest.approx(0.05)
    assert float(sched(10)) == pytest.approx(0.1)
    assert float(sched(49)) == pytest.approx(0.1)
    assert float(sched(50)) == pytest.approx(0.01)
    cos = learning_rate_schedule(0.1, 110, 10, 1.0, "cosine", (), 0.1)
    assert float(cos(10)) == pytest.approx(0.1)
    assert float(cos(60)) == pytest.approx(0.05)
    assert float(cos(110)) == pytest.approx(0.0, abs=1e-9)
    flat = learning_rate_schedule(0.3, 100, 0, 0.5, "step", (), 0.1)  # no warm-up, no boundary
    assert [float(flat(s)) for s in (0, 50, 100)] == pytest.approx([0.3, 0.3, 0.3])


def test_optimizer_uses_the_schedule_at_its_iteration_count():
    cfg = TrainConfig(learning_rate=0.02, reference_batch_size=16, momentum=0.0, weight_decay=0.0,
                      warmup_steps=4, warmup_factor=0.5, schedule="step", decay_fractions=(0.5,),
                      decay_rate=0.1, steps=8)
    opt = build_optimizer(cfg, global_batch_size=32)  # linear scaling: base LR 0.04
    var = keras.Variable(np.zeros([1], np.float32))
    moves = []
    for _ in range(6):
        before = float(var.numpy()[0])
        opt.apply_gradients([(tf.ones([1]), var)])
        moves.append(before - float(var.numpy()[0]))  # plain SGD: the move is the LR of that step
    want = [0.04 * 0.5, 0.04 * 0.625, 0.04 * 0.75, 0.04 * 0.875, 0.004, 0.004]
    np.testing.assert_allclose(moves, want, rtol=1e-5)


def test_schedule_serialization_roundtrip():
    sched = learning_rate_schedule(0.02, 500, 20, 0.001, "step", (0.6, 0.9), 0.1)
    config = keras.optimizers.schedules.serialize(sched)
    json.dumps(config)
    restored = keras.optimizers.schedules.deserialize(config)
    assert isinstance(restored, WarmupDecaySchedule)
    assert restored.get_config() == sched.get_config()
    for step in (0, 10, 300, 460):
        assert float(restored(step)) == pytest.approx(float(sched(step)))
    opt = keras.optimizers.SGD(learning_rate=sched, momentum=0.9)
    opt2 = keras.optimizers.SGD.from_config(json.loads(json.dumps(opt.get_config())))
    assert float(opt2.learning_rate) == pytest.approx(float(sched(0)))


def test_scaled_learning_rate():
    assert scaled_learning_rate(0.02, 8, 16) == pytest.approx(0.01)
    assert scaled_learning_rate(0.02, 64, 16) == pytest.approx(0.08)
    with pytest.raises(ValueError):
        scaled_learning_rate(0.02, 0, 16)


def _norm_model():
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Conv2D(4, 1, use_bias=False, name="conv_nobias")(x)
    x = keras.layers.GroupNormalization(groups=2, name="gn")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(2, name="dense")(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    for v in model.variables:  # non-zero everywhere, so that a decayed zero cannot look untouched
        v.assign(rng.uniform(0.5, 1.5, v.shape).astype("float32"))
    return model


def test_weight_decay_skips_norm_and_bias():
    cfg = TrainConfig(learning_rate=0.1, reference_batch_size=4, momentum=0.9, weight_decay=0.01,
                      warmup_steps=10, warmup_factor=0.5, schedule="step", steps=100)
    model = _norm_model()
    opt = build_optimizer(cfg, global_batch_size=8)
    assert isinstance(opt, keras.optimizers.SGD) and opt.momentum == pytest.approx(0.9)
    assert opt.clipnorm is None and opt.global_clipnorm is None and opt.clipvalue is None
    before = {v.path: v.numpy().copy() for v in model.trainable_variables}
    opt.apply_gradients([(tf.zeros_like(v), v) for v in model.trainable_variables])
    lr0 = 0.1 * 8 / 4 * 0.5  # scaled base LR times the warm-up factor at step 0
    decayed = {"conv/kernel", "conv_nobias/kernel", "dense/kernel"}
    untouched = {"conv/bias", "bn/gamma", "bn/beta", "gn/gamma", "gn/beta", "dense/bias"}
    assert set(before) == decayed | untouched
    for v in model.trainable_variables:
        if v.path in decayed:
            np.testing.assert_allclose(v.numpy(), before[v.path] * (1 - lr0 * 0.01), rtol=1e-6)
            assert not np.allclose(v.numpy(), before[v.path], rtol=1e-7, atol=0)
        else:
            np.testing.assert_array_equal(v.numpy(), before[v.path], err_msg=v.path)


def _decay_kinds(model: keras.Model, decay_biases: bool) -> dict[int, str]:
    """{id(variable): "decay" | "keep"} from each layer's own attributes, not from variable names: the
    kernels of convolutions and dense layers decay, biases only when ``decay_biases``; normalization
    scales/offsets never."""
    kinds = {}
    bias_kind = "decay" if decay_biases else "keep"
    for layer in model._flatten_layers(include_self=False, recursive=True):
        for attr, kind in (("kernel", "decay"), ("depthwise_kernel", "decay"), ("pointwise_kernel", "decay"),
                           ("bias", bias_kind), ("gamma", "keep"), ("beta", "keep")):
            var = getattr(layer, attr, None)
            if isinstance(var, keras.Variable):
                kinds[id(var)] = kind
    return kinds


def _check_decay_on_model(cfg) -> None:
    """Zero gradients, so only weight decay can move a weight: exactly the variables the rule names move,
    by ``w * (1 - lr * wd)`` (the first step of both decay forms), and the rest stay bit-identical."""
    from mrcnn_tf2 import build_model

    model = build_model(cfg)
    variables = model.trainable_variables
    kinds = _decay_kinds(model, cfg.train.weight_decay_biases)
    unclassified = [v.path for v in variables if id(v) not in kinds]
    assert not unclassified, f"variables of an unknown role: {unclassified[:5]}"
    assert {kinds[id(v)] for v in variables} == {"decay", "keep"}
    has_bias = any(getattr(layer, "bias", None) is not None and layer.trainable
                   for layer in model._flatten_layers(include_self=False, recursive=True))
    assert has_bias  # otherwise weight_decay_biases would have nothing to act on
    opt = build_optimizer(cfg.train, global_batch_size=cfg.train.reference_batch_size)
    lr = float(opt.learning_rate)
    assert lr == pytest.approx(cfg.train.learning_rate)
    wd = cfg.train.weight_decay
    rng = np.random.default_rng(0)
    for v in variables:  # biases and betas start at 0, which decay cannot move: make every value non-zero
        v.assign(rng.uniform(0.5, 1.5, v.shape).astype("float32"))
    before = [v.numpy().copy() for v in variables]
    opt.apply_gradients([(tf.zeros_like(v), v) for v in variables])
    for v, old in zip(variables, before):
        if kinds[id(v)] == "decay":
            np.testing.assert_allclose(v.numpy(), old * (1 - lr * wd), rtol=1e-6, atol=1e-12, err_msg=v.path)
        else:
            np.testing.assert_array_equal(v.numpy(), old, err_msg=v.path)


@pytest.mark.parametrize("decay_biases, mode", [(False, "decoupled"), (True, "coupled")])
def test_weight_decay_on_the_real_models_variables(decay_biases, mode):
    """The shapes preset's MaskRCNN, biases exempt (default) or decayed (``train.weight_decay_biases``)."""
    from mrcnn_tf2 import config

    cfg = config.apply_overrides(config.PRESETS["shapes"](), {
        "train.weight_decay": 0.05, "train.momentum": 0.9, "train.warmup_steps": 0,
        "train.weight_decay_mode": mode, "train.weight_decay_biases": decay_biases})
    _check_decay_on_model(cfg)


def test_presets_bias_decay():
    """torchvision's recipe decays every trainable parameter but frozen/normalization ones here; the COCO
    presets keep detectron2's and Model Garden's rule (biases exempt)."""
    from mrcnn_tf2 import config

    want = {"shapes": False, "coco_r50_fpn": False, "coco_r101_fpn": False, "torchvision_r50_fpn": True,
            "torchvision_r50_fpn_v2": True}
    assert {name: config.PRESETS[name]().train.weight_decay_biases for name in want} == want


@pytest.mark.slow
def test_weight_decay_on_the_torchvision_v2_model():
    """torchvision v2 (coupled decay, biases decayed; batch norm in FPN and heads stays exempt), at 128 px."""
    from mrcnn_tf2 import config

    cfg = config.apply_overrides(config.PRESETS["torchvision_r50_fpn_v2"](), {
        "model.image_size": 128, "model.min_size": 128, "model.max_size": 128, "train.warmup_steps": 0,
        "train.weight_decay": 0.05, "model.num_classes": 3})
    assert cfg.train.weight_decay_biases and cfg.train.weight_decay_mode == "coupled"
    _check_decay_on_model(cfg)


def test_no_decay_pattern_names():
    import re

    pattern = re.compile(NO_DECAY_PATTERN)
    for name in ["gamma", "beta", "bias", "dense/bias:0", "bn/gamma:0"]:
        assert pattern.search(name), name
    for name in ["kernel", "depthwise_kernel", "alphabet", "beta_kernel", "bias_kernel", "dense/kernel:0"]:
        assert not pattern.search(name), name
    assert no_decay_pattern(False) == NO_DECAY_PATTERN
    norms_only = re.compile(no_decay_pattern(True))
    for name in ["gamma", "beta", "bn/gamma:0", "gn/beta"]:
        assert norms_only.search(name), name
    for name in ["bias", "dense/bias:0", "kernel", "beta_kernel"]:
        assert not norms_only.search(name), name


def test_float16_wraps_loss_scale_optimizer():
    cfg = TrainConfig(steps=100, warmup_steps=5)
    opt = build_optimizer(cfg, 16, mixed_precision="float16")
    assert isinstance(opt, keras.optimizers.LossScaleOptimizer)
    assert isinstance(opt.inner_optimizer, keras.optimizers.SGD)
    assert isinstance(build_optimizer(cfg, 16, "bfloat16"), keras.optimizers.SGD)
    with pytest.raises(ValueError):
        build_optimizer(cfg, 16, "float8")
