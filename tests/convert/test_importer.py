"""The torchvision importer: ``python -m mrcnn_tf2.convert torchvision ...`` -> a run directory every mode accepts.

A random-init torchvision model's state dict, saved with ``torch.save`` here, is converted; the run
directory then goes through ``--mode=eval|predict|export --model=last`` and fine-tuning on the shapes
dataset with ``--model=DIR/checkpoints/ckpt-0`` (4 classes: the class layers are re-initialized). The
converted values are checked against the file (layout changes included). Files that are not such a state
dict, or of the other variant, or with legacy key names, are refused or accepted as torchvision would.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.cli.common import tiny_args
from tests.torch_import import import_torch

torch, _ = import_torch()

# Small inference sizes so that eval/predict/export of a ResNet-50 stay cheap on a CPU; the training
# canvas (fine-tuning) is the shapes dataset's 128 px.
SMALL = ["model.min_size=128", "model.max_size=160", "model.image_size=128"]


def _state_dict(variant: str) -> dict:
    from torchvision.models.detection import maskrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2

    torch.manual_seed(0)
    build = maskrcnn_resnet50_fpn if variant == "v1" else maskrcnn_resnet50_fpn_v2
    return build(weights=None, weights_backbone=None, num_classes=91).state_dict()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("pth")
    paths = {}
    for variant in ("v1", "v2"):
        paths[variant] = str(root / f"{variant}.pth")
        torch.save(_state_dict(variant), paths[variant])
    return paths


@pytest.fixture(scope="module")
def run_v1(files, tmp_path_factory):
    from mrcnn_tf2.convert.__main__ import convert

    model_dir = str(tmp_path_factory.mktemp("converted") / "run")
    prefix = convert(files["v1"], "v1", model_dir, SMALL)
    return model_dir, prefix


def _convert_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mrcnn_tf2.convert", "torchvision", *args],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


def test_run_dir_layout_and_values(run_v1, files):
    from mrcnn_tf2.cli.common import find_checkpoint, read_config

    model_dir, prefix = run_v1
    assert prefix.endswith("ckpt-0") and find_checkpoint(os.path.join(model_dir, "checkpoints")) == prefix
    cfg = read_config(os.path.join(model_dir, "config.json"))
    assert cfg.name == "torchvision_r50_fpn" and cfg.model.num_classes == 91
    assert cfg.data.category_ids == tuple(range(1, 91))
    assert cfg.data.category_names[0] == "person" and cfg.data.category_names[11] == "N/A"  # id 12 is unused
    assert cfg.model.min_size == 128 and cfg.train.weight_decay_mode == "coupled"

    # The checkpoint holds the file's values in our layouts: restore it as eval does and read the variables.
    from mrcnn_tf2.cli.weights import restore_model

    from mrcnn_tf2 import build_model

    model = build_model(cfg)
    restore_model(model, prefix)
    sd = torch.load(files["v1"], weights_only=True)
    backbone = model.backbone
    w = sd["rpn.head.bbox_pred.weight"].numpy()  # [12, 256, 1, 1], rows a * 4 + (dx, dy, dw, dh)
    ours = np.asarray(model.rpn_head.deltas.kernel)  # [1, 1, 256, 12], columns a * 4 + (dy, dx, dh, dw)
    np.testing.assert_array_equal(ours[0, 0, :, 4 + 0], w[4 + 1, :, 0, 0])  # anchor 1: dy <- dy
    np.testing.assert_array_equal(ours[0, 0, :, 8 + 3], w[8 + 2, :, 0, 0])  # anchor 2: dw <- dw
    fc6 = sd["roi_heads.box_head.fc6.weight"].numpy()  # [1024, 256 * 7 * 7], input c * 49 + y * 7 + x
    ours = np.asarray(model.box_head.fc_0.kernel)  # [7 * 7 * 256, 1024], input (y * 7 + x) * 256 + c
    y, x, c = 3, 5, 17
    np.testing.assert_array_equal(ours[(y * 7 + x) * 256 + c], fc6[:, c * 49 + y * 7 + x])
    conv = sd["backbone.body.layer3.0.conv2.weight"].numpy()  # [out, in, kh, kw]
    kernel = np.asarray(backbone.get_layer("conv4_block1_2_conv").kernel)
    np.testing.assert_array_equal(kernel, conv.transpose(2, 3, 1, 0))
    bn = sd["backbone.body.layer1.0.downsample.1.running_var"].numpy()
    np.testing.assert_array_equal(np.asarray(backbone.get_layer("conv2_block1_0_bn").moving_variance), bn)


def test_eval_predict_export_accept_the_run_dir(run_v1, tmp_path):
    import cv2

    from mrcnn_tf2 import cli

    model_dir, _ = run_v1
    root = str(tmp_path)
    metrics = cli.run(tiny_args(root, "eval", model_dir=model_dir, model="last"))
    assert 0.0 <= metrics["bbox"]["AP"] <= 1.0

    image_dir = tmp_path / "photos"
    image_dir.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(image_dir / "a.png"), rng.integers(0, 255, size=(96, 144, 3), dtype=np.uint8))  # non-square
    cli.run(tiny_args(root, "predict", model_dir=model_dir, model="last", images=str(image_dir / "*.png"),
                      output_dir=str(tmp_path / "predictions")))
    assert glob.glob(str(tmp_path / "predictions" / "*.json"))

    exported = cli.run(tiny_args(root, "export", model_dir=model_dir, model="last",
                                 export_dir=str(tmp_path / "exported")))
    assert os.path.isdir(exported)


@pytest.mark.slow
def test_fine_tune_from_the_converted_checkpoint(run_v1, tmp_path):
    from mrcnn_tf2 import cli

    model_dir, prefix = run_v1
    logs = cli.run(tiny_args(str(tmp_path), "train", model_dir="finetune", config="torchvision_r50_fpn",
                             model=prefix, steps=1, batch_size=1,
                             overrides=("model.image_size=128", "model.min_size=128", "model.max_size=128",
                                        "train.warmup_steps=0", "train.eval_every=0")))
    assert logs is not None
    with open(os.path.join(str(tmp_path), "finetune", "config.json")) as f:
        cfg = json.load(f)
    assert cfg["model"]["num_classes"] == 4  # shapes: 3 categories + background; class layers re-initialized


def test_legacy_key_names_are_accepted():
    from mrcnn_tf2.convert import torchvision as tv

    sd = {k: v.numpy() for k, v in _state_dict("v1").items()}
    legacy = {}
    for key, value in sd.items():  # the 2019 file's names (torchvision module versions < 2), FrozenBN
        if key.endswith("num_batches_tracked"):
            continue
        key = key.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
        for i in range(4):
            key = key.replace(f"fpn.inner_blocks.{i}.0.", f"fpn.inner_blocks.{i}.")
            key = key.replace(f"fpn.layer_blocks.{i}.0.", f"fpn.layer_blocks.{i}.")
            key = key.replace(f"mask_head.{i}.0.", f"mask_head.mask_fcn{i + 1}.")
        legacy[key] = value
    assert "rpn.head.conv.weight" in legacy and "roi_heads.mask_head.mask_fcn4.bias" in legacy
    canonical = tv.canonical_state_dict(legacy)
    tv.check_keys(canonical, "v1")
    expected = tv.canonical_state_dict(sd)
    assert canonical.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(canonical[key], expected[key])


def test_wrong_variant_is_refused_with_the_keys(files, tmp_path):
    result = _convert_cli("--weights", files["v2"], "--variant", "v1", "--model_dir", str(tmp_path / "r"))
    assert result.returncode == 2, result.stderr
    message = " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr and message.startswith("error:")
    assert "keys are missing" in message and "backbone.fpn.inner_blocks.0.0.bias" in message
    assert "unexpected" in message and "--variant=v2" in message
    assert not os.path.exists(tmp_path / "r" / "config.json")


def test_garbage_and_foreign_files_are_refused(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(np.random.default_rng(0).bytes(1000))
    result = _convert_cli("--weights", str(garbage), "--variant", "v1", "--model_dir", str(tmp_path / "r"))
    assert result.returncode == 2 and "not a PyTorch state dict" in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr

    from mrcnn_tf2.convert import torchvision as tv

    foreign = {"fc.weight": np.zeros((10, 4), np.float32), "backbone.body.conv1.weight": np.zeros((64, 3, 7, 7))}
    with pytest.raises(tv.ConvertError, match=r"keys are missing .*unexpected \(fc.weight\)"):
        tv.check_keys(foreign, "v1")
    with pytest.raises(tv.ConvertError, match="does not exist"):
        tv.read_state_dict(str(tmp_path / "missing.pth"))
