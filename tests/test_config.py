"""Config: presets, overrides, files, validation messages, and no TensorFlow import."""

import json
import subprocess
import sys

import pytest

from mrcnn_tf2 import config


def test_presets_have_the_documented_defaults():
    coco = config.preset("coco_r50_fpn")
    m = coco.model
    assert (m.backbone, m.image_size, m.min_level, m.max_level) == ("resnet50", 1024, 2, 6)
    assert m.anchor_sizes == (32.0, 64.0, 128.0, 256.0, 512.0) and m.aspect_ratios == (0.5, 1.0, 2.0)
    assert (m.rpn.anchors_per_image, m.rpn.post_nms_topk_train, m.rpn.post_nms_topk_test) == (256, 2000, 1000)
    assert (m.rpn.nms_iou_threshold, m.detection.nms_iou_threshold) == (0.7, 0.5)
    assert (m.roi.rois_per_image, m.roi.positive_fraction, m.roi.box_pool_size, m.roi.mask_pool_size,
            m.roi.mask_size, m.detection.max_detections) == (512, 0.25, 7, 14, 28, 100)
    assert m.norm == "frozen_bn" and m.pixel_normalization == "caffe"
    assert config.preset("coco_r101_fpn").model.backbone == "resnet101"
    shapes = config.preset("shapes")
    assert (shapes.model.image_size, shapes.model.backbone, shapes.model.norm) == (128, "mobilenetv3", "bn")


@pytest.mark.parametrize("size, lower, upper", [(1000, 960, 1024), (100, 64, 128), (30, 64, 128)])
def test_image_size_must_be_multiple_of_two_to_the_max_level(size, lower, upper):
    with pytest.raises(config.ConfigError) as err:
        config.preset("coco_r50_fpn", overrides={"model.image_size": size})
    message = str(err.value)
    assert "model.image_size" in message and "64" in message
    assert f"{lower} and {upper}" in message
    assert isinstance(err.value, ValueError)


def test_overrides_dotted_keys_lists_and_strings():
    cfg = config.preset("coco_r50_fpn", overrides=["model.image_size=512", "train.decay_fractions=0.5,0.8",
                                                   "model.rpn.nms_iou_threshold=0.6", "data.augment.enabled=false"])
    assert cfg.model.image_size == 512 and cfg.train.decay_fractions == (0.5, 0.8)
    assert cfg.model.rpn.nms_iou_threshold == 0.6 and cfg.data.augment.enabled is False
    assert config.preset("shapes", {"model.aspect_ratios": [1.0]}).model.aspect_ratios == (1.0,)


@pytest.mark.parametrize("overrides, needle", [
    ({"model.imagesize": 512}, "unknown config key 'model.imagesize'"),
    ({"model.backbone": "vgg"}, "model.backbone"),
    ({"train.batch_size": "two"}, "train.batch_size"),
    ({"model.anchor_sizes": [32, 64]}, "model.anchor_sizes"),
    ({"model.roi.mask_size": 20}, "model.roi.mask_size"),
    ({"model.rpn.bg_iou_threshold": 0.9}, "model.rpn"),
])
def test_invalid_values_name_the_key(overrides, needle):
    with pytest.raises(config.ConfigError, match=needle.replace(".", r"\.")):
        config.preset("coco_r50_fpn", overrides=overrides)


def test_unknown_preset_lists_the_choices():
    with pytest.raises(config.ConfigError, match="shapes, coco_r50_fpn, coco_r101_fpn"):
        config.preset("coco_r18")


def test_load_yaml_and_json_with_base_and_round_trip(tmp_path):
    yaml_file = tmp_path / "x.yaml"
    yaml_file.write_text("base: shapes\nmodel:\n  image_size: 256\ntrain:\n  learning_rate: 0.01\n")
    cfg = config.load(str(yaml_file), overrides={"train.steps": 7})
    assert (cfg.name, cfg.model.image_size, cfg.train.learning_rate, cfg.train.steps) == ("shapes", 256, 0.01, 7)
    json_file = tmp_path / "x.json"
    json_file.write_text(json.dumps(config.to_dict(cfg)))
    assert config.load(str(json_file)) == cfg
    assert config.resolve(str(json_file)) == cfg
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(config.ConfigError, match="bad.json"):
        config.load(str(bad))
    with pytest.raises(config.ConfigError, match="does not exist"):
        config.load(str(tmp_path / "missing.yaml"))


def test_category_mapping_must_match_num_classes():
    with pytest.raises(config.ConfigError, match="model.num_classes=3"):
        config.preset("shapes", {"data.category_ids": [1, 2], "data.category_names": ["a", "b"],
                                 "model.num_classes": 4})


def test_config_module_imports_no_tensorflow():
    code = "import sys; from mrcnn_tf2 import config; config.preset('coco_r50_fpn'); print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
