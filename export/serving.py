"""Serving endpoints: encoded images or uint8 tensors in, detections in original-image pixels out.

This module owns the graph functions that go into the SavedModel (``export/saved_model.py`` writes
them). Both endpoints run the one preprocessing path of ``pipelines/preprocess.py`` per image (so a
batch may mix image sizes), the model's inference ``call``, and then map the detections from the
padded model input back to the caller's frame:

- boxes: a model-input point ``q`` came from the original point ``p = (q + offset) / scale``
  (``image_info`` rows 3 and 2), clipped to ``[0, orig_h] x [0, orig_w]``;
- classes: contiguous labels ``1..K`` become dataset category ids through ``category_ids``
  (``label - 1`` indexes it; empty = labels as they are);
- rows past ``num_detections`` are zero in every output.

``serving_default`` reads every image's size from its header first (``export/image_header_tf.py``) and
refuses the whole request with ``INVALID_ARGUMENT`` before decoding anything when an image is not a
JPEG/PNG/GIF/BMP/WebP file or is larger than ``export.max_image_pixels`` (fixed at export): a small
compressed file can decode to gigabytes.

Only core TensorFlow ops are used (no ``py_function``, no XLA-only functions): the graph runs in
TF Serving and in any process that imports nothing but ``tensorflow``.

Shape shorthand: B images, h x w input size, S model input side, D = max detections, M = mask size.

Outputs of both endpoints (DESIGN.md section 4):
  num_detections    [B] int32
  detection_boxes   [B, D, 4] float32, y1x1y2x2 original-image pixels
  detection_classes [B, D] int32, dataset category ids
  detection_scores  [B, D] float32
  detection_masks   [B, D, M, M] float32, box-relative probabilities
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf
from mrcnn_tf2.export.image_header_tf import check_image_headers
from mrcnn_tf2.pipelines.preprocess import SideResize, pad_batch, preprocess_image

__all__ = ["OUTPUT_KEYS", "IMAGE_BYTES_SIGNATURE", "IMAGE_TENSOR_SIGNATURE", "decode_image",
           "detections_to_original", "ServingEndpoints"]

OUTPUT_KEYS = ("num_detections", "detection_boxes", "detection_classes", "detection_scores",
               "detection_masks")
IMAGE_BYTES_SIGNATURE = (tf.TensorSpec([None], tf.string, name="images"),)
IMAGE_TENSOR_SIGNATURE = (tf.TensorSpec([None, None, None, 3], tf.uint8, name="images"),)


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
    """Decodes one JPEG/PNG/BMP/GIF (first frame)/WebP image (check its header first: ``check_image_headers``).

    Args:
        encoded: scalar tf.string, the file bytes.

    Returns:
        ``[h, w, 3]`` uint8 RGB (grayscale is repeated, alpha dropped). Bytes that are no image raise
        ``InvalidArgumentError`` when the graph runs.
    """
    image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def detections_to_original(detections: dict[str, tf.Tensor], image_info: tf.Tensor,
                           category_ids: Sequence[int] = ()) -> dict[str, tf.Tensor]:
    """Maps model outputs (model-input pixels, contiguous labels) to the serving contract.

    Args:
        detections: ``MaskRCNN.call`` outputs: detection_boxes [B, D, 4] float32 y1x1y2x2 model-input
            pixels, detection_scores [B, D], detection_classes [B, D] int32 labels 1..K (0 = padding),
            detection_masks [B, D, M, M], num_detections [B] int32.
        image_info: ``[B, 4, 2]`` float32 from ``preprocess_image``.
        category_ids: dataset category id of each label ``1..K`` (in order); empty keeps the labels.

    Returns:
        The ``OUTPUT_KEYS`` dict: boxes in original-image pixels clipped to the image, classes as
        category ids, every row past ``num_detections`` zero.
    """
    num = tf.cast(detections["num_detections"], tf.int32)
    max_detections = detections["detection_scores"].shape[1] or tf.shape(detections["detection_scores"])[1]
    valid = tf.range(max_detections)[None, :] < num[:, None]  # [B, D]

    info = tf.cast(image_info, tf.float32)
    original_hw, scale, offset = info[:, 0, :], info[:, 2, :], info[:, 3, :]  # [B, 2] each
    scale4 = tf.tile(scale, [1, 2])[:, None, :]  # [B, 1, 4] as (y, x, y, x)
    offset4 = tf.tile(offset, [1, 2])[:, None, :]
    limit4 = tf.tile(original_hw, [1, 2])[:, None, :]
    boxes = (tf.cast(detections["detection_boxes"], tf.float32) + offset4) / scale4
    boxes = tf.clip_by_value(boxes, 0.0, limit4)

    labels = tf.cast(detections["detection_classes"], tf.int32)
    if category_ids:
        table = tf.constant([0] + [int(c) for c in category_ids], tf.int32)
        classes = tf.gather(table, tf.clip_by_value(labels, 0, len(category_ids)))
    else:
        classes = labels

    return {
        "num_detections": num,
        "detection_boxes": tf.where(valid[..., None], boxes, 0.0),
        "detection_classes": tf.where(valid, classes, 0),
        "detection_scores": tf.where(valid, tf.cast(detections["detection_scores"], tf.float32), 0.0),
        "detection_masks": tf.where(valid[..., None, None],
                                    tf.cast(detections["detection_masks"], tf.float32), 0.0),
    }


class ServingEndpoints:
    """The two serving functions over one model (plain Python callables; trace them with tf.function).

    Args:
        model: a built ``MaskRCNN`` (``model(images [B, S, S, 3], image_info [B, 4, 2])``).
        image_size: S, the model input side (``cfg.model.image_size``).
        pixel_normalization: ``cfg.model.pixel_normalization``.
        category_ids: ``cfg.data.category_ids`` (label ``k`` -> ``category_ids[k - 1]``); may be empty.
        max_detections: D (``cfg.model.detection.max_detections``).
        mask_size: M (``cfg.model.roi.mask_size``).
        max_image_pixels: ``cfg.export.max_image_pixels``: ``serving_default`` refuses encoded images whose
            header announces more pixels (height x width; GIF: also the sum of its frames).
        resize: ``preprocess.side_resize(cfg.model)``: None (square S x S input) or torchvision's resize by
            side; then the batch is padded to its largest image, each side a multiple of size_divisibility.
    """

    def __init__(self, model: keras.Model, image_size: int, pixel_normalization: str,
                 category_ids: Sequence[int], max_detections: int, mask_size: int,
                 max_image_pixels: int = 40_000_000, resize: SideResize | None = None):
        self.model = model
        self.resize = resize
        self.image_size = int(image_size)
        self.pixel_normalization = pixel_normalization
        self.category_ids = tuple(int(c) for c in category_ids)
        self.max_detections = int(max_detections)
        self.mask_size = int(mask_size)
        self.max_image_pixels = int(max_image_pixels)

    # === Endpoints ===

    def serve_image_bytes(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """``serving_default``: images ``[B]`` tf.string of encoded JPEG/PNG/GIF/BMP/WebP, sizes may differ.

        Every header is checked before any image is decoded: an unknown format, a corrupt header or more
        than ``max_image_pixels`` pixels fail the request with ``InvalidArgumentError`` naming the batch
        positions.

        Returns:
            The ``OUTPUT_KEYS`` dict (see the module docstring).
        """
        check = check_image_headers(images, self.max_image_pixels, what="serving_default images")
        with tf.control_dependencies([check]):
            images = tf.identity(images)
        return self._detect(images, lambda encoded: self._preprocess(decode_image(encoded)))

    def serve_image_tensor(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """``serve_image_tensor``: images ``[B, h, w, 3]`` uint8 RGB.

        Returns:
            The ``OUTPUT_KEYS`` dict (see the module docstring).
        """
        return self._detect(images, self._preprocess)

    # === Pieces ===

    def _preprocess(self, image: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """One ``[h, w, 3]`` uint8 image -> (``[S, S, 3]`` float32, ``[4, 2]`` image_info)."""
        check = tf.debugging.assert_positive(tf.shape(image)[:2], message="images must be at least 1 x 1 pixels")
        with tf.control_dependencies([check]):
            image = tf.identity(image)
        image, info = preprocess_image(image, self.image_size, self.pixel_normalization, resize=self.resize)
        if self.resize is not None:  # a common canvas for map_fn; _detect crops the batch to its content
            side = self.resize.max_padded_side
            image = tf.ensure_shape(pad_batch(image[None], tf.constant([side, side]))[0], [side, side, 3])
        return image, info

    def _detect(self, images: tf.Tensor, preprocess_one) -> dict[str, tf.Tensor]:
        size = self.image_size if self.resize is None else self.resize.max_padded_side
        batch = tf.shape(images)[0]

        def run() -> dict[str, tf.Tensor]:
            model_images, image_info = tf.map_fn(
                preprocess_one, images,
                fn_output_signature=(tf.TensorSpec([size, size, 3], tf.float32),
                                     tf.TensorSpec([4, 2], tf.float32)))
            if self.resize is not None:  # as torchvision batches: the largest image, sides rounded up
                div = self.resize.size_divisibility
                content = tf.cast(tf.reduce_max(image_info[:, 1, :], axis=0), tf.int32)
                model_images = pad_batch(model_images, (content + div - 1) // div * div)
            detections = self.model(model_images, image_info, training=False)
            return detections_to_original(detections, image_info, self.category_ids)

        def empty() -> dict[str, tf.Tensor]:
            # The model's layers reject a zero batch, so an empty request never reaches them.
            d, m = self.max_detections, self.mask_size
            return {"num_detections": tf.zeros([0], tf.int32),
                    "detection_boxes": tf.zeros([0, d, 4], tf.float32),
                    "detection_classes": tf.zeros([0, d], tf.int32),
                    "detection_scores": tf.zeros([0, d], tf.float32),
                    "detection_masks": tf.zeros([0, d, m, m], tf.float32)}

        outputs = tf.cond(batch > 0, run, empty)
        return {key: outputs[key] for key in OUTPUT_KEYS}
