"""Mask pasting speed: 100 box masks of 28 x 28 into a 640 x 480 image, NumPy and TF.

What the removed ``test_paste_masks_numpy_is_fast`` asserted (under 2 s; typically ~0.05 s), measured here
instead of in the test suite. Prints JSON with the median and min seconds over ``--runs`` runs.
Run: ``python benchmarks/paste_masks.py [--runs 20] [--masks 100]``.
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

from mrcnn_tf2.ops import mask_ops  # noqa: E402


def _timed(fn, runs: int) -> dict[str, float]:
    fn()  # warm-up (TF traces and allocates on the first call)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": float(np.median(times)), "min_s": float(np.min(times))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--masks", type=int, default=100)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    args = parser.parse_args()
    rng = np.random.default_rng(3)
    masks = rng.random((args.masks, 28, 28)).astype(np.float32)
    yx = rng.uniform(0, 400, (args.masks, 2))
    boxes = np.concatenate([yx, yx + rng.uniform(10, 200, (args.masks, 2))], -1).astype(np.float32)
    result = {
        "masks": args.masks, "image": [args.height, args.width],
        "paste_masks_numpy": _timed(lambda: mask_ops.paste_masks_numpy(masks, boxes, args.height, args.width),
                                    args.runs),
        "paste_masks_tf": _timed(lambda: mask_ops.paste_masks(masks, boxes, args.height, args.width).numpy(),
                                 args.runs),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
