"""Training-step throughput: seconds per step, images per second and peak memory.

One measurement per process (so the peak RSS belongs to it):

    python benchmarks/train_step.py --size 512 --batch 1 --out tf.json            # FP32, graph mode
    python benchmarks/train_step.py --size 512 --batch 1 --norm bn                # torchvision's setup
    python benchmarks/train_step.py --size 1024 --batch 2 --mixed_precision bfloat16 --jit
    python benchmarks/train_step.py --matrix                                      # every combination, a table

The data are those of ``../shared/bench/bench_torchvision.py train`` (the seeded image, two boxes with
elliptical masks, classes 1 and 3), so the two can be run side by side:

    ~/venv-torch/bin/python ../shared/bench/bench_torchvision.py train --size 512 --out tv.json

torchvision's model there has trainable batch norm in every layer (no ImageNet weights); ``--norm bn``
matches that, the preset's default (``frozen_bn``, the ImageNet-initialised recipe) is cheaper.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)

import harness  # noqa: E402  (benchmarks/harness.py: the peer benchmarks' seeded data, timing, RSS)
import numpy as np  # noqa: E402


def make_batch(size: int, batch: int, mask_size: int, max_instances: int, pixel_normalization: str) -> dict:
    """The peer benchmark's image and targets in our batch contract (DESIGN.md section 3)."""
    import tensorflow as tf
    from mrcnn_tf2.pipelines.mask_to_box import crop_masks_to_boxes
    from mrcnn_tf2.pipelines.preprocess import preprocess_image

    image, info = preprocess_image(tf.constant(harness.seeded_image(size)), size, pixel_normalization)
    boxes_xyxy, classes, masks = harness.synthetic_targets(size)
    boxes = boxes_xyxy[:, [1, 0, 3, 2]].astype(np.float32)
    crops = crop_masks_to_boxes(tf.constant(masks.astype(np.float32)), tf.constant(boxes), mask_size).numpy()
    n = len(classes)
    gt_boxes = np.zeros([max_instances, 4], np.float32)
    gt_classes = -np.ones([max_instances], np.int32)
    gt_masks = np.zeros([max_instances, mask_size, mask_size], np.float32)
    gt_boxes[:n], gt_classes[:n], gt_masks[:n] = boxes, classes, crops
    rep = lambda x: np.repeat(np.asarray(x)[None], batch, axis=0)  # noqa: E731
    return {"images": rep(image), "image_info": rep(info), "gt_boxes": rep(gt_boxes),
            "gt_classes": rep(gt_classes), "gt_masks": rep(gt_masks)}


def measure(args: argparse.Namespace) -> dict:
    import keras
    import tensorflow as tf

    if args.mixed_precision:
        keras.mixed_precision.set_global_policy(f"mixed_{args.mixed_precision}")
    from mrcnn_tf2 import build_model, config

    overrides = {"model.image_size": args.size}
    if args.norm:
        overrides["model.norm"] = args.norm
    cfg = config.preset(args.config, overrides=overrides)
    tf.keras.utils.set_random_seed(0)
    model = build_model(cfg)
    optimizer = keras.optimizers.SGD(learning_rate=1e-3, momentum=0.9, weight_decay=1e-4)
    if args.mixed_precision == "float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer, jit_compile=False)
    optimizer.build(model.trainable_variables)
    model.jit_compile = args.jit
    data = make_batch(args.size, args.batch, cfg.data.gt_mask_size, cfg.data.max_instances,
                      cfg.model.pixel_normalization)
    data = {k: tf.constant(v) for k, v in data.items()}
    step = tf.function(model.train_step)
    logs = {}

    def run():
        for tracker in model.metrics:
            tracker.reset_state()
        out = step(data)
        logs.update({k: float(v) for k, v in out.items()})

    result = {"impl": "mrcnn-tf2", "config": args.config, "size": args.size, "batch": args.batch,
              "norm": cfg.model.norm, "mixed_precision": args.mixed_precision or "float32", "jit_compile": args.jit,
              "tf": tf.__version__, "gpu": bool(tf.config.list_physical_devices("GPU")), **harness.env_info()}
    result.update(harness.time_runs(run, args.warmup, args.runs))
    result["images_per_sec"] = round(args.batch / result["median_s"], 3)
    result["losses_last"] = logs
    result["trainable_params"] = int(sum(np.prod(v.shape) for v in model.trainable_variables))
    result["peak_rss_mib"] = harness.peak_rss_mib()
    if result["gpu"]:
        result["peak_gpu_mib"] = round(tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20, 1)
    return result


def matrix(args: argparse.Namespace) -> None:
    """Every size x batch x precision x XLA combination, each in its own process; prints a table."""
    import tensorflow as tf

    precisions = ["", "float16"] if tf.config.list_physical_devices("GPU") else ["", "bfloat16"]
    rows = []
    for size in args.sizes:
        for batch in args.batches:
            for precision in precisions:
                for jit in args.jit_options:
                    cmd = [sys.executable, __file__, "--size", str(size), "--batch", str(batch),
                           "--runs", str(args.runs), "--warmup", str(args.warmup), "--config", args.config]
                    cmd += ["--mixed_precision", precision] if precision else []
                    cmd += ["--jit"] if jit else []
                    cmd += ["--norm", args.norm] if args.norm else []
                    proc = subprocess.run(cmd, capture_output=True, text=True)
                    try:
                        r = json.loads(proc.stdout[proc.stdout.index("{"):])
                        rows.append((size, batch, precision or "float32", jit, f"{r['median_s']:.3f}",
                                     f"{r['images_per_sec']:.2f}", f"{r['peak_rss_mib']:.0f}",
                                     f"{r.get('peak_gpu_mib', 0):.0f}"))
                    except ValueError:
                        rows.append((size, batch, precision or "float32", jit, "failed", "-", "-", "-"))
                    print(" | ".join(str(c) for c in rows[-1]), flush=True)
    print("\n| size | batch | precision | XLA | s/step | img/s | peak RSS MiB | peak GPU MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="coco_r50_fpn")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--norm", default="", help="override model.norm (bn = torchvision's benchmark setup)")
    parser.add_argument("--mixed_precision", default="", choices=["", "float16", "bfloat16"])
    parser.add_argument("--jit", action="store_true", help="XLA-compile forward, losses and gradients")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--matrix", action="store_true", help="run every combination, one process each")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024], help="--matrix: image sizes")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2], help="--matrix: batch sizes")
    parser.add_argument("--jit_options", type=int, nargs="+", default=[0, 1], help="--matrix: XLA off (0) / on (1)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    args.jit_options = [bool(j) for j in args.jit_options]
    if args.matrix:
        matrix(args)
        return
    harness.emit(measure(args), args.out)


if __name__ == "__main__":
    main()
