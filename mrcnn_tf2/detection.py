"""One image's detections (:class:`Detection`) and the inputs the Detector takes (:func:`load_image`).

Images are decoded with ``tf.io.decode_image``, masks RLE-encoded with pycocotools. ``mrcnn_tf2.detector`` builds
``Detection`` objects from served outputs; see its docstring for the conventions (boxes ``[y1, x1, y2,
x2]`` in original-image pixels, the dataset's category ids, masks ``[N, H, W]``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf
from pycocotools import mask as mask_util

from mrcnn_tf2 import visualize

__all__ = ["Detection", "ImageError", "ImageInput", "as_list", "load_image"]

ImageInput = str | os.PathLike | bytes | bytearray | memoryview | np.ndarray


class ImageError(ValueError):
    """An input that is not an image (unreadable file, undecodable bytes, wrong array shape or dtype)."""


# === Inputs ===

def _describe(item: Any) -> str:
    if isinstance(item, (str, os.PathLike)):
        return f"'{os.fspath(item)}'"
    if isinstance(item, (bytes, bytearray, memoryview)):
        return f"{len(item)} bytes"
    return type(item).__name__


def load_image(item: ImageInput) -> np.ndarray:
    """One input as ``[H, W, 3]`` uint8 RGB.

    Args:
        item: a file path (JPEG/PNG/BMP/GIF, first frame of animations), the encoded bytes of such a
            file, or a uint8 array ``[H, W, 3]`` RGB (``[H, W]`` and ``[H, W, 1]`` grayscale are repeated).

    Raises:
        ImageError: the file is missing or unreadable, the bytes are no image, or the array has another
            dtype or shape.
    """
    if isinstance(item, np.ndarray):
        image = item[..., None] if item.ndim == 2 else item
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3) or 0 in image.shape[:2]:
            raise ImageError(f"an image array must be uint8 [H, W, 3] RGB, got {item.dtype} {list(item.shape)}; "
                             "convert with np.asarray(image, np.uint8) (values 0..255)")
        return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
    if isinstance(item, (str, os.PathLike)):
        path = os.fspath(item)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ImageError(f"could not read the image file '{path}': {e.strerror or e}") from None
    elif isinstance(item, (bytes, bytearray, memoryview)):
        data = bytes(item)
    else:
        raise ImageError(f"an image must be a file path, encoded bytes or a uint8 array, got {type(item).__name__}")
    try:
        image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False).numpy()
    except (tf.errors.InvalidArgumentError, ValueError) as e:
        message = getattr(e, "message", str(e)).splitlines()[0]
        raise ImageError(f"{_describe(item)} is not a readable JPEG/PNG/BMP/GIF image ({message})") from None
    if 0 in image.shape[:2]:
        raise ImageError(f"{_describe(item)} decodes to an empty image {list(image.shape)}")
    return image


def as_list(images: Any) -> tuple[list[Any], bool]:
    """(inputs, single): a path, bytes or one [H, W(, C)] array is a single image; a [B, H, W, 3] array is B."""
    if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview)):
        return [images], True
    if isinstance(images, np.ndarray):
        return (list(images), False) if images.ndim == 4 else ([images], True)
    return list(images), False


# === Results ===

@dataclass(frozen=True, eq=False)
class Detection:
    """The detections of one image, in its original frame, best first.

    Shape shorthand: N detections, H x W the original image.

    Attributes:
        boxes: ``[N, 4]`` float32, ``[y1, x1, y2, x2]`` in original-image pixels, clipped to the image.
        scores: ``[N]`` float32 in [0, 1], descending.
        category_ids: ``[N]`` int64, the dataset's category ids.
        category_names: N strings, the names of ``category_ids``.
        masks: ``[N, H, W]`` bool (probabilities ``>= mask_threshold``), or float32 probabilities when
            ``detect(..., return_probabilities=True)``.
        labels: ``[N]`` int64, the model's contiguous classes 1..K (what colours the drawing).
        mask_threshold: the threshold that makes a probability foreground (``to_coco``, ``draw``).
        image: ``[H, W, 3]`` uint8 RGB, the image the detections belong to.
        class_names: the K category names, indexed by ``labels - 1``.
    """

    boxes: np.ndarray
    scores: np.ndarray
    category_ids: np.ndarray
    category_names: tuple[str, ...]
    masks: np.ndarray
    labels: np.ndarray
    mask_threshold: float = 0.5
    image: np.ndarray = field(default=None, repr=False)
    class_names: tuple[str, ...] = field(default=(), repr=False)

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def binary_masks(self) -> np.ndarray:
        """``[N, H, W]`` bool, whatever ``masks`` holds."""
        return self.masks if self.masks.dtype == bool else self.masks >= self.mask_threshold

    def to_coco(self, image_id: int) -> list[dict[str, Any]]:
        """COCO results entries, as ``--mode=eval`` writes them (``COCO.loadRes`` reads a list of them).

        Returns:
            One ``{"image_id", "category_id", "bbox": [x, y, w, h], "score", "segmentation": {"size":
            [H, W], "counts": "<RLE>"}}`` per detection (original-image pixels, dataset ids).
        """
        if not len(self):
            return []
        rles = mask_util.encode(np.asfortranarray(self.binary_masks.transpose(1, 2, 0).astype(np.uint8)))
        out = []
        for box, category_id, score, rle in zip(self.boxes, self.category_ids, self.scores, rles):
            y1, x1, y2, x2 = (float(v) for v in box)
            segmentation = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
            out.append({"image_id": int(image_id), "category_id": int(category_id),
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score), "segmentation": segmentation})
        return out

    def draw(self, score_threshold: float = 0.5) -> np.ndarray:
        """The image with the detections scoring ``>= score_threshold`` drawn (the PNG of ``--mode=predict``).

        Returns:
            ``[H, W, 3]`` uint8 RGB: translucent masks, contours, boxes and "name score" labels.
        """
        if self.image is None:
            raise ValueError("this Detection holds no image to draw on")
        if not len(self):
            return self.image.copy()
        return visualize.draw_detections(self.image, self.boxes, self.labels, self.scores, self.binary_masks,
                                         self.class_names, score_threshold)
