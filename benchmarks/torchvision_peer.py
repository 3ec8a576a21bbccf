"""The torchvision peer: ``maskrcnn_resnet50_fpn`` (v1) or ``_v2``, random weights, CPU inference.

Runs under a separate torch venv (never imported by the project; needs only torch, torchvision, NumPy):

    ~/venv-torch/bin/python benchmarks/torchvision_peer.py --variant v1 --image 480x640 --out tv.json
    ~/venv-torch/bin/python benchmarks/torchvision_peer.py --variant v1 --size 1024   # square, as the shared bench

``--image HxW``: torchvision's own transform (short side 800, long side at most 1333, padded to a multiple
of 32), as the ``torchvision_*`` presets. Without it, a ``--size`` square image with ``min_size = max_size =
size`` (the resize is the identity), as ``../shared/bench/bench_torchvision.py infer``. Score threshold
0, 1000 proposals, 100 detections. Reports ``median_excl_paste_s``: the latency without
``transform.postprocess`` (box rescaling and pasting every mask into the full image, which mrcnn-tf2's
model does not do), next to the total. ``--bfloat16`` runs under ``torch.autocast("cpu", torch.bfloat16)``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from torchvision.models import detection  # noqa: E402


def build(variant: str, min_size: int, max_size: int, score_thresh: float) -> torch.nn.Module:
    """Random-init Mask R-CNN (seed 0) with the benchmark's thresholds, in eval mode."""
    torch.manual_seed(0)
    factory = detection.maskrcnn_resnet50_fpn_v2 if variant == "v2" else detection.maskrcnn_resnet50_fpn
    return factory(weights=None, weights_backbone=None, num_classes=91, min_size=min_size, max_size=max_size,
                   rpn_pre_nms_top_n_test=1000, rpn_post_nms_top_n_test=1000, box_detections_per_img=100,
                   box_score_thresh=score_thresh, box_nms_thresh=0.5).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=["v1", "v2"], default="v1")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--image", default=None, help="HEIGHTxWIDTH: torchvision's 800/1333 transform")
    parser.add_argument("--bfloat16", action="store_true")
    parser.add_argument("--score-thresh", type=float, default=0.0)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.image:
        (height, width), min_size, max_size = harness.parse_hw(args.image), 800, 1333
    else:
        height = width = min_size = max_size = args.size
    model = build(args.variant, min_size, max_size, args.score_thresh)
    x = torch.from_numpy(harness.seeded_image(height, width)).permute(2, 0, 1).float().div(255.0)
    with torch.inference_mode():
        input_hw = list(model.transform([x])[0].tensors.shape[-2:])

    post_times = []
    postprocess = model.transform.postprocess

    def timed_postprocess(*a, **k):
        start = time.perf_counter()
        r = postprocess(*a, **k)
        post_times.append(time.perf_counter() - start)
        return r

    model.transform.postprocess = timed_postprocess
    out = {}

    def run():
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=args.bfloat16):
            out["o"] = model([x])

    result = {"impl": f"torchvision {args.variant}", "image_hw": [height, width], "input_hw": input_hw,
              "batch": 1, "precision": "bfloat16" if args.bfloat16 else "float32", "torch": torch.__version__,
              "torchvision": torchvision.__version__, "num_threads": torch.get_num_threads(),
              **harness.env_info()}
    result.update(harness.time_runs(run, args.warmup, args.runs))
    timed = result["all_s"]
    post = post_times[-len(timed):]
    result["postprocess_paste_median_s"] = round(statistics.median(post), 4)
    result["median_excl_paste_s"] = round(statistics.median([t - p for t, p in zip(timed, post)]), 4)
    result["num_detections"] = int(out["o"][0]["boxes"].shape[0])
    result["peak_rss_mib"] = harness.peak_rss_mib()
    harness.emit(result, args.out)


if __name__ == "__main__":
    main()
