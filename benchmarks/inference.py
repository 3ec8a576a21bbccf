"""Inference latency: coco_r50_fpn with random weights, batch 1, graph mode, on the seeded image.

Prints JSON with the median and min seconds per image over ``--runs`` runs after ``--warmup``
warm-ups, and the peak RSS. Same image, thresholds and proposal counts as
``../shared/bench/bench_torchvision.py infer`` (score threshold 0, 1000 proposals, 100 detections),
so the two can be run side by side:

    python benchmarks/inference.py --size 1024 --out tf.json
    ~/venv-torch/bin/python ../shared/bench/bench_torchvision.py infer --size 1024 --out tv.json
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
_SHARED = os.path.join(os.path.dirname(os.path.dirname(_HERE)), "shared", "bench")
sys.path.insert(0, _SHARED)

import common  # noqa: E402  (../shared/bench/common.py: seeded image, timing, RSS)
import tensorflow as tf  # noqa: E402
from mrcnn_tf2.pipelines.preprocess import preprocess_image, side_resize  # noqa: E402

from mrcnn_tf2 import build_model, config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="coco_r50_fpn")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--score-thresh", type=float, default=0.0)
    parser.add_argument("--pre-nms-topk", type=int, default=None,
                        help="model.detection.pre_nms_topk; raise it to get D detections from random weights")
    parser.add_argument("--jit", action="store_true", help="XLA-compile the whole inference function")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    overrides = {"model.image_size": args.size, "model.detection.score_threshold": args.score_thresh}
    if args.pre_nms_topk:
        overrides["model.detection.pre_nms_topk"] = args.pre_nms_topk
    cfg = config.preset(args.config, overrides=overrides)
    tf.keras.utils.set_random_seed(0)
    model = build_model(cfg)
    # short_side presets (torchvision_*) resize the image by its sides, as torchvision's transform does.
    image, info = preprocess_image(tf.constant(common.seeded_image(args.size)), args.size,
                                   cfg.model.pixel_normalization, resize=side_resize(cfg.model))
    images, infos = image[None], info[None]

    @tf.function(jit_compile=args.jit)
    def infer(x, i):
        return model(x, i)

    def run():
        out = infer(images, infos)
        out["num_detections"].numpy()  # wait for the result

    result = {"impl": "mrcnn-tf2", "config": args.config, "size": args.size, "batch": 1,
              "jit_compile": args.jit, "tf": tf.__version__, **common.env_info()}
    result.update(common.summarize(common.time_runs(run, args.warmup, args.runs)))
    result["num_detections"] = int(infer(images, infos)["num_detections"][0])
    result["peak_rss_mib"] = round(common.peak_rss_mib(), 1)
    common.emit(result, args.out)


if __name__ == "__main__":
    main()
