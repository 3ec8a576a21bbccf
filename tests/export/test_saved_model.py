"""SavedModel export: layout, size, both signatures in a TensorFlow-only process, the TF Serving
loading path (session + saver restore op), op registry, REST JSON, errors, versioning and agreement
with the in-memory model on the shared preprocessing path.

One export per module (the ``exported`` fixture): a random-weight ``shapes`` model with perturbed
batch-norm statistics is checkpointed with an optimizer, and ``export_from_checkpoint`` builds a new
model, restores it and exports; so every comparison with the in-memory model also checks the restore.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from mrcnn_tf2.export import client
from mrcnn_tf2.export import saved_model as saved_model_lib
from mrcnn_tf2.export.saved_model import (
    export_from_checkpoint,
    export_saved_model,
    next_version,
    variables_bytes,
    weights_bytes,
)
from mrcnn_tf2.pipelines.preprocess import preprocess_image
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.framework import op_def_registry

from mrcnn_tf2 import build_model, config
from mrcnn_tf2.training import CheckpointKeeper
from tests.export.image_files import png_bomb

OUTPUTS = {"num_detections": (tf.int32, 1), "detection_boxes": (tf.float32, 3),
           "detection_classes": (tf.int32, 2), "detection_scores": (tf.float32, 2),
           "detection_masks": (tf.float32, 4)}
CATEGORY_IDS = (3, 7, 11)
SIZES = ((50, 70), (90, 40))  # two images of different sizes (h, w), neither square nor 128 px
TENSOR_HW = (60, 90)
PY_FUNC_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc"}
MAX_PIXELS = 6000  # export.max_image_pixels of the export: above every test image (60 x 90 = 5400 the largest)

# One export, one fresh TensorFlow process and a second export: about 45 s on 2 CPU cores.
pytestmark = pytest.mark.slow


def _image(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth gradient with a bright rectangle and a little noise: [h, w, 3] uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    image = np.stack([yy * 255 / h, xx * 255 / w, np.full([h, w], 90.0)], -1)
    image[h // 4: h // 2, w // 3: 2 * w // 3] = (230, 40, 40)
    return np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    keras.utils.set_random_seed(0)
    cfg = config.preset("shapes", overrides={"model.detection.score_threshold": 0.0,
                                             "data.category_ids": list(CATEGORY_IDS),
                                             "data.category_names": ["square", "circle", "triangle"],
                                             "export.max_image_pixels": MAX_PIXELS})
    model = build_model(cfg)
    rng = np.random.default_rng(1)
    for v in model.non_trainable_variables:  # batch-norm statistics away from their initial values
        if v.path.endswith("moving_mean"):
            v.assign(rng.normal(0, 0.1, v.shape).astype(np.float32))
        elif v.path.endswith("moving_variance"):
            v.assign(rng.uniform(0.5, 2.0, v.shape).astype(np.float32))
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    optimizer.build(model.trainable_variables)
    root = tmp_path_factory.mktemp("export")
    CheckpointKeeper(str(root / "model_dir"), model, optimizer).save(7)
    export_dir = str(root / "exported")
    path = export_from_checkpoint(cfg, "last", str(root / "model_dir"), export_dir)
    encoded = [tf.io.encode_png(_image(*SIZES[0], seed=2)).numpy(),
               tf.io.encode_jpeg(_image(*SIZES[1], seed=3), quality=90).numpy()]
    tensor_batch = np.stack([_image(*TENSOR_HW, seed=4), _image(*TENSOR_HW, seed=5)])
    return types.SimpleNamespace(cfg=cfg, model=model, root=root, export_dir=export_dir, path=path,
                                 encoded=encoded, tensor_batch=tensor_batch)


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(exported.path)


def _numpy(outputs) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in outputs.items()}


def _check_contract(out: dict[str, np.ndarray], cfg, image_sizes) -> None:
    d, m = cfg.model.detection.max_detections, cfg.model.roi.mask_size
    b = len(image_sizes)
    shapes = {"num_detections": (b,), "detection_boxes": (b, d, 4), "detection_classes": (b, d),
              "detection_scores": (b, d), "detection_masks": (b, d, m, m)}
    assert set(out) == set(OUTPUTS)
    for key, (dtype, _) in OUTPUTS.items():
        assert out[key].shape == shapes[key], key
        assert out[key].dtype == dtype.as_numpy_dtype, key
    for i, (h, w) in enumerate(image_sizes):
        n = int(out["num_detections"][i])
        assert 0 < n <= d
        boxes = out["detection_boxes"][i, :n]
        assert np.all(boxes >= 0) and np.all(boxes[:, [0, 2]] <= h) and np.all(boxes[:, [1, 3]] <= w)
        assert np.all(boxes[:, 2] >= boxes[:, 0]) and np.all(boxes[:, 3] >= boxes[:, 1])
        assert set(out["detection_classes"][i, :n].tolist()) <= set(CATEGORY_IDS)
        for key in OUTPUTS:
            if key != "num_detections":
                assert not np.any(out[key][i, n:]), f"{key} padding rows of image {i} are not zero"


# === Layout ===

def test_layout_config_and_categories(exported):
    assert os.path.basename(exported.path) == "1"
    assert sorted(os.listdir(exported.export_dir)) == ["1"]  # no staging folder left behind
    for name in ("saved_model.pb", "variables/variables.index", "assets.extra/config.json",
                 "assets.extra/categories.json"):
        assert os.path.isfile(os.path.join(exported.path, name)), name
    with open(os.path.join(exported.path, "assets.extra/config.json")) as f:
        assert config.validate(config.from_dict(json.load(f))) == exported.cfg
    with open(os.path.join(exported.path, "assets.extra/categories.json")) as f:
        categories = json.load(f)["categories"]
    assert [(c["label"], c["category_id"], c["name"]) for c in categories] == [
        (1, 3, "square"), (2, 7, "circle"), (3, 11, "triangle")]


def test_variables_stored_once(exported):
    ratio = variables_bytes(exported.path) / weights_bytes(exported.model)
    print(f"variables/ = {ratio:.3f} x the model's weight bytes")
    assert 0.9 < ratio <= 1.1


def test_graph_holds_only_registered_core_ops(exported):
    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(exported.path, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    assert len(saved.meta_graphs) == 1
    meta = saved.meta_graphs[0]
    assert list(meta.meta_info_def.tags) == ["serve"]
    assert {"serving_default", "serve_image_tensor"} <= set(meta.signature_def)
    library = meta.graph_def.library
    function_names = {f.signature.name for f in library.function}
    ops = {node.op for node in meta.graph_def.node}
    for function in library.function:
        ops |= {node.op for node in function.node_def}
        assert not function.attr["_XlaMustCompile"].b, f"{function.signature.name} is XLA-compiled"
    ops -= function_names
    assert {"DecodeImage", "NonMaxSuppressionV4", "Conv2D"} <= ops  # the check sees the real graph
    assert {"Substr", "DecodePaddedRaw", "While"} <= ops  # the header check before decoding
    assert not ops & PY_FUNC_OPS
    unregistered = sorted(op for op in ops if op_def_registry.get(op) is None)
    assert not unregistered, f"ops missing from TensorFlow's registry: {unregistered}"


# === A process that imports only TensorFlow, and the model-server loading path ===

_SCRIPT = r'''
import os, sys

BLOCKED = ("mrcnn_tf2", "pipelines", "export")  # the project's packages


class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"the SavedModel must not need {name}")
        return None


os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

sys.meta_path.insert(0, _Block())
# TensorFlow 2.21 itself imports a few keras modules; loading and serving must not need any more.
keras_modules = {m for m in sys.modules if m.split(".")[0] in ("keras", "tf_keras")}

model_dir, inputs_dir, out_path = sys.argv[1:4]
encoded = [open(os.path.join(inputs_dir, f"image{i}"), "rb").read() for i in range(2)]
tensor_batch = np.load(os.path.join(inputs_dir, "tensor.npy"))
feeds = {"serving_default": np.array(encoded, dtype=object), "serve_image_tensor": tensor_batch}
results = {}

# 1. The Python loader.
loaded = tf.saved_model.load(model_dir)
for name, value in feeds.items():
    for key, tensor in loaded.signatures[name](images=tf.constant(value)).items():
        results[f"python/{name}/{key}"] = tensor.numpy()

# 2. As TF Serving's C++ loader does: import the MetaGraph into a session, run the saver's restore op
#    with the variables path, run the init op, then fetch the signature's tensors by name.
saved = saved_model_pb2.SavedModel()
with open(os.path.join(model_dir, "saved_model.pb"), "rb") as f:
    saved.ParseFromString(f.read())
meta = saved.meta_graphs[0]
graph = tf.Graph()
with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
    tf.compat.v1.train.import_meta_graph(meta, clear_devices=True)
    session.run(meta.saver_def.restore_op_name,
                {meta.saver_def.filename_tensor_name: os.path.join(model_dir, "variables", "variables")})
    init = meta.signature_def.get("__saved_model_init_op")
    if init is not None:
        session.run(init.outputs["__saved_model_init_op"].name)
    for name, value in feeds.items():
        signature = meta.signature_def[name]
        fetches = {key: info.name for key, info in signature.outputs.items()}
        values = session.run(fetches, {signature.inputs["images"].name: value})
        for key, array in values.items():
            results[f"session/{name}/{key}"] = array

leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not leaked, leaked
more_keras = {m for m in sys.modules if m.split(".")[0] in ("keras", "tf_keras")} - keras_modules
assert not more_keras, sorted(more_keras)
np.savez(out_path, **results)
'''


@pytest.fixture(scope="module")
def fresh_process_results(exported, tmp_path_factory):
    work = tmp_path_factory.mktemp("fresh")
    for i, data in enumerate(exported.encoded):
        (work / f"image{i}").write_bytes(data)
    np.save(work / "tensor.npy", exported.tensor_batch)
    (work / "script.py").write_text(_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "script.py", exported.path, str(work), str(work / "out.npz")],
                         cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    with np.load(work / "out.npz") as data:
        return dict(data)


def _results(results, loader: str, signature: str) -> dict[str, np.ndarray]:
    prefix = f"{loader}/{signature}/"
    return {k[len(prefix):]: v for k, v in results.items() if k.startswith(prefix)}


def test_tensorflow_only_process_runs_both_signatures(exported, fresh_process_results):
    bytes_out = _results(fresh_process_results, "python", "serving_default")
    tensor_out = _results(fresh_process_results, "python", "serve_image_tensor")
    _check_contract(bytes_out, exported.cfg, SIZES)
    _check_contract(tensor_out, exported.cfg, [TENSOR_HW] * 2)


def test_model_server_loading_path_matches_python_loader(fresh_process_results):
    for signature in ("serving_default", "serve_image_tensor"):
        python = _results(fresh_process_results, "python", signature)
        session = _results(fresh_process_results, "session", signature)
        assert set(session) == set(OUTPUTS)
        for key in OUTPUTS:
            np.testing.assert_allclose(session[key], python[key], rtol=1e-5, atol=1e-5, err_msg=key)


# === Agreement with the in-memory model (same preprocessing path) ===

def _reference(model, cfg, encoded: bytes) -> dict[str, np.ndarray]:
    """model(preprocess_image(decode(bytes))), mapped to original pixels and category ids in NumPy."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    model_image, info = preprocess_image(image, cfg.model.image_size, cfg.model.pixel_normalization)
    out = _numpy(model(model_image[None], info[None]))
    info = info.numpy()
    n = int(out["num_detections"][0])
    scale, offset, hw = info[2], info[3], info[0]
    boxes = (out["detection_boxes"][0] + np.tile(offset, 2)) / np.tile(scale, 2)
    boxes = np.clip(boxes, 0, np.tile(hw, 2))
    boxes[n:] = 0
    classes = np.array([0, *CATEGORY_IDS])[out["detection_classes"][0]]
    classes[n:] = 0
    return {"num_detections": n, "detection_boxes": boxes, "detection_classes": classes,
            "detection_scores": out["detection_scores"][0], "detection_masks": out["detection_masks"][0]}


def test_serving_default_equals_model_on_shared_preprocessing(exported, fresh_process_results):
    served = _results(fresh_process_results, "python", "serving_default")
    for i, encoded in enumerate(exported.encoded):
        expected = _reference(exported.model, exported.cfg, encoded)
        assert int(served["num_detections"][i]) == expected["num_detections"]
        np.testing.assert_array_equal(served["detection_classes"][i], expected["detection_classes"])
        for key in ("detection_boxes", "detection_scores", "detection_masks"):
            np.testing.assert_allclose(served[key][i], expected[key], rtol=1e-4, atol=1e-4, err_msg=key)


def test_image_tensor_equals_image_bytes_on_lossless_images(exported, loaded, fresh_process_results):
    encoded = tf.stack([tf.io.encode_png(image) for image in exported.tensor_batch])
    from_bytes = _numpy(loaded.signatures["serving_default"](images=encoded))
    from_tensor = _results(fresh_process_results, "python", "serve_image_tensor")
    for key in OUTPUTS:
        np.testing.assert_allclose(from_bytes[key], from_tensor[key], rtol=1e-5, atol=1e-5, err_msg=key)


# === REST requests and bad input ===

def _serve_rest(signature, body: str) -> str:
    """What TF Serving does with a row-format JSON request: b64 objects become bytes, outputs become rows."""
    request = json.loads(body)
    values = [item["b64"] if "b64" in item else item["images"]["b64"] for item in request["instances"]]
    images = tf.constant([base64.b64decode(v) for v in values], tf.string, shape=[len(values)])
    outputs = _numpy(signature(images=images))
    rows = [{key: value[i].tolist() for key, value in outputs.items()} for i in range(len(values))]
    return json.dumps({"predictions": rows})


def test_rest_b64_request_is_decoded_and_answered(exported, loaded, fresh_process_results):
    body = json.dumps(client.rest_request_body(exported.encoded))
    assert json.loads(body)["instances"][0].keys() == {"b64"}
    response = client.predictions_to_arrays(json.loads(_serve_rest(loaded.signatures["serving_default"], body)))
    _check_contract(response, exported.cfg, SIZES)
    direct = _results(fresh_process_results, "python", "serving_default")
    for key in OUTPUTS:
        np.testing.assert_allclose(response[key], direct[key], rtol=1e-5, atol=1e-5, err_msg=key)


def test_corrupt_bytes_raise_invalid_argument(exported, loaded):
    signature = loaded.signatures["serving_default"]
    for bad in (b"not an image at all", exported.encoded[0][:40]):
        with pytest.raises(tf.errors.InvalidArgumentError):
            signature(images=tf.constant([exported.encoded[1], bad]))
    # The model still answers afterwards.
    assert signature(images=tf.constant(exported.encoded[:1]))["num_detections"].shape == (1,)


def test_images_above_max_image_pixels_are_refused_before_decoding(exported, loaded):
    signature = loaded.signatures["serving_default"]
    at_limit = tf.io.encode_png(_image(75, 80, seed=6)).numpy()  # 6000 pixels: accepted
    assert signature(images=tf.constant([at_limit]))["num_detections"].shape == (1,)
    above = tf.io.encode_jpeg(_image(80, 76, seed=7)).numpy()  # 6080 pixels
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"max_image_pixels={MAX_PIXELS}"):
        signature(images=tf.constant([exported.encoded[0], above]))


def test_decompression_bomb_is_refused(exported, loaded):
    # A few kB of PNG whose header says 20000 x 20000 (1.2 GB of RGB once decoded).
    bomb = png_bomb(20000, 20000)
    assert len(bomb) < 10_000
    signature = loaded.signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"max_image_pixels(.|\n)*20000 20000 400000000"):
        signature(images=tf.constant([exported.encoded[0], bomb]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="not a JPEG, PNG, GIF, BMP or WebP"):
        signature(images=tf.constant([b"\xff\x0a" + bomb[2:]]))  # JPEG XL's signature: not accepted
    assert signature(images=tf.constant(exported.encoded[:1]))["num_detections"].shape == (1,)


def test_empty_batch_returns_empty_outputs(exported, loaded):
    d, m = exported.cfg.model.detection.max_detections, exported.cfg.model.roi.mask_size
    expected = {"num_detections": (0,), "detection_boxes": (0, d, 4), "detection_classes": (0, d),
                "detection_scores": (0, d), "detection_masks": (0, d, m, m)}
    for name, images in (("serving_default", tf.zeros([0], tf.string)),
                         ("serve_image_tensor", tf.zeros([0, 32, 48, 3], tf.uint8))):
        out = _numpy(loaded.signatures[name](images=images))
        assert {k: v.shape for k, v in out.items()} == expected, name
    response = client.predictions_to_arrays({"predictions": []})
    assert all(v.shape == (0,) for v in response.values())


# === Versions and checkpoints ===

def _tree_digest(path: str) -> dict[str, str]:
    digest = {}
    for directory, _, files in os.walk(path):
        for name in files:
            full = os.path.join(directory, name)
            with open(full, "rb") as f:
                digest[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
    return digest


def test_export_again_adds_a_version_and_leaves_the_first_untouched(exported, fresh_process_results):
    before = _tree_digest(exported.path)
    assert next_version(exported.export_dir) == 2
    second = export_saved_model(exported.model, exported.cfg, exported.export_dir)
    assert os.path.basename(second) == "2"
    assert _tree_digest(exported.path) == before
    assert sorted(os.listdir(exported.export_dir)) == ["1", "2"]
    # The in-memory model exported directly serves what its checkpoint exported as version 1 served.
    out = _numpy(tf.saved_model.load(second).signatures["serving_default"](
        images=tf.constant(exported.encoded)))
    first = _results(fresh_process_results, "python", "serving_default")
    for key in OUTPUTS:
        np.testing.assert_allclose(out[key], first[key], rtol=1e-5, atol=1e-5, err_msg=key)


def test_missing_checkpoint_raises_file_not_found(exported, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint to export in .*train first"):
        export_from_checkpoint(exported.cfg, "last", str(tmp_path / "empty"), str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*ckpt-99"):
        export_from_checkpoint(exported.cfg, str(tmp_path / "ckpt-99"), str(tmp_path), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("change, expected", [
    ({"model.roi.mask_head_convs": 1}, r"2 model variables are not in it: mask_rcnn/mask_head/conv_1/kernel, "
                                       r"mask_rcnn/mask_head/conv_1/bias\)"),
    ({"model.num_classes": 3, "data.category_ids": [3, 7], "data.category_names": ["a", "b"]},
     r"does not fit the 'shapes' model: .*shape"),
])
def test_checkpoint_of_another_architecture_is_refused(exported, tmp_path, change, expected):
    """The checkpoint of a model with a shallower mask head (or other classes) must not export half-random."""
    other = build_model(config.apply_overrides(exported.cfg, change))
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    optimizer.build(other.trainable_variables)
    CheckpointKeeper(str(tmp_path / "other"), other, optimizer).save(3)
    assert exported.cfg.model.roi.mask_head_convs == 2 and exported.cfg.model.num_classes != 3
    with pytest.raises(saved_model_lib.CheckpointMismatchError, match=expected):
        export_from_checkpoint(exported.cfg, "last", str(tmp_path / "other"), str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")
