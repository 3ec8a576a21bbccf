"""Tiny COCO datasets written into a test's tmp_path (images + instances JSON)."""

from __future__ import annotations

import json
import os
from typing import Any

import cv2
import numpy as np

from mrcnn_tf2 import config


def write_image(path: str, image: np.ndarray) -> None:
    """Writes an RGB (or gray / RGBA / 16-bit) array with OpenCV, creating folders."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)
    assert cv2.imwrite(path, image), path


def rect_polygon(x: float, y: float, w: float, h: float) -> list[float]:
    return [x, y, x + w, y, x + w, y + h, x, y + h]


def write_coco(root: str, images: list[dict], annotations: list[dict], categories: list[dict],
               pixels: dict[int, np.ndarray] | None = None, name: str = "ann.json") -> tuple[str, str]:
    """Writes ``root/images/<file_name>`` (random RGB unless given) and ``root/<name>``.

    Returns:
        (annotation file, image folder).
    """
    rng = np.random.default_rng(0)
    image_dir = os.path.join(root, "images")
    for img in images:
        path = os.path.join(image_dir, img["file_name"])
        if pixels and img["id"] in pixels:
            write_image(path, pixels[img["id"]])
        elif not os.path.exists(path):
            write_image(path, rng.integers(0, 256, (img["height"], img["width"], 3), dtype=np.uint8))
    ann_file = os.path.join(root, name)
    with open(ann_file, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return ann_file, image_dir


def rectangles_dataset(root: str, num_images: int = 6, size: tuple[int, int] = (48, 64),
                       seed: int = 0) -> tuple[str, str, dict[int, list[list[float]]]]:
    """Images with 1-3 axis-aligned rectangles (integer polygons, so masks are exact).

    Category ids 7 and 3 (gapped; label 1 -> id 3, label 2 -> id 7). Rectangle pixels are white in the
    image, background black, so the image shows the masks. Returns (json, image dir, COCO xywh boxes by
    image id).
    """
    rng = np.random.default_rng(seed)
    h, w = size
    images, annotations, boxes = [], [], {}
    pixels = {}
    for i in range(num_images):
        image_id = 100 + i
        canvas = np.zeros((h, w, 3), np.uint8)
        boxes[image_id] = []
        for _ in range(int(rng.integers(1, 4))):
            bw, bh = int(rng.integers(6, w // 2)), int(rng.integers(6, h // 2))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            canvas[y:y + bh, x:x + bw] = 255
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": int(rng.choice([3, 7])),
                                "segmentation": [rect_polygon(x, y, bw, bh)],
                                "bbox": [x, y, bw, bh], "iscrowd": 0, "area": bw * bh})
            boxes[image_id].append([x, y, bw, bh])
        pixels[image_id] = canvas
        images.append({"id": image_id, "file_name": f"sub/{i:03d}.png", "height": h, "width": w})
    categories = [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}]
    ann, image_dir = write_coco(root, images, annotations, categories, pixels)
    return ann, image_dir, boxes


def small_config(ann: str, image_dir: str, **overrides: Any) -> config.Config:
    """A shapes-like config (64 px) reading ``ann`` for both train and eval."""
    values = {"model.image_size": 64, "data.max_instances": 4, "data.gt_mask_size": 8,
              "train.batch_size": 2, "eval.batch_size": 2, "data.train_annotations": ann,
              "data.train_images": image_dir, "data.val_annotations": ann, "data.val_images": image_dir,
              "data.shuffle_buffer": 1}
    values.update(overrides)
    return config.apply_overrides(config.PRESETS["shapes"](), values)
