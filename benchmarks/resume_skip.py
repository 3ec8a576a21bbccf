"""Resume cost on the COCO JSON path: seconds to the first batch after ``skip_batches``, and the image
checks before training (first run vs. cached).

A dataset too big for the in-memory cache (``data.cache_max_mb=0``) of generated 640x480 JPEGs with 8
polygon instances each; batch 2. The resumed run skips ``--epochs`` epochs of batches. Before the
skip moved ahead of rendering, every skipped example was read and rendered on the host (one Python
thread); now indices are skipped and only the examples used are rendered.
Run: ``python benchmarks/resume_skip.py [--images 32] [--epochs 8]`` (on another checkout, prefix
``PYTHONPATH=<checkout>`` to compare).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.environ.get("PYTHONPATH", "").split(os.pathsep)[0]
                or os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from mrcnn_tf2.pipelines.input_pipeline import build_dataset  # noqa: E402

from mrcnn_tf2 import config  # noqa: E402


def write_dataset(root: str, num_images: int) -> tuple[str, str]:
    rng = np.random.default_rng(0)
    image_dir = os.path.join(root, "images")
    os.makedirs(image_dir)
    images, anns = [], []
    for i in range(num_images):
        cv2.imwrite(os.path.join(image_dir, f"{i}.jpg"), rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
        images.append({"id": i, "file_name": f"{i}.jpg", "height": 480, "width": 640})
        for _ in range(8):
            cx, cy, r = rng.uniform(80, 560), rng.uniform(80, 400), rng.uniform(20, 70)
            t = np.sort(rng.uniform(0, 2 * np.pi, 12))
            poly = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1).ravel().tolist()
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1, "segmentation": [poly],
                         "iscrowd": 0})
    path = os.path.join(root, "ann.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "blob"}]}, f)
    return path, image_dir


def first_batch_seconds(cfg: config.Config, skip_batches: int) -> float:
    start = time.perf_counter()
    next(iter(build_dataset(cfg, "train", skip_batches=skip_batches)))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        ann, image_dir = write_dataset(root, args.images)
        cfg = config.apply_overrides(config.preset("shapes"), {
            "data.train_annotations": ann, "data.train_images": image_dir, "data.cache_max_mb": 0,
            "train.batch_size": 2, "model.image_size": 512, "data.max_instances": 16})
        out = {}
        try:
            from mrcnn_tf2.pipelines import dataset_check

            for run in ("first", "cached"):
                start = time.perf_counter()
                dataset_check._MEMO.clear()
                dataset_check.load_checked(cfg, "train")
                out[f"checks_{run}_s"] = round(time.perf_counter() - start, 3)
        except ImportError:  # a checkout without the checks
            pass
        first_batch_seconds(cfg, 0)  # warm up TensorFlow
        skip = args.epochs * args.images // 2
        out.update({"images": args.images, "skipped_batches": skip,
                    "first_batch_s": round(first_batch_seconds(cfg, 0), 3),
                    "first_batch_after_skip_s": round(first_batch_seconds(cfg, skip), 3)})
        print(json.dumps(out))


if __name__ == "__main__":
    main()
