"""How good the ``shapes`` recipe gets on a CPU in a fixed wall-clock budget.

Trains the ``shapes`` preset from scratch (``--model=none``, the CLI's training path) for ``--minutes``
of training time (the loop's wall clock from its start, graph tracing and checkpoints included,
evaluations excluded) and prints box and mask AP / AP50 on the validation split (50 images) at each
``--eval_at`` mark and at the end. The target (issue 4): segm AP50 >= 0.5 after 10 minutes on 2 cores.

    python benchmarks/shapes_quality.py                       # 10 minutes, evaluations at 5 and 10
    python benchmarks/shapes_quality.py --minutes=3 --eval_at=1,2 --config_override=train.batch_size=4

The preset's ``train.steps`` sets the LR schedule (cosine) and is an upper bound; the run stops at the
budget. Figures depend on the machine and on what else runs on it: the throughput line says how
many images per second this run got.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mrcnn_tf2.cli import train as train_cli  # noqa: E402
from mrcnn_tf2.cli.common import RunArgs, prepare  # noqa: E402

from mrcnn_tf2 import trainer  # noqa: E402


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training-time budget")
    parser.add_argument("--eval_at", default="5", help="comma-separated minutes to evaluate at (and at the end)")
    parser.add_argument("--config", default="shapes")
    parser.add_argument("--config_override", action="append", default=[])
    parser.add_argument("--data_dir", default="data/shapes")
    parser.add_argument("--model_dir", default="", help="default: a temporary folder, removed afterwards")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="shapes_quality_") as tmp:
        model_dir = args.model_dir or os.path.join(tmp, "run")
        prep = prepare(RunArgs(mode="train", config=args.config, config_override=args.config_override,
                               model="none", model_dir=model_dir, data_dir=args.data_dir, verbose=False))
        session = train_cli.setup(prep)
        cfg = session.cfg
        session.options.max_seconds = args.minutes * 60.0
        session.options.eval_at_seconds = [float(m) * 60.0 for m in args.eval_at.split(",") if m.strip()]
        session.options.checkpoint_every = 10**9  # only the final checkpoint
        session.options.steps_per_epoch = 0
        session.options.verbose = False
        rows: list[dict[str, float]] = []
        start = time.perf_counter()
        eval_seconds = [0.0]

        def eval_fn(step: int) -> trainer.EvalOutput:
            tic = time.perf_counter()
            minutes = (tic - start - eval_seconds[0]) / 60.0
            out = session.evaluate(step, verbose=False)
            s = out.scalars
            rows.append({"minutes": minutes, "step": step, "bbox_AP": s["bbox/AP"], "bbox_AP50": s["bbox/AP50"],
                         "segm_AP": s["segm/AP"], "segm_AP50": s["segm/AP50"]})
            print(f"{minutes:7.1f} {step:6d} {step * cfg.train.batch_size / (minutes * 60):6.1f} "
                  f"{s['bbox/AP']:8.3f} {s['bbox/AP50']:9.3f} {s['segm/AP']:8.3f} {s['segm/AP50']:9.3f}", flush=True)
            eval_seconds[0] += time.perf_counter() - tic
            return out

        session.eval_fn = eval_fn
        print(f"shapes quality: config {args.config} {' '.join(args.config_override)}, batch "
              f"{cfg.train.batch_size}, lr {cfg.train.learning_rate}, schedule {cfg.train.schedule} over "
              f"{cfg.train.steps} steps, budget {args.minutes:g} min, {os.cpu_count()} CPUs", flush=True)
        print("minutes   step  img/s  bbox AP  bbox AP50  segm AP  segm AP50", flush=True)
        logs = session.train()
        if not rows or rows[-1]["step"] != int(logs["step"]):
            eval_fn(int(logs["step"]))
        final = rows[-1]
        verdict = "meets" if final["segm_AP50"] >= 0.5 else "misses"
        print(f"final segm AP50 {final['segm_AP50']:.3f} after {final['minutes']:.1f} min: {verdict} the 0.5 target",
              flush=True)
        return rows


if __name__ == "__main__":
    main()
