"""benchmarks/harness.py: the peer benchmarks' seeded image, and benchmarks/ importable without ../shared."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


harness = _load(os.path.join(ROOT, "benchmarks", "harness.py"), "bench_harness")


def test_seeded_image_fingerprint():
    # Values of ../shared/bench/common.py's seeded_image(1024) (default_rng(0), integers 0..255), recorded
    # from that file, so the comparison holds where ../shared is absent (an installed wheel, CI).
    square = harness.seeded_image(1024)
    assert square.shape == (1024, 1024, 3) and square.dtype == np.uint8
    assert square.reshape(-1)[:8].tolist() == [95, 130, 194, 217, 207, 235, 15, 163]
    assert int(square.sum(dtype=np.int64)) == 400991974
    photo = harness.seeded_image(480, 640)
    assert photo.shape == (480, 640, 3)
    assert int(photo.sum(dtype=np.int64)) == 117419588


def test_seeded_image_equals_the_shared_bench():
    path = os.path.join(ROOT, "..", "shared", "bench", "common.py")
    if not os.path.exists(path):
        pytest.skip("../shared/bench is not next to this checkout")
    common = _load(path, "shared_bench_common")
    for size in (512, 1024):
        np.testing.assert_array_equal(harness.seeded_image(size), common.seeded_image(size))
        for ours, theirs in zip(harness.synthetic_targets(size), common.synthetic_targets(size)):
            assert ours.dtype == theirs.dtype
            np.testing.assert_array_equal(ours, theirs)


def test_synthetic_targets_fingerprint():
    # Recorded from ../shared/bench/common.py's synthetic_targets(512).
    boxes, classes, masks = harness.synthetic_targets(512)
    np.testing.assert_allclose(boxes, [[51.2, 76.8, 230.4, 281.6], [256.0, 204.8, 460.8, 435.2]], rtol=1e-6)
    assert classes.tolist() == [1, 3] and masks.dtype == np.uint8
    assert masks.sum(axis=(1, 2)).tolist() == [28800, 36988]


def test_parse_hw():
    assert harness.parse_hw("480x640") == (480, 640)
    assert harness.parse_hw("1024") == (1024, 1024)
    for bad in ("480x", "0x5", "axb", "1x2x3"):
        with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
            harness.parse_hw(bad)


def test_benchmarks_import_from_another_directory(tmp_path):
    # No sys.path entry into ../shared: the scripts must start from anywhere (issue 11 section 5).
    for script in ("side_by_side.py", "inference.py", "train_step.py"):
        run = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), "--help"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300,
                             env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        assert run.returncode == 0, run.stderr[-2000:]
        assert "usage" in run.stdout
    for name in os.listdir(os.path.join(ROOT, "benchmarks")):
        if name.endswith(".py"):
            with open(os.path.join(ROOT, "benchmarks", name)) as f:
                assert '"shared"' not in f.read(), name
