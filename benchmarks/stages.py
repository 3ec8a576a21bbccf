"""Where the inference time goes: per-stage latency of mrcnn-tf2 or torchvision, and the machine's FP32 ceiling.

One implementation per process (their thread pools would compete), random weights, batch 1, the seeded
480 x 640 photo resized by its sides to 800 x 1066 (padded to 800 x 1088), score threshold 0, 1000 proposals,
100 detections, as ``benchmarks/side_by_side.py``:

    python benchmarks/stages.py --impl tf --variant v2            # ours: each stage in its own tf.function
    python benchmarks/stages.py --impl torchvision --variant v2   # hooks on torchvision's modules; GFLOP per stage
    python benchmarks/stages.py --impl gemm                       # 4096^3 float32 matmul, TF and torch: GFLOP/s

Stages of ours are timed as separate graphs on inputs of the real shapes (the box head on [1, 1000, 7, 7, 256],
the mask head on [1, 100, 14, 14, 256]); torchvision's are timed inside one full run with forward hooks. The
torchvision side also counts FLOPs (``torch.utils.flop_counter``: 2 per multiply-add of convolutions and matrix
products; both models do the same arithmetic), so that FLOPs / ceiling gives a floor on the latency of either.
torch is imported only with ``--impl torchvision|gemm`` (the ``test`` or ``torch`` extra).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)

import harness  # noqa: E402

PRESETS = {"v1": "torchvision_r50_fpn", "v2": "torchvision_r50_fpn_v2"}


def _median_seconds(fn, warmup: int, runs: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 4)


def tf_stages(variant: str, warmup: int, runs: int) -> dict:
    import tensorflow as tf
    from mrcnn_tf2.pipelines.preprocess import preprocess_image, side_resize

    from mrcnn_tf2 import build_model, config

    cfg = config.preset(PRESETS[variant], overrides={"model.detection.score_threshold": 0.0})
    tf.keras.utils.set_random_seed(0)
    model = build_model(cfg)
    image, info = preprocess_image(tf.constant(harness.seeded_image(480, 640)), cfg.model.image_size,
                                   cfg.model.pixel_normalization, resize=side_resize(cfg.model))
    images, infos = image[None], info[None]
    box_rois = tf.random.stateless_uniform([1, 1000, 7, 7, 256], [0, 1])
    mask_rois = tf.random.stateless_uniform([1, 100, 14, 14, 256], [0, 2])
    mask_classes = tf.random.stateless_uniform([1, 100], [0, 3], 1, 91, tf.int32)
    graphs = {
        "full": lambda: model(images, infos),
        "backbone": lambda: model.backbone(images, training=False),
        "backbone+fpn": lambda: model._features(images, training=False),
        "backbone+fpn+rpn_head": lambda: model.rpn_head(model._features(images, training=False), training=False),
        "box_head_1000_rois": lambda: model.box_head(box_rois),
        "mask_head_100_rois": lambda: model.mask_head(mask_rois, mask_classes),
    }

    def runner(fn):
        graph = tf.function(fn)
        return lambda: [t.numpy() for t in tf.nest.flatten(graph())]

    return {"impl": "mrcnn-tf2", "variant": variant, "input_hw": images.shape[1:3].as_list(),
            "median_s": {name: _median_seconds(runner(fn), warmup, runs) for name, fn in graphs.items()}}


def torchvision_stages(variant: str, warmup: int, runs: int) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from torchvision.models import detection

    torch.manual_seed(0)
    factory = detection.maskrcnn_resnet50_fpn_v2 if variant == "v2" else detection.maskrcnn_resnet50_fpn
    model = factory(weights=None, weights_backbone=None, num_classes=91, rpn_pre_nms_top_n_test=1000,
                    rpn_post_nms_top_n_test=1000, box_detections_per_img=100, box_score_thresh=0.0).eval()
    x = torch.from_numpy(harness.seeded_image(480, 640)).permute(2, 0, 1).float().div(255.0)
    heads = model.roi_heads
    modules = {"backbone": model.backbone.body, "backbone+fpn": model.backbone, "rpn_head": model.rpn.head,
               "rpn (head, anchors, proposals)": model.rpn, "box_roi_align": heads.box_roi_pool,
               "box_head": heads.box_head, "box_predictor": heads.box_predictor,
               "mask_roi_align": heads.mask_roi_pool, "mask_head": heads.mask_head,
               "mask_predictor": heads.mask_predictor, "postprocess (paste)": None}
    seconds: dict[str, list[float]] = {name: [] for name in modules}
    started: dict[str, float] = {}
    for name, module in modules.items():
        if module is None:
            continue
        module.register_forward_pre_hook(lambda *_, n=name: started.__setitem__(n, time.perf_counter()))
        module.register_forward_hook(lambda *_, n=name: seconds[n].append(time.perf_counter() - started[n]))
    postprocess = model.transform.postprocess

    def timed_postprocess(*args, **kwargs):
        start = time.perf_counter()
        out = postprocess(*args, **kwargs)
        seconds["postprocess (paste)"].append(time.perf_counter() - start)
        return out

    model.transform.postprocess = timed_postprocess
    with torch.inference_mode():
        full = _median_seconds(lambda: model([x]), warmup, runs)
        flops = FlopCounterMode(display=False, depth=4)
        with flops:
            model([x])
    stages = {name: round(statistics.median(values[-runs:]), 4) for name, values in seconds.items() if values}
    counts = flops.get_flop_counts()
    gflop = {name: round(sum(counts.get(f"MaskRCNN.{path}", {}).values()) / 1e9, 1) for name, path in (
        ("backbone", "backbone.body"), ("fpn", "backbone.fpn"), ("rpn_head", "rpn.head"),
        ("box_head", "roi_heads.box_head"), ("box_predictor", "roi_heads.box_predictor"),
        ("mask_head", "roi_heads.mask_head"), ("mask_predictor", "roi_heads.mask_predictor"))}
    return {"impl": "torchvision", "variant": variant, "torchvision": __import__("torchvision").__version__,
            "median_s": {"full": full, "full_excl_paste": round(full - stages["postprocess (paste)"], 4), **stages},
            "gflop": {"total": round(flops.get_total_flops() / 1e9, 1), **gflop}}


def gemm_ceiling(runs: int) -> dict:
    import tensorflow as tf
    import torch

    n = 4096
    a, b = tf.random.stateless_normal([n, n], [0, 1]), tf.random.stateless_normal([n, n], [0, 2])
    matmul = tf.function(lambda: tf.matmul(a, b))
    ta, tb = torch.randn(n, n), torch.randn(n, n)
    best = {}
    for name, fn in (("tf", lambda: matmul().numpy()), ("torch", lambda: torch.mm(ta, tb))):
        fn()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        best[name] = round(2 * n**3 / min(times) / 1e9, 1)
    return {"impl": "gemm", "n": n, "best_gflop_per_s": best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", choices=["tf", "torchvision", "gemm"], default="tf")
    parser.add_argument("--variant", choices=sorted(PRESETS), default="v1")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.impl == "tf":
        result = tf_stages(args.variant, args.warmup, args.runs)
    elif args.impl == "torchvision":
        result = torchvision_stages(args.variant, args.warmup, args.runs)
    else:
        result = gemm_ceiling(max(args.runs, 3))
    result.update(harness.env_info())
    result["peak_rss_mib"] = harness.peak_rss_mib()
    harness.emit(result, args.out)


if __name__ == "__main__":
    main()
