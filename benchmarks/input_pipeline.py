"""Input pipeline throughput: images per second, and per CPU core, with full augmentation.

Two cases, as in issue 3:

1. COCO-like data at 1024 px output: generated 640x480 JPEGs with ~7 polygon instances each, converted
   to sharded TFRecords (the fast path for big datasets), ``coco_r50_fpn`` preset, every augmentation on
   (flip, scale jitter 0.8-1.25, crop, rotation, colour, blur, noise).
2. The shapes dataset at 128 px (``shapes`` preset, COCO JSON path with the in-memory cache), full
   augmentation.

"Per core" divides by the CPU seconds the process used (user + system), so it does not depend on
how many cores the machine has; a training job needs ``GPU images/s / (images/s/core)`` cores to feed
the accelerator. Run: ``python benchmarks/input_pipeline.py [--batches 30] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from mrcnn_tf2.pipelines import coco, tfrecord  # noqa: E402
from mrcnn_tf2.pipelines.input_pipeline import build_dataset  # noqa: E402

from mrcnn_tf2 import config  # noqa: E402

FULL_AUGMENT = {"data.augment.hflip_prob": 0.5, "data.augment.scale_min": 0.8, "data.augment.scale_max": 1.25,
                "data.augment.crop_prob": 0.5, "data.augment.rotation_prob": 0.5,
                "data.augment.rotation_max_degrees": 15.0, "data.augment.brightness": 0.1,
                "data.augment.contrast": 0.1, "data.augment.saturation": 0.1, "data.augment.hue": 0.02,
                "data.augment.blur_prob": 0.5, "data.augment.noise_prob": 0.5}


def make_coco_like(root: str, num_images: int, seed: int = 0) -> tuple[str, str]:
    """640x480 JPEGs (textured background, ~7 filled polygons/ellipses) and a polygon COCO JSON."""
    rng = np.random.default_rng(seed)
    h, w = 480, 640
    image_dir = os.path.join(root, "images")
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(num_images):
        base = rng.uniform(40, 200, 3)
        image = base + 40 * np.sin(xx[..., None] / rng.uniform(20, 80) + rng.uniform(0, 6, 3)) \
            + rng.normal(0, 12, (h, w, 3))
        for _ in range(int(rng.poisson(7)) or 1):
            mask = np.zeros((h, w), np.uint8)
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ry, rx = rng.uniform(10, 120), rng.uniform(10, 160)
            if rng.random() < 0.5:
                cv2.ellipse(mask, (int(cx), int(cy)), (int(rx), int(ry)), rng.uniform(0, 180), 0, 360, 1, -1)
            else:
                angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(5, 12))))
                pts = np.stack([cx + rx * np.cos(angles), cy + ry * np.sin(angles)], 1).astype(np.int32)
                cv2.fillPoly(mask, [pts], 1)
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            polygons = [c.reshape(-1).astype(float).tolist() for c in contours if len(c) >= 3]
            if not polygons:
                continue
            image[mask.astype(bool)] = rng.uniform(0, 255, 3)
            x, y, bw, bh = cv2.boundingRect(mask)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1,
                                "category_id": int(rng.integers(1, 81)), "segmentation": polygons,
                                "bbox": [x, y, bw, bh], "iscrowd": 0, "area": int(mask.sum())})
        name = f"{i:06d}.jpg"
        cv2.imwrite(os.path.join(image_dir, name), np.clip(image, 0, 255).astype(np.uint8)[..., ::-1],
                    [cv2.IMWRITE_JPEG_QUALITY, 90])
        images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
    categories = [{"id": k, "name": f"class{k}"} for k in range(1, 81)]
    ann = os.path.join(root, "instances.json")
    with open(ann, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return ann, image_dir


def measure(ds: tf.data.Dataset, batch_size: int, batches: int, warmup: int) -> dict[str, float]:
    """Wall and CPU time over ``batches`` batches after ``warmup`` batches."""
    it = iter(ds)
    t_first = time.perf_counter()
    for _ in range(warmup):
        next(it)
    first = time.perf_counter() - t_first
    c0, t0 = os.times(), time.perf_counter()
    for _ in range(batches):
        next(it)
    wall = time.perf_counter() - t0
    c1 = os.times()
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    images = batches * batch_size
    return {"warmup_s": round(first, 2), "images": images, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "images_per_s": round(images / wall, 1), "images_per_s_per_core": round(images / cpu, 1),
            "cores_busy": round(cpu / wall, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_images", type=int, default=48)
    parser.add_argument("--batches", type=int, default=24)
    parser.add_argument("--json", default="", help="also write the figures to this file")
    args = parser.parse_args()
    results = {"cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory() as root:
        t0 = time.perf_counter()
        ann, image_dir = make_coco_like(root, args.num_images)
        dataset = coco.load_coco(ann, image_dir)
        t1 = time.perf_counter()
        tfrecord.write_tfrecords(dataset, os.path.join(root, "records"), 4)
        results["tfrecord_convert_images_per_s"] = round(args.num_images / (time.perf_counter() - t1), 1)
        print(f"generated {args.num_images} COCO-like images in {t1 - t0:.1f} s; "
              f"TFRecord conversion {results['tfrecord_convert_images_per_s']} img/s (1 process)")
        overrides = dict(FULL_AUGMENT, **{"model.image_size": 1024, "train.batch_size": 2,
                                          "data.train_tfrecords": os.path.join(root, "records"),
                                          "data.category_ids": list(dataset.category_ids),
                                          "data.category_names": list(dataset.category_names),
                                          "model.num_classes": dataset.num_categories + 1})
        cfg = config.preset("coco_r50_fpn", overrides)
        results["coco_1024_full_augment"] = measure(build_dataset(cfg, "train"), 2, args.batches, 3)
        cfg = config.preset("coco_r50_fpn", dict(overrides, **{"data.augment.enabled": False}))
        results["coco_1024_no_augment"] = measure(build_dataset(cfg, "train"), 2, args.batches, 3)

        shapes_cfg = config.preset("shapes", dict(FULL_AUGMENT, **{"data.data_dir": os.path.join(root, "shapes")}))
        coco.dataset_paths(shapes_cfg, "train")  # generate outside the timing
        per_epoch = shapes_cfg.data.shapes_num_train // shapes_cfg.train.batch_size
        results["shapes_128_full_augment"] = measure(build_dataset(shapes_cfg, "train"), 8,
                                                     max(args.batches * 4, per_epoch), per_epoch)
    for name, value in results.items():
        print(f"{name}: {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
