"""Forward latency in float32 against bfloat16 (``--precision``), side by side in one process.

Both models hold the same random weights (``coco_r50_fpn`` by default, batch 1, graph mode); after
``--warmup`` calls each, the timed calls alternate float32, bfloat16, float32, ... (``--runs`` each), so
load from other processes hits both alike. Prints a JSON line with the median and min seconds per
image of each and the ratio of the medians::

    python benchmarks/precision.py --size 1024 --runs 4

bfloat16 is fast only where the CPU computes it natively (AVX512-BF16, AMX; ``lscpu | grep bf16``);
elsewhere oneDNN emulates it and it can be slower than float32.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from mrcnn_tf2 import config  # noqa: E402
from mrcnn_tf2.precision import build_inference_model  # noqa: E402
from pipelines.preprocess import preprocess_image, side_resize  # noqa: E402


def _image(size: int) -> np.ndarray:
    """A seeded [size, size, 3] uint8 picture: gradients, a few bright rectangles, noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    image = np.stack([yy * 255.0 / size, xx * 255.0 / size, np.full([size, size], 90.0)], -1)
    for _ in range(6):
        y, x = rng.integers(0, size * 3 // 4, 2)
        h, w = rng.integers(size // 16, size // 4, 2)
        image[y:y + h, x:x + w] = rng.integers(0, 255, 3)
    return np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="coco_r50_fpn")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--runs", type=int, default=4)
    args = parser.parse_args()

    cfg = config.preset(args.config, overrides={"model.image_size": args.size})
    tf.keras.utils.set_random_seed(0)
    models = {"float32": build_inference_model(cfg, "float32"), "bfloat16": build_inference_model(cfg, "bfloat16")}
    for target, source in zip(models["bfloat16"].weights, models["float32"].weights):
        target.assign(source)  # the same weights (float32 variables in both)
    image, info = preprocess_image(tf.constant(_image(args.size)), args.size, cfg.model.pixel_normalization,
                                   resize=side_resize(cfg.model))
    images, infos = image[None], info[None]
    fns = {name: tf.function(lambda x, i, m=model: m(x, i)) for name, model in models.items()}
    for fn in fns.values():
        for _ in range(args.warmup):
            {k: v.numpy() for k, v in fn(images, infos).items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(args.runs):
        for name, fn in fns.items():  # A B A B ...
            start = time.perf_counter()
            {k: v.numpy() for k, v in fn(images, infos).items()}
            times[name].append(time.perf_counter() - start)
    result = {"config": args.config, "size": args.size, "runs": args.runs,
              **{f"{name}_median_s": round(float(np.median(t)), 3) for name, t in times.items()},
              **{f"{name}_min_s": round(float(np.min(t)), 3) for name, t in times.items()},
              **{f"{name}_s": [round(x, 3) for x in t] for name, t in times.items()},
              "bfloat16_speedup": round(float(np.median(times["float32"]) / np.median(times["bfloat16"])), 2),
              "cpu_bf16": any("bf16" in line for line in open("/proc/cpuinfo")) if os.path.exists("/proc/cpuinfo")
              else None}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
