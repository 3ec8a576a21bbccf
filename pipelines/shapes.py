"""The built-in synthetic shapes dataset, written in COCO format.

Each 128 x 128 image shows 1-4 squares, circles and triangles of random size, colour, rotation and
position, overlapping, on a random gradient-and-noise background. Instances are written as COCO RLE
masks of their visible (unoccluded) pixels, so the data goes through exactly the same reader as real
data. Layout::

    <output>/train.json, <output>/val.json          COCO instances (categories square=1, circle=2, triangle=3)
    <output>/images/train/000001.png, images/val/...  RGB PNGs

Command line: ``python -m mrcnn_tf2.pipelines.shapes --output data/shapes --num_train 500 --num_val 50 --seed 0``.
:func:`ensure_shapes_dataset` generates it once, under a file lock, writing the JSONs last and
atomically, so concurrent processes and interrupted runs never leave a half-written dataset behind.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Iterator

import cv2
import numpy as np
from pycocotools import mask as mask_utils

__all__ = ["CATEGORIES", "IMAGE_SIZE", "generate_shapes", "ensure_shapes_dataset", "main"]

CATEGORIES = ({"id": 1, "name": "square"}, {"id": 2, "name": "circle"}, {"id": 3, "name": "triangle"})
IMAGE_SIZE = 128
_MIN_VISIBLE_FRACTION = 0.4
_MIN_AREA = 30


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """[size, size, 3] uint8 RGB: a linear gradient between two colours plus mild noise."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    t = np.clip(0.5 + (xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle), 0, 1)[..., None]
    image = c0 * (1 - t) + c1 * t + rng.normal(0, 6, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _shape_mask(rng: np.random.Generator, kind: int, size: int) -> np.ndarray:
    """[size, size] uint8 {0, 1} mask of one random square (1), circle (2) or triangle (3)."""
    mask = np.zeros((size, size), np.uint8)
    radius = rng.uniform(8, 24)
    cy, cx = rng.uniform(radius * 0.7, size - radius * 0.7, 2)
    if kind == 2:
        cv2.circle(mask, (int(round(cx * 16)), int(round(cy * 16))), int(round(radius * 16)), 1, -1,
                   lineType=cv2.LINE_8, shift=4)
        return mask
    corners = 4 if kind == 1 else 3
    start = rng.uniform(0, 2 * np.pi)
    angles = start + np.arange(corners) * 2 * np.pi / corners
    points = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)
    cv2.fillPoly(mask, [np.round(points * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return mask


def _random_color(rng: np.random.Generator, avoid: np.ndarray) -> np.ndarray:
    for _ in range(20):
        color = rng.uniform(0, 255, 3)
        if np.abs(color - avoid).sum() > 150:
            break
    return color


def _make_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One image and its instances as (category id, visible mask [size, size] uint8)."""
    image = _background(rng, size)
    num_shapes = int(rng.integers(1, 5))
    full: list[np.ndarray] = []
    visible: list[np.ndarray] = []
    kinds: list[int] = []
    for _ in range(num_shapes):
        for _attempt in range(10):
            kind = int(rng.integers(1, 4))
            mask = _shape_mask(rng, kind, size)
            if mask.sum() < _MIN_AREA:
                continue
            shrunk = [v & (1 - mask) for v in visible]
            if all(s.sum() >= _MIN_VISIBLE_FRACTION * f.sum() for s, f in zip(shrunk, full)):
                break
        else:
            continue
        local_bg = image[mask.astype(bool)].mean(axis=0)
        image[mask.astype(bool)] = _random_color(rng, local_bg).astype(np.uint8)
        visible = shrunk + [mask]
        full.append(mask)
        kinds.append(kind)
    return image, list(zip(kinds, visible))


def _split(rng: np.random.Generator, split: str, num_images: int, output: str, size: int) -> dict:
    image_dir = os.path.join(output, "images", split)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        image, instances = _make_image(rng, size)
        file_name = f"{i + 1:06d}.png"
        tmp = os.path.join(image_dir, f".{file_name}.tmp.png")
        cv2.imwrite(tmp, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        os.replace(tmp, os.path.join(image_dir, file_name))
        images.append({"id": i + 1, "file_name": file_name, "height": size, "width": size})
        for category_id, mask in instances:
            rle = mask_utils.encode(np.asfortranarray(mask))
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": i + 1,
                "category_id": category_id,
                "segmentation": {"size": [size, size], "counts": rle["counts"].decode("ascii")},
                "area": int(mask.sum()),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "iscrowd": 0,
            })
    return {"info": {"description": f"synthetic shapes ({split})"}, "images": images,
            "annotations": annotations, "categories": [dict(c) for c in CATEGORIES]}


def _write_json_atomic(data: dict, path: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def generate_shapes(output: str, num_train: int = 500, num_val: int = 50, seed: int = 0,
                    image_size: int = IMAGE_SIZE) -> None:
    """Writes the shapes dataset (layout in the module docstring); the JSONs are written last.

    Args:
        output: the dataset folder (created).
        num_train: number of training images.
        num_val: number of validation images.
        seed: the random seed; the same seed gives the same dataset.
        image_size: side of the square images in pixels.
    """
    rng = np.random.default_rng(seed)
    os.makedirs(output, exist_ok=True)
    train = _split(rng, "train", num_train, output, image_size)
    val = _split(rng, "val", num_val, output, image_size)
    _write_json_atomic(val, os.path.join(output, "val.json"))
    _write_json_atomic(train, os.path.join(output, "train.json"))


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic JSON writes still avoid half-written files
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_shapes_dataset(data_dir: str, num_train: int = 500, num_val: int = 50, seed: int = 0) -> None:
    """Generates the shapes dataset into ``data_dir`` unless ``train.json`` and ``val.json`` exist.

    Several processes may call this at once: one generates while the others wait on a file lock.
    """
    def complete() -> bool:
        return all(os.path.isfile(os.path.join(data_dir, f)) for f in ("train.json", "val.json"))

    if complete():
        return
    os.makedirs(data_dir, exist_ok=True)
    with _file_lock(os.path.join(data_dir, ".generate.lock")):
        if not complete():
            generate_shapes(data_dir, num_train, num_val, seed)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="data/shapes")
    parser.add_argument("--num_train", type=int, default=500)
    parser.add_argument("--num_val", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    generate_shapes(args.output, args.num_train, args.num_val, args.seed)
    print(f"wrote {args.num_train} train and {args.num_val} val images to {args.output}")


if __name__ == "__main__":
    main()
