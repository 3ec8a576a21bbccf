"""MaskRCNN end to end on tiny inputs: output contract, overfitting, fit, distribution, config."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn_tf2 import build_model, config
from mrcnn_tf2.model import LOSS_KEYS, MaskRCNN
from tests.helpers import np_iou, two_object_batch


def _cfg(**overrides):
    return config.preset("shapes", overrides=overrides)


def test_inference_contract_shapes_and_padding():
    cfg = _cfg()
    model = build_model(cfg)
    batch = two_object_batch(batch=2)
    out = model(tf.constant(batch["images"]), tf.constant(batch["image_info"]))
    d, m = cfg.model.detection.max_detections, cfg.model.roi.mask_size
    assert set(out) == {"detection_boxes", "detection_scores", "detection_classes", "detection_masks",
                        "num_detections"}
    assert out["detection_boxes"].shape == (2, d, 4) and out["detection_boxes"].dtype == tf.float32
    assert out["detection_scores"].shape == (2, d)
    assert out["detection_classes"].shape == (2, d) and out["detection_classes"].dtype == tf.int32
    assert out["detection_masks"].shape == (2, d, m, m)
    assert out["num_detections"].shape == (2,) and out["num_detections"].dtype == tf.int32
    for i in range(2):
        n = int(out["num_detections"][i])
        assert np.all(out["detection_scores"][i, n:].numpy() == 0)
        assert np.all(out["detection_masks"][i, n:].numpy() == 0)
        boxes = out["detection_boxes"][i, :n].numpy()
        assert np.all(boxes >= 0) and np.all(boxes <= cfg.model.image_size)
        classes = out["detection_classes"][i, :n].numpy()
        assert np.all((classes >= 1) & (classes < cfg.model.num_classes))


def _compiled(cfg, lr=0.01):
    model = build_model(cfg)
    opt = keras.optimizers.SGD(learning_rate=lr, momentum=0.9)
    model.compile(optimizer=opt, jit_compile=False)
    opt.build(model.trainable_variables)
    return model


@pytest.mark.slow
def test_overfit_one_image_finds_both_objects():
    # Moving BN statistics lag the fast-changing weights of a 40-step run; momentum 0 makes them the
    # statistics of the last batch (the same image), so inference sees what training saw.
    cfg = _cfg(**{"model.bn_momentum": 0.0})
    tf.keras.utils.set_random_seed(1)
    model = _compiled(cfg, lr=0.02)
    batch = {k: tf.constant(v) for k, v in two_object_batch(batch=2).items()}
    step = tf.function(model.train_step)
    history = []
    for _ in range(40):
        for tracker in model.metrics:
            tracker.reset_state()
        logs = step(batch)
        history.append(float(logs["loss"]))
        assert np.isfinite(history[-1])
    assert np.mean(history[-3:]) <= 0.5 * np.mean(history[:3]), history
    out = model(batch["images"][:1], batch["image_info"][:1])
    n = int(out["num_detections"][0])
    boxes = out["detection_boxes"][0, :n].numpy()
    classes = out["detection_classes"][0, :n].numpy()
    for gt_box, gt_class in zip(batch["gt_boxes"][0, :2].numpy(), (1, 2)):
        ious = [np_iou(b, gt_box) for b, c in zip(boxes, classes) if c == gt_class]
        assert ious and max(ious) > 0.5, (gt_class, boxes, classes)


def test_train_step_returns_every_loss_and_fit_runs():
    cfg = _cfg()
    model = _compiled(cfg)
    data = two_object_batch(batch=2)
    ds = tf.data.Dataset.from_tensors(data).repeat()
    history = model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)
    for key in ("loss",) + LOSS_KEYS + ("grad_norm",):
        assert key in history.history and np.isfinite(history.history[key][0]), key


def test_empty_ground_truth_trains_with_finite_losses():
    model = _compiled(_cfg())
    data = two_object_batch(batch=2)
    data["gt_classes"][:] = -1
    data["gt_boxes"][:] = 0
    data["gt_masks"][:] = 0
    logs = tf.function(model.train_step)({k: tf.constant(v) for k, v in data.items()})
    for key in ("loss",) + LOSS_KEYS:
        assert np.isfinite(float(logs[key])), key
    assert float(logs["loss_mask"]) == 0.0 and float(logs["loss_box"]) == 0.0


def test_model_config_round_trip_gives_same_outputs():
    cfg = _cfg()
    model = build_model(cfg)
    clone = MaskRCNN.from_config(model.get_config())
    batch = two_object_batch(batch=1)
    images, info = tf.constant(batch["images"]), tf.constant(batch["image_info"])
    clone(images, info)
    assert len(clone.weights) == len(model.weights)
    clone.set_weights(model.get_weights())
    a, b = model(images, info), clone(images, info)
    for key in a:
        np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), atol=1e-5)
    assert clone.get_config()["image_size"] == cfg.model.image_size


def test_checkpoint_holds_every_model_weight(tmp_path):
    model = build_model(_cfg())
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    saved = {name for name, _ in tf.train.list_variables(path) if name.startswith("model/")}
    assert len(saved) == len(model.weights)


def test_inference_with_unknown_batch_size_in_the_signature():
    cfg = _cfg()
    model = build_model(cfg)
    s = cfg.model.image_size
    fn = tf.function(lambda x, i: model(x, i), input_signature=[
        tf.TensorSpec([None, s, s, 3], tf.float32), tf.TensorSpec([None, 4, 2], tf.float32)])
    batch = two_object_batch(batch=3)
    out = fn(tf.constant(batch["images"]), tf.constant(batch["image_info"]))
    assert out["detection_boxes"].shape == (3, cfg.model.detection.max_detections, 4)


def test_mixed_bfloat16_trains_with_finite_losses_and_float32_outputs():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = _compiled(_cfg())
        batch = {k: tf.constant(v) for k, v in two_object_batch(batch=2).items()}
        step = tf.function(model.train_step)
        for _ in range(3):
            logs = step(batch)
            assert all(np.isfinite(float(v)) for v in logs.values()), logs
        assert model.backbone.layers[-1].compute_dtype == "bfloat16"
        out = model(batch["images"], batch["image_info"])
        for key in ("detection_boxes", "detection_scores", "detection_masks"):
            assert out[key].dtype == tf.float32, key
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_roi_align_pools_from_p2_to_p5_only():
    model = build_model(_cfg())
    features = {level: tf.random.normal([1, 1024 // 2**level, 1024 // 2**level, 4]) for level in range(2, 7)}
    huge = tf.constant([[[0.0, 0.0, 1000.0, 1000.0], [10.0, 10.0, 40.0, 40.0]]])  # FPN eq. 1 -> P6, P2
    from mrcnn_tf2.ops import roi_align

    expected = roi_align.multilevel_roi_align({lv: features[lv] for lv in range(2, 6)}, huge, 7)
    np.testing.assert_allclose(model._roi_align(features, huge, 7).numpy(), expected.numpy(), atol=1e-6)
    assert int(roi_align.assign_levels(huge, 2, 6)[0, 0]) == 6  # so the test would see P6 being used
