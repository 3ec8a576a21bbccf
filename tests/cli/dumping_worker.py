"""``python tests/cli/dumping_worker.py OUT.npz main.py-flags...``: ``main.py`` with a test callback installed.

The multi-worker test runs each worker through this file: it wraps ``mrcnn_tf2.cli.train.TrainSession.train`` so that,
when training returns, this process's final model weights (``{weight.path: value}``) are written to
``OUT.npz``, then runs ``main.py`` as the command line would. Worker 1 removes its temporary checkpoints, so
its final weights can be seen only from inside the process; production code carries no hook for it.
"""

from __future__ import annotations

import os
import runpy
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _install(out: str) -> None:
    import numpy as np
    from mrcnn_tf2.cli import train

    real_train = train.TrainSession.train

    def train_and_dump(self, *args, **kwargs):
        logs = real_train(self, *args, **kwargs)
        np.savez(out, **{w.path: w.numpy() for w in self.model.weights})
        return logs

    train.TrainSession.train = train_and_dump


if __name__ == "__main__":
    sys.path[0] = ROOT  # as `python main.py` from the repository root (not tests/cli)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _install(sys.argv.pop(1))
    main = os.path.join(ROOT, "main.py")
    sys.argv[0] = main
    runpy.run_path(main, run_name="__main__")
