"""TFLite (LiteRT) against the SavedModel: file sizes and latency per image, measured side by side.

Reads an export folder holding SavedModel versions and ``tflite/model_<quantize>.tflite`` files (from
``python main.py --mode=export`` and ``--mode=export --format=tflite --quantize=...``), then runs each on
the same S x S uint8 images in rounds (SavedModel, none, float16, dynamic, int8, SavedModel, none, ...),
so machine load hits every variant alike. Prints one JSON line per variant: bytes on disk, median and
min seconds per image, and the median's ratio to the SavedModel's::

    python benchmarks/tflite_latency.py --export_dir exported/shapes --images 'data/shapes/images/val/*.png'

The SavedModel runs its ``serve_image_tensor`` signature in TensorFlow with ``--threads`` intra-op
threads; LiteRT runs with ``num_threads=--threads`` and its default XNNPACK delegate.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def _bytes(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export_dir", required=True)
    parser.add_argument("--images", required=True, help="a glob of S x S images (the TFLite input size)")
    parser.add_argument("--rounds", type=int, default=5, help="passes over the images per variant")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from ai_edge_litert.interpreter import Interpreter

    versions = sorted((d for d in os.listdir(args.export_dir) if d.isdigit()), key=int)
    saved_model = os.path.join(args.export_dir, versions[-1])
    serve = tf.saved_model.load(saved_model).signatures["serve_image_tensor"]
    images = [tf.io.decode_image(tf.io.read_file(p), channels=3).numpy()[None] for p in sorted(glob.glob(args.images))]
    runners = {"saved_model": (lambda x: serve(images=tf.constant(x))["num_detections"].numpy(), saved_model)}
    for quantize in ("none", "float16", "dynamic", "int8"):
        path = os.path.join(args.export_dir, "tflite", f"model_{quantize}.tflite")
        if os.path.isfile(path):
            runner = Interpreter(model_path=path, num_threads=args.threads).get_signature_runner()
            runners[f"tflite_{quantize}"] = (lambda x, r=runner: r(images=x)["num_detections"], path)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for run, _ in runners.values():  # warm-up
        run(images[0])
    for _ in range(args.rounds):
        for name, (run, _) in runners.items():
            for image in images:
                start = time.perf_counter()
                run(image)
                times[name].append(time.perf_counter() - start)
    base = float(np.median(times["saved_model"]))
    for name, (_, path) in runners.items():
        median = float(np.median(times[name]))
        print(json.dumps({"variant": name, "bytes": _bytes(path), "median_s": round(median, 4),
                          "min_s": round(float(np.min(times[name])), 4),
                          "median_vs_saved_model": round(median / base, 3), "images": len(images),
                          "rounds": args.rounds}))


if __name__ == "__main__":
    main()
