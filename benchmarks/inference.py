"""Inference latency and peak RSS: one preset with random weights, batch 1, graph mode, on the seeded image.

Prints JSON with the median and min seconds per image over ``--runs`` runs after ``--warmup``
warm-ups, and the process's peak RSS. Same image (``harness.seeded_image``), thresholds and proposal
counts as the torchvision peer (``benchmarks/torchvision_peer.py``: score threshold 0, 1000 proposals,
100 detections), so the two can be run side by side (``benchmarks/side_by_side.py`` alternates them):

    python benchmarks/inference.py --size 1024 --out tf.json                       # coco_r50_fpn, 1024 x 1024
    python benchmarks/inference.py --config torchvision_r50_fpn --image 480x640     # -> 800 x 1066 (pad 800 x 1088)
    python benchmarks/inference.py --config torchvision_r50_fpn_v2 --image 480x640 --precision bfloat16

``--image HxW`` is the original image; square presets resize it into ``--size`` x ``--size``, the
``torchvision_*`` presets resize it by its sides (short side 800, long side at most 1333) as torchvision does.
``--precision bfloat16`` sets Keras' ``mixed_bfloat16`` policy before building (outputs stay float32).
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)

import harness  # noqa: E402  (benchmarks/harness.py: seeded image, timing, RSS)
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from mrcnn_tf2.pipelines.preprocess import preprocess_image, side_resize  # noqa: E402

import mrcnn_tf2  # noqa: E402
from mrcnn_tf2 import build_model, config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="coco_r50_fpn")
    parser.add_argument("--size", type=int, default=1024, help="model.image_size (square presets)")
    parser.add_argument("--image", default=None, help="original image HEIGHTxWIDTH (default: SIZExSIZE)")
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--score-thresh", type=float, default=0.0)
    parser.add_argument("--pre-nms-topk", type=int, default=None,
                        help="model.detection.pre_nms_topk; raise it to get D detections from random weights")
    parser.add_argument("--winograd", choices=["on", "off"], default="on",
                        help="eval.winograd: Winograd 3x3 convolutions on large maps (CPU, float32)")
    parser.add_argument("--jit", action="store_true", help="XLA-compile the whole inference function")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    height, width = harness.parse_hw(args.image or str(args.size))

    overrides = {"model.image_size": args.size, "model.detection.score_threshold": args.score_thresh,
                 "eval.winograd": args.winograd == "on"}
    if args.pre_nms_topk:
        overrides["model.detection.pre_nms_topk"] = args.pre_nms_topk
    cfg = config.preset(args.config, overrides=overrides)
    if args.precision == "bfloat16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    tf.keras.utils.set_random_seed(0)
    model = build_model(cfg)
    # short_side presets (torchvision_*) resize the image by its sides, as torchvision's transform does.
    image, info = preprocess_image(tf.constant(harness.seeded_image(height, width)), args.size,
                                   cfg.model.pixel_normalization, resize=side_resize(cfg.model))
    images, infos = image[None], info[None]

    @tf.function(jit_compile=args.jit)
    def infer(x, i):
        return model(x, i)

    def run():
        out = infer(images, infos)
        out["num_detections"].numpy()  # wait for the result

    result = {"impl": "mrcnn-tf2", "config": args.config, "image_hw": [height, width],
              "input_hw": images.shape[1:3].as_list(), "batch": 1, "precision": args.precision,
              "winograd": args.winograd, "jit_compile": args.jit, "tf": tf.__version__,
              "package": os.path.dirname(mrcnn_tf2.__file__),
              **harness.env_info()}
    result.update(harness.time_runs(run, args.warmup, args.runs))
    out = infer(images, infos)
    result["num_detections"] = int(out["num_detections"][0])
    result["output_dtypes"] = sorted({v.dtype.name for v in out.values()})
    result["peak_rss_mib"] = harness.peak_rss_mib()
    harness.emit(result, args.out)


if __name__ == "__main__":
    main()
