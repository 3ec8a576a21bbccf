"""The second-stage config options (torchvision presets) reach the layers through builder.py, and run."""

import numpy as np
import pytest
import tensorflow as tf

from mrcnn_tf2 import build_model, config
from mrcnn_tf2.model import LOSS_KEYS, MaskRCNN
from tests.helpers import two_object_batch

TORCHVISION_V2_HEADS = {
    "model.roi.roi_align_aligned": False, "model.roi.level_eps": 1e-6, "model.roi.box_head_convs": 2,
    "model.roi.box_head_fcs": 1, "model.roi.head_norm": "bn", "model.detection.pre_nms_topk": 0,
    "model.detection.min_box_size": 1e-2, "model.detection.paste_mode": "torchvision",
}


def test_options_reach_the_layers_and_the_model_runs_and_trains():
    cfg = config.preset("shapes", overrides=TORCHVISION_V2_HEADS)
    model = build_model(cfg)
    assert model.roi_align_aligned is False and model.roi_level_eps == 1e-6
    assert model.box_head.num_convs == 2 and model.box_head.num_fcs == 1 and model.box_head.norm == "bn"
    assert not model.box_head.conv_0.use_bias and model.mask_head.norm == "bn"
    assert model.detection_generator.pre_nms_topk == 0 and model.detection_generator.min_box_size == 1e-2
    batch = two_object_batch(batch=1)
    images, info = tf.constant(batch["images"]), tf.constant(batch["image_info"])
    out = model(images, info)
    assert out["detection_masks"].shape[1] == cfg.model.detection.max_detections
    # get_config round trip keeps the options (same outputs after copying the weights).
    clone = MaskRCNN.from_config(model.get_config())
    clone(images, info)
    clone.set_weights(model.get_weights())
    np.testing.assert_allclose(clone(images, info)["detection_scores"].numpy(), out["detection_scores"].numpy(),
                               atol=1e-6)
    # Training updates the heads' batch-norm statistics (the heads run in training mode).
    before = model.box_head.bn_0.moving_mean.numpy().copy()
    losses = model.compute_losses({k: tf.constant(v) for k, v in batch.items()}, training=True)
    assert all(np.isfinite(float(losses[k])) for k in LOSS_KEYS)
    assert not np.allclose(model.box_head.bn_0.moving_mean.numpy(), before)


@pytest.mark.parametrize("key, value, match", [
    ("model.roi.head_norm", "ln", "head_norm"),
    ("model.detection.paste_mode", "nearest", "paste_mode"),
    ("model.detection.pre_nms_topk", -1, "pre_nms_topk"),
    ("model.roi.sampling_ratio", 0, "sampling_ratio"),
])
def test_bad_values_are_refused(key, value, match):
    with pytest.raises(config.ConfigError, match=match):
        config.validate(config.preset("shapes", overrides={key: value}))
