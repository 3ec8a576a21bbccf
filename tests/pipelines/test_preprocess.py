"""pipelines/preprocess.py: pixel normalization (pinned values), resize/pad, image_info, any size."""

import cv2
import numpy as np
import pytest
import tensorflow as tf
from mrcnn_tf2.pipelines.preprocess import (
    CAFFE_MEAN_BGR,
    denormalize_image,
    normalize_image,
    preprocess_image,
    resize_and_pad,
)


def test_caffe_normalization_pinned_on_a_known_pixel():
    """BGR order, ImageNet mean subtracted, no scaling: what keras.applications ResNet weights expect."""
    image = np.zeros((48, 64, 3), np.uint8)
    image[0, 0] = [10, 20, 30]  # R, G, B
    image[47, 63] = [255, 128, 0]
    out, info = preprocess_image(tf.constant(image), 64, "caffe")  # scale 1: pixels pass unchanged
    np.testing.assert_allclose(out[0, 0].numpy(), [30 - 103.939, 20 - 116.779, 10 - 123.68], atol=1e-4)
    np.testing.assert_allclose(out[47, 63].numpy(), [0 - 103.939, 128 - 116.779, 255 - 123.68], atol=1e-4)
    np.testing.assert_allclose(out[1, 1].numpy(), [-103.939, -116.779, -123.68], atol=1e-4)
    np.testing.assert_array_equal(out[48:].numpy(), 0.0)  # padding is 0 after normalization
    np.testing.assert_array_equal(info.numpy(), [[48, 64], [48, 64], [1, 1], [0, 0]])
    assert CAFFE_MEAN_BGR == (103.939, 116.779, 123.68)


def test_none_normalization_keeps_rgb_0_255():
    image = np.random.default_rng(0).integers(0, 256, (64, 40, 3), dtype=np.uint8)
    out, _ = preprocess_image(tf.constant(image), 64, "none")
    np.testing.assert_allclose(out[:, :40].numpy(), image.astype(np.float32), atol=1e-4)
    np.testing.assert_array_equal(out[:, 40:].numpy(), 0.0)


def test_normalize_denormalize_round_trip_and_bad_name():
    x = tf.constant(np.random.default_rng(1).uniform(0, 255, (5, 7, 3)), tf.float32)
    for mode in ("caffe", "none"):
        np.testing.assert_allclose(denormalize_image(normalize_image(x, mode), mode).numpy(), x.numpy(),
                                   atol=1e-4)
    with pytest.raises(ValueError, match="pixel_normalization"):
        normalize_image(x, "torch")


@pytest.mark.parametrize("h, w", [(30, 50), (50, 30), (64, 64), (1, 1), (1000, 3), (7, 200), (300, 257)])
def test_image_info_and_content_size_for_any_shape(h, w):
    fn = tf.function(lambda im: preprocess_image(im, 64, "none"),
                     input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    out, info = fn(tf.ones([h, w, 3], tf.uint8) * 200)
    factor = 64 / max(h, w)
    sh, sw = [int(np.clip(np.floor(v * factor + 0.5), 1, 64)) for v in (h, w)]
    np.testing.assert_allclose(info.numpy(), [[h, w], [sh, sw], [sh / h, sw / w], [0, 0]], rtol=1e-6)
    assert max(sh, sw) == 64
    assert out.shape == (64, 64, 3)
    np.testing.assert_allclose(out[:sh, :sw].numpy(), 200.0, atol=1e-3)
    assert not out[sh:].numpy().any() and not out[:, sw:].numpy().any()


def test_resize_matches_opencv_bilinear_when_enlarging():
    image = np.random.default_rng(2).uniform(0, 255, (12, 20, 3)).astype(np.float32)
    out = resize_and_pad(tf.constant(image), tf.constant([19, 32]), 32, "none").numpy()
    expected = cv2.resize(image, (32, 19), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(out[:19], expected, atol=1e-2)
    assert not out[19:].any()


def test_shrinking_is_antialiased():
    """A 1-pixel checkerboard shrunk 4x averages to grey instead of aliasing to one colour."""
    board = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)
    image = np.repeat(board[..., None], 3, axis=2)
    out, _ = preprocess_image(tf.constant(image), 16, "none")
    np.testing.assert_allclose(out.numpy(), 127.5, atol=3)
