"""TFLite export run by the LiteRT interpreter (``ai-edge-litert``) against the SavedModel.

One shapes model is trained briefly in a module fixture (so it really detects), exported through the CLI
as a SavedModel and as TFLite (none, float16, dynamic, int8); the interpreter's detections on the shapes
validation images (128 x 128, the TFLite input size, so both paths see the same pixels) are compared
with the SavedModel's ``serve_image_tensor``:

- none/float16/dynamic: detections scoring >= ``MATCH_SCORE`` of either side have a same-class one on the
  other side with IoU >= 0.9 and a score within ``SCORE_ATOL`` (all of them for none, ``MATCHED_FRACTION``
  for the quantized variants; dynamic also keeps box AP within ``DYNAMIC_MAX_AP_DROP``);
- int8: box AP (pycocotools) on the validation set at most ``INT8_MAX_AP_DROP`` below the SavedModel's.

The fixture takes about 8 minutes on 2 shared cores (250 deterministic training steps, five exports).
"""

from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from mrcnn_tf2.export import tflite as tflite_lib

from mrcnn_tf2 import cli
from tests.cli.common import tiny_args

interpreter_lib = pytest.importorskip("ai_edge_litert.interpreter")

# Detections scoring >= MATCH_SCORE are compared one to one, in both directions (IoU >= 0.9, same class,
# score within SCORE_ATOL), and at least MATCHED_FRACTION of them must match. The fixture model is weak (box
# AP 0.030, top scores ~0.65), so near-equal boxes compete and quantization noise swaps some: measured on it,
# none 98/98 match, float16 95/97 (two swaps at 0.47), dynamic 80/100 (its box AP 0.027 vs 0.030).
MATCH_SCORE = 0.3
SCORE_ATOL = {"none": 1e-4, "float16": 0.02, "dynamic": 0.1}
MATCHED_FRACTION = {"none": 1.0, "float16": 0.95, "dynamic": 0.75}
DYNAMIC_MAX_AP_DROP = 0.01
INT8_MAX_AP_DROP = 0.03
TRAIN = ("data.shapes_num_train=200", "data.shapes_num_val=20", "train.log_every=50")


def build_exports(root: str) -> dict:
    """Trains the shapes model under ``root``, exports the SavedModel and every TFLite variant through the
    CLI and runs the SavedModel on the validation images (also used to benchmark: benchmarks/)."""
    cli.run(tiny_args(root, "train", steps=250, batch_size=4, checkpoint_every=250, eval_every=0, model="none",
                      deterministic=True,  # the same model every run: the tolerances below were measured on it
                      overrides=TRAIN))
    export_dir = os.path.join(root, "exported")
    saved_model = cli.run(tiny_args(root, "export", export_dir=export_dir, overrides=TRAIN))
    files = {q: cli.run(tiny_args(root, "export", export_dir=export_dir, format="tflite", quantize=q,
                                  calibration_images="16", overrides=TRAIN))
             for q in tflite_lib.QUANTIZE_MODES}
    return dict(root=root, saved_model=saved_model, files=files, **reference_outputs(root, saved_model))


def reference_outputs(root: str, saved_model: str) -> dict:
    """The validation images of the shapes dataset under ``root`` and the SavedModel's outputs on them."""
    annotations = os.path.join(root, "shapes", "val.json")
    with open(annotations, encoding="utf-8") as f:
        val = json.load(f)
    images = {entry["id"]: os.path.join(root, "shapes", "images", "val", entry["file_name"])
              for entry in val["images"]}
    serve = tf.saved_model.load(saved_model).signatures["serve_image_tensor"]
    reference = {i: _numpy(serve(images=tf.constant(_read(path)))) for i, path in images.items()}
    return dict(images=images, reference=reference, annotations=annotations)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return build_exports(str(tmp_path_factory.mktemp("tflite")))


def _read(path: str) -> np.ndarray:
    return tf.io.decode_image(tf.io.read_file(path), channels=3).numpy()[None]


def _numpy(outputs) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in outputs.items()}


def _run_tflite(path: str, images: dict[int, str]) -> dict[int, dict[str, np.ndarray]]:
    interpreter = interpreter_lib.Interpreter(model_path=path, num_threads=2)
    runner = interpreter.get_signature_runner("serving_default")
    return {i: _numpy(runner(images=_read(p))) for i, p in images.items()}


def _above(out: dict[str, np.ndarray], threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = int(out["num_detections"][0])
    keep = out["detection_scores"][0, :n] >= threshold
    return (out["detection_boxes"][0, :n][keep], out["detection_scores"][0, :n][keep],
            out["detection_classes"][0, :n][keep])


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one y1x1y2x2 box [4] with boxes [N, 4] -> [N] (plain NumPy)."""
    low, high = np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=1)
    area = np.prod(box[2:] - box[:2])
    areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return inter / np.maximum(area + areas - inter, 1e-9)


def _unmatched(a: dict[str, np.ndarray], b: dict[str, np.ndarray], atol: float, threshold: float) -> list[str]:
    """Detections of ``a`` scoring >= ``threshold`` without a same-class one in ``b`` (any score) with IoU
    >= 0.9 and a score within ``atol``."""
    boxes_a, scores_a, classes_a = _above(a, threshold)
    boxes_b, scores_b, classes_b = _above(b, 0.0)
    problems = []
    for box, score, cls in zip(boxes_a, scores_a, classes_a):
        same = classes_b == cls
        iou = _iou(box, boxes_b[same])
        ok = (iou >= 0.9) & (np.abs(scores_b[same] - score) <= atol)
        if not ok.any():
            problems.append(f"class {cls} score {score:.3f} box {np.round(box, 1).tolist()}")
    return problems


def _box_ap(outputs: dict[int, dict[str, np.ndarray]], annotations: str) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = []
    for image_id, out in outputs.items():
        for (y1, x1, y2, x2), score, cls in zip(*_above(out, 0.0)):
            results.append({"image_id": image_id, "category_id": int(cls), "score": float(score),
                            "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(annotations)
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0])


@pytest.mark.slow
def test_files_signature_and_contract(trained):
    for quantize, path in trained["files"].items():
        assert path == tflite_lib.tflite_path(os.path.join(trained["root"], "exported"), quantize)
        interpreter = interpreter_lib.Interpreter(model_path=path)
        signature = interpreter.get_signature_list()["serving_default"]
        assert signature["inputs"] == ["images"]
        assert sorted(signature["outputs"]) == sorted(tflite_lib.OUTPUT_KEYS)
        detail = interpreter.get_signature_runner().get_input_details()["images"]
        assert detail["dtype"] == np.uint8 and list(detail["shape"]) == [1, 128, 128, 3]
        with open(path[:-len(".tflite")] + ".json", encoding="utf-8") as f:
            assert json.load(f)["quantize"] == quantize


@pytest.mark.slow
@pytest.mark.parametrize("quantize", ["none", "float16", "dynamic"])
def test_detections_match_the_saved_model(trained, quantize):
    lite = _run_tflite(trained["files"][quantize], trained["images"])
    compared, problems = 0, []
    for image_id, reference in trained["reference"].items():
        out = lite[image_id]
        assert out["detection_boxes"].dtype == np.float32 and out["detection_classes"].dtype == np.int32
        n = int(out["num_detections"][0])
        for key in ("detection_boxes", "detection_classes", "detection_scores", "detection_masks"):
            assert not np.any(out[key][0, n:]), f"{key} rows past num_detections are not zero"
        threshold, atol = MATCH_SCORE, SCORE_ATOL[quantize]
        compared += len(_above(reference, threshold)[1]) + len(_above(out, threshold)[1])
        problems += [f"image {image_id} SavedModel-only: {p}" for p in _unmatched(reference, out, atol, threshold)]
        problems += [f"image {image_id} TFLite-only: {p}" for p in _unmatched(out, reference, atol, threshold)]
        if quantize == "none":  # float32: the masks too
            boxes_r, boxes_t = reference["detection_masks"], out["detection_masks"]
            np.testing.assert_allclose(boxes_t, boxes_r, atol=1e-3)
    assert compared >= 40, f"only {compared} detections to compare: the fixture model should detect"
    assert len(problems) <= (1.0 - MATCHED_FRACTION[quantize]) * compared, "\n".join(problems)
    if quantize == "dynamic":
        reference_ap = _box_ap(trained["reference"], trained["annotations"])
        assert _box_ap(lite, trained["annotations"]) >= reference_ap - DYNAMIC_MAX_AP_DROP


@pytest.mark.slow
def test_int8_box_ap_within_0_03_of_the_saved_model(trained):
    reference_ap = _box_ap(trained["reference"], trained["annotations"])
    int8_ap = _box_ap(_run_tflite(trained["files"]["int8"], trained["images"]), trained["annotations"])
    assert reference_ap > 0.02, f"the fixture model should detect (box AP {reference_ap:.3f})"
    assert int8_ap >= reference_ap - INT8_MAX_AP_DROP, (int8_ap, reference_ap)


# === Errors (fast) ===

def test_an_op_without_builtin_kernel_is_named_with_its_source_line():
    def crop(images):  # CropAndResize has no TFLite builtin kernel
        boxes = tf.constant([[0.1, 0.1, 0.8, 0.9]])
        return {"crops": tf.image.crop_and_resize(images, boxes, tf.constant([0]), [7, 7])}

    with pytest.raises(tflite_lib.TFLiteConversionError) as error:
        tflite_lib.convert_endpoint(crop, [tf.TensorSpec([1, 16, 16, 3], tf.float32)])
    message = str(error.value)
    assert "CropAndResize" in message and "no TFLite builtin kernel" in message, message
    assert "test_tflite.py:" in message, message  # the line that created the op
    assert "\n" not in message and len(message) < 600


def test_converter_error_text_is_parsed():
    text = ("loc(callsite(\"/x/site-packages/keras/a.py\":3:1 at \"/repo/mrcnn_tf2/ops/roi_align.py\":202:1)): "
            "error: 'tf.BatchMatMulV2' op is neither a custom op nor a flex op\nerror: failed\n"
            "TF Select ops: BatchMatMulV2, Foo\n")
    message = tflite_lib.conversion_error_message(text, "int8")
    assert "BatchMatMulV2 (from /repo/mrcnn_tf2/ops/roi_align.py:202)" in message, message
    assert "Foo" in message and "--quantize=int8" in message


@pytest.mark.parametrize("flags, expected", [
    (dict(quantize="int8"), "applies to --format=tflite only"),
    (dict(format="tflite", quantize="int4"), "--quantize=int4 is not one of"),
    (dict(format="tflite", precision="bfloat16"), "--precision=bfloat16 applies to SavedModel exports"),
])
def test_cli_refuses_bad_format_and_quantize(tmp_path, flags, expected):
    with pytest.raises(cli.CliError, match=expected):
        cli.run(tiny_args(str(tmp_path), "export", model=str(tmp_path / "nothing"), config="shapes", **flags))


def test_fit_to_input_keeps_the_aspect_and_pads_bottom_right():
    image = np.full([40, 80, 3], 200, np.uint8)
    fitted, scale = tflite_lib.fit_to_input(image, 128)
    assert fitted.shape == (1, 128, 128, 3) and fitted.dtype == np.uint8 and scale == 1.6
    assert np.all(fitted[0, :64] == 200) and not np.any(fitted[0, 64:])


def test_input_size_of_square_and_short_side_presets():
    from mrcnn_tf2 import config

    assert tflite_lib.input_size(config.preset("shapes")) == 128
    assert tflite_lib.input_size(config.preset("coco_r50_fpn")) == 1024
    assert tflite_lib.input_size(config.preset("torchvision_r50_fpn")) == 800


@pytest.mark.slow
@pytest.mark.parametrize("preset, overrides, side", [
    ("coco_r50_fpn", {"model.image_size": 256}, 256),
    ("torchvision_r50_fpn", {"model.min_size": 224, "model.max_size": 320}, 224),
])
def test_resnet_presets_convert_and_run(tmp_path, preset, overrides, side):
    from mrcnn_tf2 import build_model, config

    cfg = config.preset(preset, overrides={**overrides, "model.detection.max_detections": 10})
    path = tflite_lib.export_tflite(build_model(cfg), cfg, str(tmp_path), "none")
    runner = interpreter_lib.Interpreter(model_path=path, num_threads=2).get_signature_runner()
    image = np.random.default_rng(0).integers(0, 256, [1, side, side, 3]).astype(np.uint8)
    out = runner(images=image)
    assert out["detection_boxes"].shape == (1, 10, 4) and out["detection_masks"].shape == (1, 10, 28, 28)
    assert np.all(np.isfinite(out["detection_boxes"])) and np.all(out["detection_boxes"] <= side)
