"""The encoded example: how one image and its instance masks reach the TensorFlow graph.

Both input paths produce the same flat dict of encoded features, so everything after it is shared:

- the JSON path renders masks on the host (pycocotools) inside a ``Dataset.from_generator`` source;
- the TFRecord path stores the same features in ``tf.train.Example`` records (``pipelines/tfrecord.py``).

Features (``FEATURE_SPEC`` gives the tf.data signature)::

    image/encoded   string  the image file's bytes (JPEG/PNG/BMP/GIF as is; other formats re-encoded as PNG)
    image/id        int64   the dataset's image id
    image/height    int64   original height H (from the annotations)
    image/width     int64   original width W
    image/filename  string  file name relative to the image folder (for error messages)
    object/label    int64   [N] contiguous labels 1..K of the non-crowd instances
    object/masks    string  ONE grayscale PNG of shape [max(N, 1) * H, W], values {0, 1}: the instance
                            masks stacked vertically (a single decode per image; zeros when N = 0)

:func:`decode_example` turns these into ``image [H, W, 3] uint8`` (RGB; grayscale, RGBA and 16-bit
inputs converted), ``masks [N, H, W] uint8`` and ``classes [N] int32``, with pure TF ops.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
import tensorflow as tf
from mrcnn_tf2.pipelines.coco import DatasetError, ImageRecord, instance_masks

__all__ = ["FEATURE_SPEC", "encode_image_file", "encode_masks", "encode_record", "serialize_example",
           "parse_example", "decode_example"]

FEATURE_SPEC = {
    "image/encoded": tf.TensorSpec([], tf.string),
    "image/id": tf.TensorSpec([], tf.int64),
    "image/height": tf.TensorSpec([], tf.int64),
    "image/width": tf.TensorSpec([], tf.int64),
    "image/filename": tf.TensorSpec([], tf.string),
    "object/label": tf.TensorSpec([None], tf.int64),
    "object/masks": tf.TensorSpec([], tf.string),
}

_TF_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"BM", b"GIF8")


def _tf_reads_bmp(data: bytes) -> bool:
    """Whether ``tf.io.decode_bmp`` reads this BMP: uncompressed (or bitfields) 8, 24 or 32 bits per pixel."""
    if len(data) < 34 or int.from_bytes(data[14:18], "little") < 40:
        return False
    bits = int.from_bytes(data[28:30], "little")
    compression = int.from_bytes(data[30:34], "little")
    return bits in (8, 24, 32) and compression in (0, 3)


def encode_image_file(path: str) -> bytes:
    """The bytes of an image file in a format ``tf.io.decode_image`` reads.

    JPEG, PNG (any bit depth, grayscale, palette, RGBA), 8/24/32-bit BMP and GIF pass through unchanged;
    other formats OpenCV can read (TIFF, WebP, 1/4/16-bit or RLE BMP, ...) are converted to 8-bit RGB PNG.

    Raises:
        DatasetError: the file is missing or not an image.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read image file ({e.strerror})") from None
    if data.startswith(_TF_MAGIC) and (not data.startswith(b"BM") or _tf_reads_bmp(data)):
        return data
    # EXIF orientation is ignored, as TensorFlow's decoders do (the checked size is the stored one).
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise DatasetError(f"{path}: not a readable image (JPEG, PNG, BMP, GIF or what OpenCV reads)")
    return cv2.imencode(".png", image)[1].tobytes()


def encode_masks(masks: np.ndarray) -> bytes:
    """PNG-encodes ``masks [N, H, W]`` ({0, 1}) as one ``[max(N, 1) * H, W]`` grayscale image."""
    n, h, w = masks.shape
    stacked = masks.reshape(n * h, w) if n else np.zeros((h, w), np.uint8)
    ok, data = cv2.imencode(".png", stacked.astype(np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError(f"PNG encoding failed for masks of shape {masks.shape}")
    return data.tobytes()


def encode_record(record: ImageRecord) -> dict[str, np.ndarray | bytes | int]:
    """The encoded features of one image record (host side: reads the file, renders masks).

    Returns:
        A dict with the keys of ``FEATURE_SPEC``; ``object/label`` is ``[N]`` int64.
    """
    masks = instance_masks(record)
    return {
        "image/encoded": encode_image_file(record.path),
        "image/id": np.int64(record.image_id),
        "image/height": np.int64(record.height),
        "image/width": np.int64(record.width),
        "image/filename": os.fsencode(record.file_name),
        "object/label": np.asarray([inst.label for inst in record.instances], np.int64),
        "object/masks": encode_masks(masks),
    }


def serialize_example(features: dict) -> bytes:
    """A ``tf.train.Example`` holding the features of :func:`encode_record`."""
    def b(v: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    def i(v: list[int]) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(x) for x in v]))

    feature = {
        "image/encoded": b(features["image/encoded"]),
        "image/id": i([features["image/id"]]),
        "image/height": i([features["image/height"]]),
        "image/width": i([features["image/width"]]),
        "image/filename": b(features["image/filename"]),
        "object/label": i(list(features["object/label"])),
        "object/masks": b(features["object/masks"]),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


_PARSE_SPEC = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/id": tf.io.FixedLenFeature([], tf.int64),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
    "image/filename": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "object/label": tf.io.VarLenFeature(tf.int64),
    "object/masks": tf.io.FixedLenFeature([], tf.string),
}


def parse_example(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parses one serialized ``tf.train.Example`` into the ``FEATURE_SPEC`` dict (graph op)."""
    parsed = tf.io.parse_single_example(serialized, _PARSE_SPEC)
    parsed["object/label"] = tf.sparse.to_dense(parsed["object/label"])
    return parsed


def decode_example(features: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """Decodes the image and the stacked mask PNG (pure TF ops, for ``Dataset.map``).

    Args:
        features: a ``FEATURE_SPEC`` dict.

    Returns:
        ``image [H, W, 3] uint8`` RGB, ``masks [N, H, W] uint8`` in {0, 1}, ``classes [N] int32``
        (labels 1..K), ``image_id`` int64 scalar. Fails with a message naming the file when the decoded
        image size differs from the annotation's height/width.
    """
    height = tf.cast(features["image/height"], tf.int32)
    width = tf.cast(features["image/width"], tf.int32)
    image = tf.io.decode_image(features["image/encoded"], channels=3, dtype=tf.uint8,
                               expand_animations=False)
    decoded_hw = tf.shape(image)[:2]
    check = tf.debugging.Assert(
        tf.reduce_all(tf.equal(decoded_hw, tf.stack([height, width]))),
        ["image file", features["image/filename"], "(image id", features["image/id"],
         ") decodes to [height, width] =", decoded_hw, "but its annotation says", tf.stack([height, width])])
    with tf.control_dependencies([check]):
        image = tf.identity(image)
    image.set_shape([None, None, 3])
    classes = tf.cast(features["object/label"], tf.int32)
    num = tf.shape(classes)[0]
    masks = tf.io.decode_png(features["object/masks"], channels=1)
    masks = tf.reshape(masks, [-1, height, width])[:num]
    return {"image": image, "masks": masks, "classes": classes, "image_id": features["image/id"],
            "filename": features["image/filename"]}
