"""mrcnn_tf2.precision: a bfloat16 inference model, what stays float32 in it, and checkpoints across precisions.

A random-weight ``shapes`` model is built once in float32 and once in bfloat16; the tests look at the
layers' dtype policies, at the variables, at a clip window that bfloat16 cannot represent, and at
checkpoints written by one and restored into the other.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from mrcnn_tf2 import Detector, config
from mrcnn_tf2.checkpoints import CheckpointKeeper
from mrcnn_tf2.precision import build_inference_model, inference_policy, model_precision, policy_name
from mrcnn_tf2.run_dir import restore_model, write_config

# 101.3 px has more significant bits than bfloat16's 8: it would round to 101.5.
CLIP = 101.3


@pytest.fixture(scope="module")
def cfg():
    return config.preset("shapes", overrides={"model.detection.score_threshold": 0.0,
                                              "data.category_ids": [1, 2, 3],
                                              "data.category_names": ["square", "circle", "triangle"]})


@pytest.fixture(scope="module")
def models(cfg):
    """(float32 model with perturbed weights, bfloat16 model holding the same weights)."""
    keras.utils.set_random_seed(0)
    full = build_inference_model(cfg, "float32")
    rng = np.random.default_rng(1)
    for v in full.weights:  # away from the initial values, so that a restore is visible
        v.assign(v.numpy() + rng.normal(0, 0.01, v.shape).astype(np.float32))
    low = build_inference_model(cfg, "bfloat16")
    for target, source in zip(low.weights, full.weights):
        assert target.path == source.path
        target.assign(source)
    return full, low


def test_policy_names_and_refusals():
    assert policy_name("float32") == "float32"
    assert policy_name("bfloat16") == "mixed_bfloat16"
    with pytest.raises(ValueError, match="float16"):
        policy_name("float16")


def test_inference_policy_restores_the_previous_policy_even_on_errors():
    assert keras.mixed_precision.global_policy().name == "float32"
    with pytest.raises(RuntimeError):
        with inference_policy("bfloat16"):
            assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
            raise RuntimeError("inside")
    assert keras.mixed_precision.global_policy().name == "float32"


def test_bfloat16_model_computes_in_bfloat16_on_float32_variables(models):
    full, low = models
    assert keras.mixed_precision.global_policy().name == "float32"  # build_inference_model restored it
    assert model_precision(low) == "bfloat16" and model_precision(full) == "float32"
    assert {v.dtype for v in low.weights} == {"float32"}
    for layer in (low.backbone, low.fpn, low.rpn_head, low.box_head, low.mask_head):
        assert layer.dtype_policy.compute_dtype == "bfloat16", layer.name
    # Box decoding, top-k, NMS and the detection scores; and the model's own inputs (image_info).
    for layer in (low, low.proposals_test, low.proposals_train, low.roi_sampler, low.detection_generator):
        assert layer.dtype_policy.name == "float32", layer.name


def test_outputs_keep_their_dtypes_and_image_info_is_not_rounded(models):
    full, low = models
    images = tf.random.stateless_uniform([2, 128, 128, 3], [1, 2], -1.0, 1.0)
    info = tf.constant([[[128.0, 128.0], [CLIP, CLIP], [1.0, 1.0], [0.0, 0.0]]] * 2)
    for model in (full, low):
        outputs = model(images, info)
        assert {k: v.dtype for k, v in outputs.items()} == {
            "detection_boxes": tf.float32, "detection_scores": tf.float32, "detection_masks": tf.float32,
            "detection_classes": tf.int32, "num_detections": tf.int32}
        boxes = outputs["detection_boxes"].numpy()
        # Boxes reach the clip window of image_info row 1 and stop at 101.3, not at bfloat16's 101.5.
        assert CLIP - 0.5 < boxes.max() <= CLIP + 1e-4, (model_precision(model), boxes.max())


@pytest.mark.parametrize("written, read", [("float32", "bfloat16"), ("bfloat16", "float32")])
def test_checkpoints_restore_across_precisions(cfg, models, tmp_path, written, read):
    source = dict(zip(("float32", "bfloat16"), models))[written]
    CheckpointKeeper(str(tmp_path), source).save(1)
    target = build_inference_model(cfg, read)
    restore_model(target, tf.train.latest_checkpoint(os.path.join(tmp_path, "checkpoints")))
    assert model_precision(target) == read
    for a, b in zip(target.weights, source.weights):
        assert a.path == b.path
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_detector_from_run_takes_a_precision(cfg, models, tmp_path):
    full, _ = models
    model_dir = str(tmp_path / "run")
    CheckpointKeeper(model_dir, full).save(3)
    write_config(cfg, os.path.join(model_dir, "config.json"))
    image = np.random.default_rng(0).integers(0, 255, [60, 90, 3], dtype=np.uint8)
    detector = Detector.from_run(model_dir, precision="bfloat16")
    assert detector.precision == "bfloat16" and model_precision(detector.serve.model) == "bfloat16"
    result = detector.detect(image)
    assert len(result) > 0 and result.boxes.dtype == np.float32 and result.masks.shape[1:] == (60, 90)
    assert Detector.from_run(model_dir).precision == "float32"  # eval.precision of config.json
    with pytest.raises(ValueError, match="float32, bfloat16"):
        Detector.from_run(model_dir, precision="float16")


def test_second_stage_on_the_same_rois_agrees_with_float32(models):
    """Box and mask head outputs of the two models for the same ROIs.

    Whole detections of random weights cannot be compared box by box: their scores are near-ties (all
    within ~0.01), so a rounding difference reorders them and NMS keeps other boxes. The same ROIs remove
    the ranking; what is left is the rounding itself. Tolerance 0.01 on probabilities: bfloat16 keeps 8
    significant bits (relative rounding 2^-9 = 0.2%) and the heads round each activation a few times;
    measured here: 6e-4 (class), 1e-4 (mask). On a trained checkpoint the detections agree too (README,
    "bfloat16 on CPUs": IoU-matched boxes, score differences up to 0.05).
    """
    full, low = models
    rng = np.random.default_rng(3)
    images = tf.random.stateless_uniform([2, 128, 128, 3], [3, 4], -1.0, 1.0)
    corners = rng.uniform(0, 96, [2, 16, 2])
    rois = tf.constant(np.concatenate([corners, np.minimum(corners + rng.uniform(8, 64, [2, 16, 2]), 128)], -1),
                       tf.float32)
    classes = tf.constant(rng.integers(1, 4, [2, 16]), tf.int32)

    def second_stage(model):
        features = model._features(images, training=False)
        logits, deltas = model.box_head(model._roi_align(features, rois, model.box_pool_size))
        masks = tf.sigmoid(model.mask_head(model._roi_align(features, rois, model.mask_pool_size), classes))
        return tf.nn.softmax(logits).numpy(), deltas.numpy(), masks.numpy()

    (p_full, d_full, m_full), (p_low, d_low, m_low) = second_stage(full), second_stage(low)
    np.testing.assert_allclose(p_low, p_full, atol=0.01, rtol=0)
    np.testing.assert_allclose(d_low, d_full, atol=0.01, rtol=0)  # weighted deltas: 0.01 ~ 1% of a box side
    np.testing.assert_allclose(m_low, m_full, atol=0.01, rtol=0)
    assert not np.array_equal(p_low, p_full)  # really two precisions
