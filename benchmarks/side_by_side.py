"""mrcnn-tf2 against torchvision, side by side: A B A B in fresh processes, then a table of ratios.

Each measurement is one process (so peak RSS is per measurement): ``benchmarks/inference.py`` under this
Python, ``benchmarks/torchvision_peer.py`` under ``--torch-python`` (a venv with torch 2.14.1 and
torchvision 0.29.1). Cases (``--cases``, comma separated):

- ``v1``: ``torchvision_r50_fpn`` vs ``maskrcnn_resnet50_fpn``, seeded 480x640 photo (-> 800 x 1066, pad 800 x 1088);
- ``v2``: ``torchvision_r50_fpn_v2`` vs ``maskrcnn_resnet50_fpn_v2``, same photo;
- ``coco1024``: ``coco_r50_fpn`` at 1024 x 1024 vs ``maskrcnn_resnet50_fpn`` at 1024 (the shared bench's setup).

    python benchmarks/side_by_side.py --cases v1,v2,coco1024 --rounds 2 --out sbs.json
    python benchmarks/side_by_side.py --cases v1,v2 --precision bfloat16
    python benchmarks/side_by_side.py --cases v1,v2 --winograd both    # ours without and with Winograd

The ratio is our median over torchvision's median excluding mask pasting (``median_excl_paste_s``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))

CASES = {
    "v1": (["--config", "torchvision_r50_fpn", "--image", "480x640"], ["--variant", "v1", "--image", "480x640"]),
    "v2": (["--config", "torchvision_r50_fpn_v2", "--image", "480x640"], ["--variant", "v2", "--image", "480x640"]),
    "coco1024": (["--config", "coco_r50_fpn", "--size", "1024"], ["--variant", "v1", "--size", "1024"]),
}


def _run(command: list[str]) -> dict:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": done.stderr[-2000:], "command": command}
    text = done.stdout
    return json.loads(text[text.index("{"):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="v1,v2,coco1024")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--torch-precision", choices=["float32", "bfloat16"], default=None,
                        help="torchvision's precision (default: --precision)")
    parser.add_argument("--torch-python", default=os.path.expanduser("~/venv-torch/bin/python"))
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--winograd", choices=["on", "off", "both"], default="on",
                        help="our eval.winograd; both: each round times ours without, ours with, then torchvision")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    common = ["--warmup", str(args.warmup), "--runs", str(args.runs)]
    torch_precision = args.torch_precision or args.precision
    results = []
    for case in args.cases.split(","):
        ours, theirs = CASES[case]
        for round_ in range(1, args.rounds + 1):
            ours_runs = [_run([sys.executable, os.path.join(_HERE, "inference.py"), *ours, *common,
                               "--precision", args.precision, "--winograd", winograd])
                         for winograd in (("off", "on") if args.winograd == "both" else (args.winograd,))]
            b = _run([args.torch_python, os.path.join(_HERE, "torchvision_peer.py"), *theirs, *common,
                      *(["--bfloat16"] if torch_precision == "bfloat16" else [])])
            for a in ours_runs:
                results.append({"case": case, "round": round_, "ours": a, "torchvision": b})
                print(_row(results[-1]), flush=True)
    print("\n| case | round | ours median s | tv median s (excl. paste) | ratio | ours RSS MiB | tv RSS MiB | "
          "RSS ratio |\n|---|---|---|---|---|---|---|---|")
    for r in results:
        print(_row(r))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


def _row(r: dict) -> str:
    a, b = r["ours"], r["torchvision"]
    if "error" in a or "error" in b:
        return f"| {r['case']} | {r['round']} | error: {(a.get('error') or b.get('error'))[-300:]!r} |"
    ratio = a["median_s"] / b["median_excl_paste_s"]
    rss = a["peak_rss_mib"] / b["peak_rss_mib"]
    label = f"{a['precision']}{', winograd ' + a['winograd'] if 'winograd' in a else ''}/{b['precision']}"
    return (f"| {r['case']} ({label}, {a['input_hw']}/{b['input_hw']}) | {r['round']} | "
            f"{a['median_s']:.3f} | {b['median_excl_paste_s']:.3f} | {ratio:.2f} | {a['peak_rss_mib']:.0f} | "
            f"{b['peak_rss_mib']:.0f} | {rss:.2f} |")


if __name__ == "__main__":
    main()
