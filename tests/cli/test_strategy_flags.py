"""--strategy=tpu without a TPU, and --mixed_precision values, through the real command line (fast).

A TPU cannot be tested here: these check only that an unreachable TPU fails within seconds with one
paragraph and exit status 2 (TensorFlow alone would wait minutes on a grpc:// address that does not answer).
"""

from __future__ import annotations

import socket

import pytest

from mrcnn_tf2 import cli
from tests.cli.common import tiny_args
from tests.cli.test_bad_input import _check_one_paragraph, _main

TINY = ["--config_override=data.shapes_num_train=2", "--config_override=data.shapes_num_val=1"]


def _closed_port() -> int:
    """A localhost port that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("tpu, expected", [
    ("", ("could not reach a TPU", "--tpu=local", "grpc://host:port")),
    ("grpc://127.0.0.1:{port}", ("nothing answers at grpc://127.0.0.1:", "within 10 s")),
    ("local", ("could not reach a TPU with --tpu=local", "tensorflow-tpu")),
])
def test_unreachable_tpu_fails_fast_with_one_paragraph(tmp_path, tpu, expected):
    result = _main(tmp_path, "--mode=train", "--strategy=tpu", f"--tpu={tpu.format(port=_closed_port())}",
                   "--model=none", *TINY)
    assert result.returncode == 2
    _check_one_paragraph(result, *expected)
    assert not (tmp_path / "run").exists()  # failed before writing anything


@pytest.mark.parametrize("flags, shown", [
    (["--mixed_precision=true"], "--mixed_precision=true"),
    (["--mixed_precision=fp16"], "--mixed_precision=fp16"),
    (["--mixed_precision", "--jit_compile"], "--mixed_precision=--jit_compile"),  # the bare flag of old
])
def test_mixed_precision_takes_float16_or_bfloat16(tmp_path, flags, shown):
    result = _main(tmp_path, "--mode=train", "--model=none", *flags, *TINY)
    assert result.returncode == 2
    _check_one_paragraph(result, shown, "float16", "bfloat16")


def test_mixed_precision_value_reaches_the_config_and_float16_is_refused_on_tpu(tmp_path):
    root = str(tmp_path)
    for value in ("float16", "bfloat16"):
        assert cli.prepare(tiny_args(root, "train", mixed_precision=value)).cfg.train.mixed_precision == value
    assert cli.prepare(tiny_args(root, "train")).cfg.train.mixed_precision == ""
    assert cli.prepare(tiny_args(root, "train", jit_compile=True)).cfg.train.jit_compile
    with pytest.raises(cli.CliError, match="--mixed_precision=bfloat16"):
        cli.prepare(tiny_args(root, "train", strategy="tpu", mixed_precision="float16"))
