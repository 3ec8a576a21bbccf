"""Benchmark plumbing shared by the scripts in ``benchmarks/``: the seeded image, timing, peak RSS, JSON.

Standard library and NumPy only, so that the torchvision peer (``benchmarks/torchvision_peer.py``, run
under a separate torch venv) imports it too. Nothing here needs ``../shared``.

The seeded image is the peer benchmarks' image: ``numpy.random.default_rng(seed).integers(0, 256,
size=(height, width, 3), dtype=uint8)``; for ``height == width`` it equals ``../shared/bench/common.py``'s
``seeded_image(size)`` value for value (``tests/test_benchmarks.py`` checks it when ``../shared`` exists).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

__all__ = ["emit", "env_info", "parse_hw", "peak_rss_mib", "seeded_image", "summarize", "synthetic_targets",
           "time_runs"]


def seeded_image(height: int, width: int | None = None, seed: int = 0) -> np.ndarray:
    """A fixed random uint8 RGB image ``[height, width, 3]`` (``width`` defaults to ``height``)."""
    width = height if width is None else width
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def synthetic_targets(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The peer benchmarks' two ground-truth instances on a ``size x size`` image.

    Returns:
        ``boxes [2, 4]`` float32 x1y1x2y2 pixels (fractions 0.10 0.15 0.45 0.55 and 0.50 0.40 0.90 0.85 of
        ``size``), ``classes [2]`` int64 (1, 3) and ``masks [2, size, size]`` uint8: the ellipse inscribed
        in each box (corners truncated to integer pixels), 1 inside.
    """
    fractions = np.array([[0.10, 0.15, 0.45, 0.55], [0.50, 0.40, 0.90, 0.85]], np.float32)
    boxes = (fractions * np.float32(size)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    masks = np.zeros((2, size, size), np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
        centre_y, centre_x, radius_y, radius_x = (y1 + y2) / 2, (x1 + x2) / 2, (y2 - y1) / 2, (x2 - x1) / 2
        masks[i] = ((yy - centre_y) / radius_y) ** 2 + ((xx - centre_x) / radius_x) ** 2 <= 1.0
    return boxes, np.array([1, 3], np.int64), masks


def parse_hw(text: str) -> tuple[int, int]:
    """``"480x640"`` -> ``(480, 640)`` (height x width); ``"1024"`` -> ``(1024, 1024)``."""
    parts = text.lower().split("x")
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"image size must be HEIGHTxWIDTH or SIDE in pixels, got {text!r}")
    return int(parts[0]), int(parts[1])


def _machine_jiffies() -> tuple[int, int] | None:
    """(busy, total) CPU jiffies of the whole machine from /proc/stat, or None."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


def time_runs(fn: Callable[[], object], warmup: int, runs: int) -> dict:
    """Calls ``fn`` ``warmup`` times, then times ``runs`` calls.

    Returns ``{"all_s": [...], "median_s", "min_s", "own_cpu_s_per_run", "foreign_busy_frac"}``; the last
    is the share of the machine's CPU time used by other processes during the timed runs (contention).
    """
    for _ in range(warmup):
        fn()
    times = []
    jiffies0, cpu0 = _machine_jiffies(), os.times()
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    jiffies1, cpu1 = _machine_jiffies(), os.times()
    own = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    result = summarize(times)
    result["own_cpu_s_per_run"] = round(own / max(runs, 1), 4)
    if jiffies0 and jiffies1:
        hz = os.sysconf("SC_CLK_TCK")
        busy, total = (jiffies1[0] - jiffies0[0]) / hz, (jiffies1[1] - jiffies0[1]) / hz
        result["foreign_busy_frac"] = round(max(busy - own, 0.0) / total, 3) if total else None
    return result


def summarize(times: list[float]) -> dict:
    """Median, min and every value (seconds) of a list of timings."""
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4),
            "all_s": [round(t, 4) for t in times]}


def peak_rss_mib() -> float:
    """This process's peak resident set size so far, MiB (Linux ``ru_maxrss`` is in KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def env_info() -> dict:
    """Python version, machine, CPU count and the load average at the start."""
    return {"python": sys.version.split()[0], "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "loadavg_start": list(os.getloadavg())}


def emit(result: dict, out_path: str | None = None) -> None:
    """Adds the final load average, prints ``result`` as JSON and writes it to ``out_path`` if given."""
    result["loadavg_end"] = list(os.getloadavg())
    text = json.dumps(result, indent=1, default=str)
    print(text)
    if out_path:
        with open(out_path, "w") as f:
            f.write(text + "\n")
