"""Peak memory of ``serving_default`` requests: the largest image allowed, and a decompression bomb refused.

Exports a ``shapes`` model (random weights) with ``export.max_image_pixels`` (default: the config's
40 MP), then serves each request in a fresh process (``tf.saved_model.load``, one small warm-up request)
and reports that process's peak RSS before and after the request, the request's wall time and its
outcome, as JSON:

- ``largest_allowed``: one PNG of exactly max_image_pixels pixels (a gradient; 8000 x 5000 at 40 MP);
- ``bomb_refused``: a PNG of a few kB whose header says 20000 x 20000 (refused before decoding);
- ``bomb_unchecked`` (``--unchecked``): a complete 20000 x 20000 bomb (1.2 MB) against an export whose
  limit is above it, i.e.
  what a model without the header check does with it (several GB: mind the machine's memory).

    python benchmarks/serving_memory.py [--max-pixels 40000000] [--unchecked] [--out serving_memory.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: kB


def _child(model_dir: str, image_file: str) -> None:
    """Loads the SavedModel, warms up on a small image, serves ``image_file``; prints one JSON line."""
    import numpy as np
    import tensorflow as tf

    serve = tf.saved_model.load(model_dir).signatures["serving_default"]
    serve(images=tf.constant([tf.io.encode_png(np.zeros([64, 96, 3], np.uint8)).numpy()]))
    before = _peak_rss_mb()
    with open(image_file, "rb") as f:
        encoded = f.read()
    start = time.perf_counter()
    try:
        out = serve(images=tf.constant([encoded]))
        outcome = f"ok: num_detections={out['num_detections'].numpy().tolist()}"
    except tf.errors.InvalidArgumentError as e:
        outcome = "INVALID_ARGUMENT: " + " ".join(e.message.split())[:240]
    seconds = time.perf_counter() - start
    print(json.dumps({"file_bytes": len(encoded), "peak_rss_before_mb": round(before, 1),
                      "peak_rss_after_mb": round(_peak_rss_mb(), 1), "seconds": round(seconds, 3),
                      "outcome": outcome}))


def _export(max_pixels: int, directory: str) -> str:
    import keras
    from mrcnn_tf2.export.saved_model import export_saved_model

    from mrcnn_tf2 import build_model, config

    keras.utils.set_random_seed(0)
    cfg = config.preset("shapes", overrides={"export.max_image_pixels": max_pixels,
                                             "data.category_ids": [1, 2, 3],
                                             "data.category_names": ["square", "circle", "triangle"]})
    return export_saved_model(build_model(cfg), cfg, directory)


def _largest_image(max_pixels: int, path: str) -> tuple[int, int]:
    """Writes a gradient PNG of h x w = max_pixels exactly (h * w <= max_pixels, as close as divisors allow)."""
    import numpy as np
    import tensorflow as tf

    w = int(math.sqrt(max_pixels * 8 / 5))
    while max_pixels % w:  # prefer an exact product
        w -= 1
    h = max_pixels // w
    row = np.linspace(0, 255, w, dtype=np.float32)
    image = np.empty([h, w, 3], np.uint8)
    image[..., 0] = row.astype(np.uint8)[None, :]
    image[..., 1] = np.linspace(0, 255, h, dtype=np.float32).astype(np.uint8)[:, None]
    image[..., 2] = 90
    image[h // 4: h // 2, w // 3: 2 * w // 3] = (230, 40, 40)
    with open(path, "wb") as f:
        f.write(tf.io.encode_png(image, compression=1).numpy())
    return h, w


def _serve(model_dir: str, image_file: str) -> dict:
    run = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", model_dir, image_file],
                         capture_output=True, text=True, timeout=1800, env=dict(os.environ, PYTHONPATH=_ROOT))
    if run.returncode != 0:
        return {"error": run.stderr[-1500:]}
    result = json.loads(run.stdout.strip().splitlines()[-1])
    result["request_peak_increase_mb"] = round(result["peak_rss_after_mb"] - result["peak_rss_before_mb"], 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-pixels", type=int, default=None, help="export.max_image_pixels (default: config's)")
    parser.add_argument("--unchecked", action="store_true", help="also serve the bomb with the limit above it")
    parser.add_argument("--out", default="")
    parser.add_argument("--child", nargs=2, metavar=("MODEL_DIR", "IMAGE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return

    from mrcnn_tf2 import config
    from tests.export.image_files import png_bomb

    max_pixels = args.max_pixels or config.preset("shapes").export.max_image_pixels
    work = tempfile.mkdtemp(prefix="serving-memory-")
    model_dir = _export(max_pixels, os.path.join(work, "exported"))
    largest = os.path.join(work, "largest.png")
    h, w = _largest_image(max_pixels, largest)
    bomb = os.path.join(work, "bomb.png")
    with open(bomb, "wb") as f:
        f.write(png_bomb(20000, 20000))

    report = {"max_image_pixels": max_pixels, "largest_allowed_hw": [h, w],
              "largest_allowed": _serve(model_dir, largest), "bomb_refused": _serve(model_dir, bomb)}
    if args.unchecked:  # a complete bomb (every row there), as the 1.1 MB file
        with open(bomb, "wb") as f:
            f.write(png_bomb(20000, 20000, rows=20000))
        report["bomb_unchecked"] = _serve(_export(10**12, os.path.join(work, "unchecked")), bomb)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
