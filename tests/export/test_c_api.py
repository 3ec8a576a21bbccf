"""The SavedModel through TensorFlow's C API: ``TF_LoadSessionFromSavedModel``, as a model server loads it.

``tests/export/c_api_load.c`` is compiled against the headers and shared libraries inside the installed
TensorFlow wheel (``tensorflow/include``, ``libtensorflow_cc.so.2``, ``libtensorflow_framework.so.2``),
loads a ``shapes`` export with the ``serve`` tag, feeds encoded PNG bytes as a ``[N]`` TF_STRING tensor
to ``serving_default`` (tensor names from the signature's metadata) and writes every output. The
outputs must follow the contract and equal what Python's ``tf.saved_model.load`` gives; a decompression
bomb must fail with INVALID_ARGUMENT there too. Skipped where there is no C compiler or no C headers.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import keras
import numpy as np
import pytest
import tensorflow as tf
from mrcnn_tf2.export.saved_model import SERVING_DEFAULT, export_saved_model
from tensorflow.core.protobuf import saved_model_pb2

from mrcnn_tf2 import build_model, config
from tests.export.image_files import png_bomb

pytestmark = pytest.mark.slow

HERE = os.path.dirname(os.path.abspath(__file__))
TF_DIR = os.path.dirname(tf.__file__)
LIBRARIES = ("libtensorflow_cc.so.2", "libtensorflow_framework.so.2")
OUTPUTS = ("num_detections", "detection_boxes", "detection_classes", "detection_scores", "detection_masks")
TF_INVALID_ARGUMENT = 3  # TF_Code in tensorflow/c/tf_status.h
SIZES = ((50, 70), (90, 40))


def _image(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
    image[h // 4: h // 2, w // 3: 2 * w // 3] = (220, 40, 40)
    return image


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> str:
    compiler = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler (gcc or cc, or $CC) on PATH: the C API loading test needs one")
    header = os.path.join(TF_DIR, "include", "tensorflow", "c", "c_api.h")
    if not os.path.isfile(header):
        pytest.skip(f"this TensorFlow wheel ships no C headers ({header} is missing)")
    missing = [name for name in LIBRARIES if not os.path.isfile(os.path.join(TF_DIR, name))]
    if missing:
        pytest.skip(f"this TensorFlow wheel has no {', '.join(missing)} in {TF_DIR}")
    exe = str(tmp_path_factory.mktemp("c_api") / "c_api_load")
    build = subprocess.run([compiler, "-O1", "-Wall", "-o", exe, os.path.join(HERE, "c_api_load.c"),
                            f"-I{os.path.join(TF_DIR, 'include')}", f"-L{TF_DIR}",
                            *[f"-l:{name}" for name in LIBRARIES], f"-Wl,-rpath,{TF_DIR}"],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]  # headers and libraries are there: must build
    return exe


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    keras.utils.set_random_seed(0)
    cfg = config.preset("shapes", overrides={"model.detection.score_threshold": 0.0,
                                             "data.category_ids": [3, 7, 11],
                                             "data.category_names": ["square", "circle", "triangle"]})
    root = tmp_path_factory.mktemp("c_api_export")
    path = export_saved_model(build_model(cfg), cfg, str(root / "exported"))
    files = []
    for i, (h, w) in enumerate(SIZES):
        files.append(root / f"image{i}.png")
        files[-1].write_bytes(tf.io.encode_png(_image(h, w, seed=i)).numpy())
    return cfg, path, [str(f) for f in files]


def _signature_names(path: str) -> tuple[str, list[str]]:
    """(input tensor name, output tensor names in OUTPUTS order) of serving_default, from saved_model.pb."""
    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    signature = saved.meta_graphs[0].signature_def[SERVING_DEFAULT]
    return signature.inputs["images"].name, [signature.outputs[key].name for key in OUTPUTS]


def _run(program: str, path: str, images: list[str], out_file: str) -> subprocess.CompletedProcess:
    input_name, output_names = _signature_names(path)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([program, path, input_name, out_file, *images, "--", *output_names],
                          capture_output=True, text=True, timeout=300, env=env)


def _parse(out_file: str, names: list[str]) -> dict[str, np.ndarray]:
    """The C program's text: per output a line "name dtype ndims dims...", then one value per line."""
    with open(out_file) as f:
        lines = f.read().split("\n")
    out, i = {}, 0
    for key, name in zip(OUTPUTS, names):
        fields = lines[i].split()
        assert fields[0] == name
        dtype = {1: np.float32, 3: np.int32}[int(fields[1])]  # TF_FLOAT, TF_INT32
        shape = tuple(int(d) for d in fields[3:3 + int(fields[2])])
        count = int(np.prod(shape))
        out[key] = np.array([float(v) for v in lines[i + 1:i + 1 + count]], np.float64).astype(dtype).reshape(shape)
        i += 1 + count
    return out


def test_c_api_serving_default_equals_python_loader(program, exported, tmp_path):
    cfg, path, images = exported
    run = _run(program, path, images, str(tmp_path / "out.txt"))
    assert run.returncode == 0, run.stderr[-3000:]
    out = _parse(str(tmp_path / "out.txt"), _signature_names(path)[1])

    d, m, b = cfg.model.detection.max_detections, cfg.model.roi.mask_size, len(images)
    expected_shapes = {"num_detections": (b,), "detection_boxes": (b, d, 4), "detection_classes": (b, d),
                       "detection_scores": (b, d), "detection_masks": (b, d, m, m)}
    assert {k: v.shape for k, v in out.items()} == expected_shapes
    assert out["num_detections"].dtype == np.int32 and out["detection_classes"].dtype == np.int32
    assert np.all(out["num_detections"] > 0)  # score_threshold 0: there is something to compare
    for i, (h, w) in enumerate(SIZES):
        n = out["num_detections"][i]
        assert set(out["detection_classes"][i, :n].tolist()) <= {3, 7, 11}
        assert np.all(out["detection_boxes"][i, :n, [0, 2]] <= h) and np.all(out["detection_boxes"][i, :n, [1, 3]] <= w)

    encoded = [open(f, "rb").read() for f in images]
    python = tf.saved_model.load(path).signatures[SERVING_DEFAULT](images=tf.constant(encoded))
    np.testing.assert_array_equal(out["num_detections"], python["num_detections"].numpy())
    np.testing.assert_array_equal(out["detection_classes"], python["detection_classes"].numpy())
    for key in ("detection_boxes", "detection_scores", "detection_masks"):
        # %.9g round-trips float32 exactly; the two runtimes may still order float sums differently.
        np.testing.assert_allclose(out[key], python[key].numpy(), rtol=1e-5, atol=1e-5, err_msg=key)


def test_c_api_refuses_a_decompression_bomb_with_invalid_argument(program, exported, tmp_path):
    _, path, images = exported
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(20000, 20000))
    run = _run(program, path, [images[0], str(bomb)], str(tmp_path / "out.txt"))
    assert run.returncode == 1, run.stderr[-3000:]
    assert f"TF_SessionRun (code {TF_INVALID_ARGUMENT})" in run.stderr and "max_image_pixels" in run.stderr
