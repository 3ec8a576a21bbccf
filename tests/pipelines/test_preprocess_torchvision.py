"""pipelines/preprocess.py, torchvision mode: ImageNet mean/std and the short 800 / long 1333 resize with
each side padded to 32, against torchvision's own GeneralizedRCNNTransform (eval mode)."""

import numpy as np
import pytest
import tensorflow as tf
from mrcnn_tf2.pipelines.preprocess import (
    IMAGENET_MEAN_RGB,
    IMAGENET_STD_RGB,
    SideResize,
    denormalize_image,
    normalize_image,
    pad_batch,
    preprocess_image,
    side_resize,
    side_scaled_size,
)

from tests.torch_import import import_torch

torch, _ = import_torch()
transform_lib = pytest.importorskip("torchvision.models.detection.transform")

RESIZE = SideResize(800, 1333, 32)


def _torch_transform(min_size: int = 800, max_size: int = 1333):
    t = transform_lib.GeneralizedRCNNTransform(min_size, max_size, list(IMAGENET_MEAN_RGB), list(IMAGENET_STD_RGB))
    return t.eval()


def _to_torch(image: np.ndarray):
    """uint8 [H, W, 3] -> float [3, H, W] in [0, 1], as torchvision's to_tensor does."""
    return torch.from_numpy(image).permute(2, 0, 1).float().div(255)


def test_imagenet_normalization_pinned_on_a_known_pixel():
    image = np.zeros((2, 2, 3), np.uint8)
    image[0, 0] = [10, 128, 255]
    out = normalize_image(tf.constant(image), "imagenet").numpy()
    expected = [(10 / 255 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (255 / 255 - 0.406) / 0.225]
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(out[1, 1], [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225], rtol=1e-6)
    x = tf.constant(np.random.default_rng(1).uniform(0, 255, (5, 7, 3)), tf.float32)
    np.testing.assert_allclose(denormalize_image(normalize_image(x, "imagenet"), "imagenet").numpy(), x.numpy(),
                               atol=1e-3)


@pytest.mark.parametrize("h, w", [(480, 640), (640, 480), (427, 640), (375, 500), (333, 500), (612, 612),
                                  (100, 2000), (2000, 150), (799, 801), (1200, 1601), (37, 53), (1, 1)])
def test_scaled_size_equals_torchvision(h, w):
    """floor(side * min(800 / short, 1333 / long)), as torch's interpolate with recompute_scale_factor."""
    resized = _torch_transform().resize(torch.zeros(3, h, w))[0]
    ours = side_scaled_size(tf.constant(h), tf.constant(w), 800, 1333).numpy()
    assert tuple(ours) == tuple(resized.shape[-2:])


@pytest.mark.parametrize("h, w", [(96, 128), (128, 72), (75, 100), (200, 201)])
def test_image_and_padding_equal_torchvision(h, w):
    """Values of the normalized, resized, padded image (small sizes: min 160 / max 256 keep the test fast)."""
    image = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    resize = SideResize(160, 256, 32)
    fn = tf.function(lambda im: preprocess_image(im, 64, "imagenet", resize=resize),
                     input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    out, info = fn(tf.constant(image))
    image_list, _ = _torch_transform(160, 256)([_to_torch(image)])
    expected = image_list.tensors[0].permute(1, 2, 0).numpy()
    assert out.shape == expected.shape  # each side padded to its own multiple of 32 (one image)
    # Both compute the source coordinate (dst + 0.5) * in / out - 0.5 in float32, in a different order: its
    # last-bit differences (~1.5e-5 at column 136) times a neighbour step of up to 4.4 normalized units
    # (255 / 255 / 0.225) bound the gap by 1e-4; seen: 1.4e-5. Padding is exactly 0 on both sides.
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-4)
    sh, sw = image_list.image_sizes[0]
    np.testing.assert_allclose(info.numpy(), [[h, w], [sh, sw], [sh / h, sw / w], [0, 0]], rtol=1e-6)
    assert out.shape[0] % 32 == 0 and out.shape[1] % 32 == 0


def test_batch_padding_equals_torchvision():
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, hw + (3,), dtype=np.uint8) for hw in ((60, 90), (100, 70))]
    resize = SideResize(128, 200, 32)
    outs = [preprocess_image(tf.constant(im), 64, "imagenet", resize=resize)[0] for im in images]
    ds = tf.data.Dataset.from_generator(lambda: iter(outs), output_signature=tf.TensorSpec([None, None, 3]))
    batch = next(iter(ds.padded_batch(2))).numpy()
    image_list, _ = _torch_transform(128, 200)([_to_torch(im) for im in images])
    expected = image_list.tensors.permute(0, 2, 3, 1).numpy()
    assert batch.shape == expected.shape
    np.testing.assert_allclose(batch, expected, atol=1e-4)  # as in test_image_and_padding_equal_torchvision
    canvas = tf.stack([pad_batch(o[None], tf.constant([224, 224]))[0] for o in outs])
    np.testing.assert_array_equal(pad_batch(canvas, tf.constant(batch.shape[1:3])).numpy(), batch)


def test_side_resize_from_config():
    from mrcnn_tf2 import config

    assert side_resize(config.preset("shapes").model) is None
    assert side_resize(config.preset("torchvision_r50_fpn").model) == SideResize(800, 1333, 32)
    assert SideResize(800, 1333, 32).max_padded_side == 1344


def test_eval_dataset_pads_each_batch_to_its_largest_image(tmp_path):
    from mrcnn_tf2.pipelines import coco
    from mrcnn_tf2.pipelines.example import decode_example, encode_record
    from mrcnn_tf2.pipelines.input_pipeline import build_dataset

    from tests.pipelines.coco_fixtures import rectangles_dataset, small_config

    ann, image_dir, _ = rectangles_dataset(str(tmp_path), num_images=4)
    cfg = small_config(ann, image_dir, **{"eval.batch_size": 3, "model.pixel_normalization": "imagenet",
                                          "model.resize_mode": "short_side", "model.min_size": 48,
                                          "model.max_size": 80})
    out = [{k: v.numpy() for k, v in b.items()} for b in build_dataset(cfg, "eval")]
    assert [len(b["image_id"]) for b in out] == [3, 1]
    records = coco.load_coco(ann, image_dir).images
    for batch, first in zip(out, (0, 3)):
        assert batch["images"].shape[1] % 32 == 0 and batch["images"].shape[2] % 32 == 0
        for row in range(len(batch["image_id"])):
            decoded = decode_example({k: tf.constant(v) for k, v in encode_record(records[first + row]).items()})
            image, info = preprocess_image(decoded["image"], 64, "imagenet", resize=side_resize(cfg.model))
            np.testing.assert_array_equal(batch["image_info"][row], info.numpy())
            expected = pad_batch(image[None], tf.constant(batch["images"].shape[1:3]))[0].numpy()
            np.testing.assert_array_equal(batch["images"][row], expected)


def test_config_rules_for_the_side_resize():
    from mrcnn_tf2 import config

    with pytest.raises(config.ConfigError, match="model.resize_mode"):
        config.preset("shapes", overrides={"model.resize_mode": "long_side"})
    with pytest.raises(config.ConfigError, match="model.size_divisibility=48"):
        config.preset("torchvision_r50_fpn", overrides={"model.size_divisibility": 48})
    with pytest.raises(config.ConfigError, match="min_size <= max_size"):
        config.preset("torchvision_r50_fpn", overrides={"model.min_size": 1400})
    with pytest.raises(config.ConfigError, match="model.fpn_norm"):
        config.preset("torchvision_r50_fpn", overrides={"model.fpn_norm": "ln"})
