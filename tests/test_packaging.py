"""Packaging: one TensorFlow per install, the ``mrcnn-tf2`` console command, and the wheel outside the repository.

The resolution tests ask PyPI (``pip install --dry-run --report``, metadata only) and are skipped when the index
is unreachable; the wheel test builds the wheel, installs it into a fresh venv that borrows this environment's
dependencies, and runs the shapes demo (train, eval, export, predict) from an empty directory.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import urllib.request
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUBPACKAGE_FOLDERS = ("cli", "pipelines", "export")  # installed as mrcnn_tf2.cli, ... (setup.py)
# The distributions that install the `tensorflow` import package (PEP 503 normalized names).
TENSORFLOW_DISTRIBUTIONS = {"tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-intel", "tensorflow-macos",
                            "tensorflow-aarch64", "tensorflow-rocm", "intel-tensorflow", "tf-nightly",
                            "tf-nightly-cpu", "tensorflow-cpu-aws"}
# Tracked-or-not folders that are never part of a build.
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                    ".ruff_cache", "data", "logs", "exported", "predictions", ".gl", ".device")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _index_reachable() -> str | None:
    """None when the package index answers, else why not."""
    url = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/") + "/pip/"
    try:
        with urllib.request.urlopen(url, timeout=15):
            return None
    except Exception as e:  # noqa: BLE001 - any failure means: no index here
        return f"the package index {url} is unreachable ({e})"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PIP_DISABLE_PIP_VERSION_CHECK="1", **extra)
    return env


@pytest.mark.slow
# [cpu] and [gpu] alone are not resolved separately (about 70 s): the [x,test] resolutions contain them, so
# exactly one TensorFlow there means exactly one in [cpu] and [gpu] (which need at least the expected one).
@pytest.mark.parametrize("extras", ["", "[cpu,test]", "[gpu,test]"])
def test_install_resolves_exactly_one_tensorflow(tmp_path: Path, extras: str) -> None:
    """`pip install '.[extras]'` picks one TensorFlow distribution (none for `.`: the user chooses cpu or gpu)."""
    unreachable = _index_reachable()
    if unreachable:
        pytest.skip(unreachable)
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)  # pip prepares the metadata in-tree: not in the checkout
    report = tmp_path / "report.json"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                             "--report", str(report), f"{source}{extras}"],
                            capture_output=True, text=True, env=_env(), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    names = {_normalize(item["metadata"]["name"]) for item in json.loads(report.read_text())["install"]}
    tensorflows = sorted(names & TENSORFLOW_DISTRIBUTIONS)
    expected = {"": [], "[cpu]": ["tensorflow-cpu"], "[cpu,test]": ["tensorflow-cpu"],
                "[gpu]": ["tensorflow"], "[gpu,test]": ["tensorflow"]}[extras]
    if sys.platform != "linux" or os.uname().machine != "x86_64":  # elsewhere the cpu extra is `tensorflow`
        expected = [name.replace("tensorflow-cpu", "tensorflow") for name in expected]
    assert tensorflows == expected, f"'.{extras}' resolves to {tensorflows or 'no TensorFlow'}"
    if extras.startswith("[gpu"):
        assert any(name.startswith("nvidia-") for name in names), "the gpu extra must bring the CUDA libraries"


def test_missing_tensorflow_names_the_extra(tmp_path: Path) -> None:
    """Without TensorFlow the CLI exits 2 with one paragraph naming the extras, and importing the package works."""
    script = textwrap.dedent(f"""
        import sys
        sys.modules["tensorflow"] = None  # as if no TensorFlow distribution were installed
        sys.path.insert(0, {str(ROOT)!r})
        import mrcnn_tf2  # the config side needs no TensorFlow
        try:
            mrcnn_tf2.build_model
        except ModuleNotFoundError as e:
            print("import:", e)
        from mrcnn_tf2.cli.command import run
        sys.argv = ["mrcnn-tf2", "--mode=train", "--config=shapes", "--model=none", "--steps=1",
                    "--model_dir={tmp_path / 'run'}", "--data_dir={tmp_path / 'shapes'}",
                    "--config_override=data.shapes_num_train=2", "--config_override=data.shapes_num_val=1"]
        run()
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(),
                            cwd=tmp_path, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for text in (result.stdout, result.stderr):
        assert "TensorFlow is not installed" in text and "mrcnn-tf2[cpu]" in text and "mrcnn-tf2[gpu]" in text


def test_console_command_and_main_py_run_the_same_function() -> None:
    """setup.cfg declares `mrcnn-tf2 = <module>:run`, and main.py calls that same function."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    scripts = dict(line.split("=", 1) for line in parser["options.entry_points"]["console_scripts"].split("\n")
                   if line.strip())
    target = {k.strip(): v.strip() for k, v in scripts.items()}["mrcnn-tf2"]
    module_name, function = target.split(":")
    main_py = (ROOT / "main.py").read_text()
    assert f"from {module_name} import {function}" in main_py
    assert re.search(rf'if __name__ == "__main__":\s+{function}\(\)', main_py)
    assert "DEFINE" not in main_py, "the flags belong to the installed module, not to main.py"


def _build_wheel(tmp_path: Path) -> Path:
    """Builds the wheel from a copy of the source (no build/ or *.egg-info in the checkout)."""
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path / "dist")]
    try:  # this environment's setuptools when it can build (offline, faster), else an isolated build
        from importlib.metadata import version

        import setuptools  # noqa: F401

        major, minor = (int(part) for part in version("setuptools").split(".")[:2])
        if (major, minor) >= (70, 1) or _has_module("wheel"):
            command.append("--no-build-isolation")
    except ImportError:
        pass
    result = subprocess.run([*command, str(source)], capture_output=True, text=True, env=_env(), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("mrcnn_tf2-*.whl")
    return wheel


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    """A new venv holding only the wheel (no deps); this environment's site-packages is added after the install
    by a .pth line, which puts the dependencies on sys.path but not the project's editable-install finder."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    result = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                             "--no-index", "--quiet", str(wheel)], capture_output=True, text=True, env=_env(),
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    ours = sysconfig.get_paths()
    (Path(purelib) / "borrowed_dependencies.pth").write_text(
        "\n".join(dict.fromkeys([ours["purelib"], ours["platlib"]])) + "\n")
    return venv


@pytest.mark.slow
def test_wheel_runs_the_shapes_demo_outside_the_repository(tmp_path: Path) -> None:
    """The installed `mrcnn-tf2` trains, evaluates, exports and predicts from an empty directory."""
    wheel = _build_wheel(tmp_path)
    venv = _fresh_venv(tmp_path, wheel)
    work = tmp_path / "elsewhere"
    work.mkdir()
    probe = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import mrcnn_tf2.cli, mrcnn_tf2.export, mrcnn_tf2.pipelines as p; print(p.__file__); "
                            "print(mrcnn_tf2.cli.__file__); print(mrcnn_tf2.export.__file__)"],
                           capture_output=True, text=True, env=_env(), cwd=work, timeout=300)
    assert probe.returncode == 0, probe.stderr[-3000:]
    for path in probe.stdout.split():
        assert Path(path).is_relative_to(venv), f"{path} is not the installed copy"

    command = venv / "bin" / "mrcnn-tf2"
    tiny = [f"--config_override={o}" for o in ("data.shapes_num_train=4", "data.shapes_num_val=2",
                                                "eval.batch_size=2", "eval.num_visualizations=1")]
    steps = [
        ["--mode=train", "--config=shapes", "--model=none", "--steps=2", "--batch_size=2", *tiny],
        ["--mode=eval", "--model=last", *tiny],
        ["--mode=export", "--model=last", "--export_dir=exported/maskrcnn"],
        ["--mode=predict", "--model=last", "--images=data/shapes/images/val/*.png", "--output_dir=predictions"],
    ]
    for flags in steps:
        result = subprocess.run([str(command), "--model_dir=run", *flags], capture_output=True, text=True,
                                env=_env(), cwd=work, timeout=900)
        assert result.returncode == 0, f"{flags[0]}:\n{result.stderr[-4000:]}"
    assert (work / "data" / "shapes").is_dir()  # the default --data_dir is relative to the working directory
    assert json.loads((work / "run" / "eval" / "metrics.json").read_text())
    assert list((work / "exported" / "maskrcnn").glob("*/saved_model.pb"))
    assert list((work / "predictions").glob("*.png"))


def test_wheel_contents_match_the_sources(tmp_path: Path) -> None:
    """The wheel installs one top-level name, mrcnn_tf2: cli/, pipelines/ and export/ become mrcnn_tf2/cli, ...;
    every package module of the checkout is in it (a new subpackage missing from setup.py is caught)."""
    pytest.importorskip("setuptools")
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"mrcnn_tf2"}
    missing = []
    for package in ("mrcnn_tf2", *SUBPACKAGE_FOLDERS):
        for path in (ROOT / package).rglob("*.py"):
            relative = path.relative_to(ROOT).as_posix()
            installed = relative if package == "mrcnn_tf2" else f"mrcnn_tf2/{relative}"
            if installed not in names:
                missing.append(relative)
    assert not missing, f"not in the wheel: {missing}"


def test_sources_import_only_the_namespaced_names() -> None:
    """No `import cli`, `from pipelines.x import y` or `import_module("export.x")`: the wheel has mrcnn_tf2.cli, ..."""
    names = "|".join(SUBPACKAGE_FOLDERS)
    modules = "|".join(path.stem for folder in SUBPACKAGE_FOLDERS for path in (ROOT / folder).glob("*.py"))
    bare = re.compile(rf"^\s*(?:from|import)\s+(?:{names})(?:[.\s]|$)|[\"'](?:{names})\.(?:{modules})\b", re.M)
    offenders = []
    for path in ROOT.rglob("*.py"):
        if any(part.startswith(".") or part in {"build", "dist", "data", "logs"}
               for part in path.relative_to(ROOT).parts):
            continue
        text = path.read_text(errors="replace")
        for match in bare.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            offenders.append(f"{path.relative_to(ROOT)}:{line}: {text.splitlines()[line - 1].strip()}")
    assert not offenders, "import these as mrcnn_tf2.<package>:\n" + "\n".join(offenders)
