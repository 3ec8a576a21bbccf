"""pipelines/example.py: image formats to 8-bit RGB, mask PNG round trip, TFRecord round trip, errors."""

import os

import cv2
import numpy as np
import pytest
import tensorflow as tf
from mrcnn_tf2.pipelines import coco
from mrcnn_tf2.pipelines.example import (
    decode_example,
    encode_image_file,
    encode_masks,
    encode_record,
    parse_example,
    serialize_example,
)

from tests.pipelines.coco_fixtures import rect_polygon, write_coco

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (9, 11, 3), dtype=np.uint8)
GRAY = RNG.integers(0, 256, (9, 11), dtype=np.uint8)
RGBA = RNG.integers(0, 256, (9, 11, 4), dtype=np.uint8)
DEEP = RNG.integers(0, 65536, (9, 11, 3), dtype=np.uint16)


@pytest.mark.parametrize("name, pixels, expected, tolerance", [
    ("rgb.png", RGB, RGB, 0),
    ("rgb.bmp", RGB, RGB, 0),
    ("rgb.jpg", RGB, None, 8),  # lossy: vs OpenCV decoding the same file (IDCT/chroma rounding differ)
    ("gray.png", GRAY, np.repeat(GRAY[..., None], 3, axis=2), 0),
    ("gray.bmp", GRAY, np.repeat(GRAY[..., None], 3, axis=2), 0),
    ("rgba.png", RGBA, RGBA[..., :3], 0),
    ("deep.png", DEEP, (DEEP >> 8).astype(np.uint8), 0),  # 16-bit -> 8-bit
    ("rgb.tiff", RGB, RGB, 0),  # not a TF format: converted to PNG on the host
])
def test_image_formats_decode_to_8bit_rgb(tmp_path, name, pixels, expected, tolerance):
    images = [{"id": 1, "file_name": name, "height": 9, "width": 11}]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": [rect_polygon(2, 1, 5, 4)]}]
    ann, image_dir = write_coco(str(tmp_path), images, anns, [{"id": 1, "name": "a"}], {1: pixels})
    record = coco.load_coco(ann, image_dir).images[0]
    decoded = decode_example({k: tf.constant(v) for k, v in encode_record(record).items()})
    image = decoded["image"].numpy()
    assert image.dtype == np.uint8 and image.shape == (9, 11, 3)
    if expected is None:
        expected = cv2.cvtColor(cv2.imread(os.path.join(image_dir, name)), cv2.COLOR_BGR2RGB)
    assert np.abs(image.astype(int) - expected.astype(int)).max() <= tolerance
    np.testing.assert_array_equal(decoded["masks"].numpy()[0], coco.instance_masks(record)[0])
    assert decoded["classes"].numpy().tolist() == [1] and decoded["image_id"].numpy() == 1


def test_mask_png_round_trip_including_no_instances():
    masks = (RNG.random((4, 6, 7)) < 0.5).astype(np.uint8)
    for m in (masks, masks[:0]):
        features = {"image/encoded": tf.constant(cv2.imencode(".png", RGB[:6, :7])[1].tobytes()),
                    "image/id": tf.constant(3, tf.int64), "image/height": tf.constant(6, tf.int64),
                    "image/width": tf.constant(7, tf.int64), "image/filename": tf.constant("x.png"),
                    "object/label": tf.constant(np.arange(len(m)), tf.int64),
                    "object/masks": tf.constant(encode_masks(m))}
        decoded = decode_example(features)
        np.testing.assert_array_equal(decoded["masks"].numpy(), m)
        assert decoded["masks"].shape == (len(m), 6, 7)


def test_tf_example_round_trip(tmp_path):
    images = [{"id": 42, "file_name": "a.png", "height": 9, "width": 11}]
    anns = [{"id": 1, "image_id": 42, "category_id": 5, "segmentation": [rect_polygon(2, 1, 5, 4)]},
            {"id": 2, "image_id": 42, "category_id": 9, "bbox": [0, 0, 3, 3]}]
    ann, image_dir = write_coco(str(tmp_path), images, anns, [{"id": 5, "name": "a"}, {"id": 9, "name": "b"}])
    features = encode_record(coco.load_coco(ann, image_dir).images[0])
    parsed = parse_example(tf.constant(serialize_example(features)))
    for key, value in features.items():
        np.testing.assert_array_equal(parsed[key].numpy(), value)


def test_size_mismatch_names_the_file(tmp_path):
    images = [{"id": 7, "file_name": "wrong.png", "height": 10, "width": 11}]
    ann, image_dir = write_coco(str(tmp_path), images, [], [{"id": 1, "name": "a"}], {7: RGB})  # really 9 x 11
    features = encode_record(coco.load_coco(ann, image_dir).images[0])
    ds = tf.data.Dataset.from_tensors({k: tf.constant(v) for k, v in features.items()}).map(decode_example)
    with pytest.raises(tf.errors.InvalidArgumentError, match="wrong.png"):
        next(iter(ds))


def test_unreadable_image_file_names_the_file(tmp_path):
    path = os.path.join(str(tmp_path), "junk.jpeg")
    with open(path, "wb") as f:
        f.write(b"not an image at all")
    with pytest.raises(coco.DatasetError, match="junk.jpeg: not a readable image"):
        encode_image_file(path)
