"""Forward latency in float32 against bfloat16 (``--precision``), side by side in one process.

Both models hold the same random weights (``coco_r50_fpn`` by default, batch 1, graph mode); after
``--warmup`` calls each, the timed calls alternate float32, bfloat16, float32, ... (``--runs`` each), so
load from other processes hits both alike. Prints a JSON line with the median and min seconds per
image of each and the ratio of the medians::

    python benchmarks/precision.py --size 1024 --runs 4

With ``--run DIR --images GLOB`` it compares instead the detections of a trained run (``Detector.from_run``
in both precisions, same checkpoint) on the images: each detection scoring at least ``--min-score`` in
one precision is matched to the same-class detection of highest IoU in the other; prints how many match
at IoU >= 0.9 and the score differences of those::

    python benchmarks/precision.py --run logs/shapes --images 'data/shapes/images/val/*'

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
from mrcnn_tf2.pipelines.preprocess import preprocess_image, side_resize  # noqa: E402

from mrcnn_tf2 import config  # noqa: E402
from mrcnn_tf2.precision import build_inference_model  # noqa: E402


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


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, M] IoU of y1x1y2x2 boxes."""
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(br - tl, 0, None), axis=-1)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=-1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def agreement(run: str, pattern: str, min_score: float) -> dict:
    """Detections of ``run`` in float32 against bfloat16 on the files of ``pattern`` (see the module docstring)."""
    import glob

    from mrcnn_tf2 import Detector

    files = sorted(glob.glob(pattern))
    results = {p: Detector.from_run(run, precision=p).detect(files) for p in ("float32", "bfloat16")}
    compared, matched, ious, score_diffs = 0, 0, [], []
    for full, low in zip(results["float32"], results["bfloat16"]):
        for mine, other in ((full, low), (low, full)):
            for box, category, score in zip(mine.boxes, mine.category_ids, mine.scores):
                if score < min_score:
                    continue
                compared += 1
                same = other.category_ids == category
                iou = _box_iou(box[None], other.boxes[same])[0] if same.any() else np.zeros(1)
                best = int(iou.argmax())
                ious.append(float(iou[best]))
                if iou[best] >= 0.9:
                    matched += 1
                    score_diffs.append(abs(float(score) - float(other.scores[same][best])))
    diffs = np.asarray(score_diffs or [np.nan])
    return {"run": run, "images": len(files), "min_score": min_score, "detections_compared": compared,
            "matched_iou_0.9": matched, "lowest_best_iou": round(min(ious), 3) if ious else None,
            "score_diff_median": round(float(np.median(diffs)), 4),
            "score_diff_p99": round(float(np.percentile(diffs, 99)), 4), "score_diff_max": round(float(diffs.max()), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="coco_r50_fpn")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--run", default="", help="a trained run directory: compare its detections instead")
    parser.add_argument("--images", default="", help="with --run: a glob of images")
    parser.add_argument("--min-score", type=float, default=0.5)
    args = parser.parse_args()
    if args.run:
        print(json.dumps(agreement(args.run, args.images, args.min_score)))
        return

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
