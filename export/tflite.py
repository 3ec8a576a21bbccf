"""TFLite export: checkpoint -> one ``.tflite`` file that the LiteRT interpreter runs with builtin ops only.

This module owns the TFLite graph, its conversion (float32, float16, dynamic-range or int8 quantization)
and the file layout::

    <export_dir>/tflite/model_<quantize>.tflite   quantize = none | float16 | dynamic | int8
    <export_dir>/tflite/model_<quantize>.json     input size, normalization, categories, quantization

TF Serving only reads integer folders of ``<export_dir>``, so the ``tflite/`` folder sits beside the
versioned SavedModels without disturbing them. A second export with the same ``quantize`` replaces the
file (written to a temporary name and renamed, never half-written).

The graph (signature ``serving_default``):

- input ``images``: ``uint8 [1, S, S, 3]`` RGB, S fixed at export (:func:`input_size`: ``model.image_size``
  for the square presets, ``model.min_size`` rounded up to ``model.size_divisibility`` for the
  ``short_side`` ones, e.g. 800 for the torchvision presets). The pixel normalization of the config runs
  inside the graph. An S x S image is processed exactly as the SavedModel processes it; for any other
  image the caller fits it first (:func:`fit_to_input`: long side to S with antialiased bilinear
  resizing, zero padding at the bottom and right) and divides the output boxes by the returned scale.
  The only difference to the SavedModel on such images is the padding: black pixels here, a normalized
  0 there (the same thing for the ``none`` normalization of the shapes preset).
- outputs: the SavedModel's five (``export/serving.py``), with batch 1 and the S x S input as the
  "original image": ``num_detections int32 [1]``, ``detection_boxes float32 [1, D, 4]`` (y1, x1, y2, x2
  pixels of the input), ``detection_classes int32 [1, D]`` (dataset category ids),
  ``detection_scores float32 [1, D]``, ``detection_masks float32 [1, D, M, M]`` (box-relative
  probabilities); rows past ``num_detections`` are zero.

Conversion goes through a temporary SavedModel (``keras.export.ExportArchive``) and
``TFLiteConverter.from_saved_model``: converting the traced function directly leaves the Keras 3
variables as TFLite resource variables that LiteRT never initializes (NaN or "READ_VARIABLE failed").
Only ``TFLITE_BUILTINS`` are allowed (``ai-edge-litert`` has no Flex delegate); an op without a builtin
kernel raises :class:`TFLiteConversionError` naming the op and the source line that created it.

Quantization (``tf.lite.Optimize.DEFAULT`` for all but ``none``): ``float16`` stores weights in float16
(computed in float32); ``dynamic`` stores weights in int8 and quantizes activations on the fly;
``int8`` runs the convolutions of the backbone and the FPN with int8 weights and activations (ranges
calibrated on representative images, :func:`calibration_images`) and every other op in float32 (see
``INT8_SCOPES``); inputs and outputs keep the dtypes above.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf
from mrcnn_tf2.export.serving import OUTPUT_KEYS, detections_to_original
from mrcnn_tf2.pipelines.preprocess import normalize_image

from mrcnn_tf2 import config as config_lib

__all__ = ["QUANTIZE_MODES", "TFLiteConversionError", "input_size", "tflite_path", "fit_to_input",
           "calibration_images", "TFLiteEndpoint", "convert_endpoint", "export_tflite",
           "export_tflite_from_checkpoint"]

QUANTIZE_MODES = ("none", "float16", "dynamic", "int8")
SIGNATURE = "serving_default"
TFLITE_DIR = "tflite"
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


class TFLiteConversionError(ValueError):
    """The TFLite converter refused the graph (the message names the blocking ops)."""


# === Input and paths ===

def input_size(cfg: config_lib.Config) -> int:
    """S, the fixed side of the TFLite input: ``model.image_size`` (square mode) or ``model.min_size``
    rounded up to ``model.size_divisibility`` (short_side mode; an S x S image then needs no resize)."""
    m = cfg.model
    if getattr(m, "resize_mode", "square") == "short_side":
        return -(-int(m.min_size) // int(m.size_divisibility)) * int(m.size_divisibility)
    return int(m.image_size)


def tflite_path(export_dir: str, quantize: str) -> str:
    """``<export_dir>/tflite/model_<quantize>.tflite``."""
    return os.path.join(export_dir, TFLITE_DIR, f"model_{quantize}.tflite")


def fit_to_input(image: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """Fits an image into the S x S TFLite input as the SavedModel's preprocessing resizes it.

    Args:
        image: ``[h, w, 3]`` uint8 RGB.
        size: S (:func:`input_size`).

    Returns:
        ``(input [1, S, S, 3] uint8, scale)``: the image resized so its long side is S (bilinear,
        antialiased when shrinking), at the top-left, zero padding; boxes of the input frame divided by
        ``scale`` are in the original image's pixels.
    """
    h, w = image.shape[:2]
    scale = size / max(h, w)
    new_hw = [min(size, max(1, round(h * scale))), min(size, max(1, round(w * scale)))]
    resized = image if new_hw == [h, w] else tf.image.resize(image, new_hw, antialias=True).numpy()
    canvas = np.zeros([1, size, size, 3], np.uint8)
    canvas[0, :new_hw[0], :new_hw[1]] = np.clip(np.round(resized), 0, 255).astype(np.uint8)
    return canvas, scale


def calibration_images(cfg: config_lib.Config, spec: str = "64") -> list[str]:
    """Image files for int8 calibration.

    Args:
        cfg: the config; its validation set (``data.val_images``, or the built-in shapes validation
            images under ``data.data_dir``) is used when ``spec`` is a count.
        spec: ``"N"`` (the first N validation images, sorted by name) or a glob of image files.

    Returns:
        Sorted file paths (at least one).

    Raises:
        FileNotFoundError: no image matches.
    """
    if spec.strip().isdigit():
        from mrcnn_tf2.pipelines.dataset_info import dataset_paths

        count = int(spec)
        folder = dataset_paths(cfg, "eval").images
        files = sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(_IMAGE_SUFFIXES))
        files = files[:count]
        where = f"the validation image folder '{folder}'"
    else:
        files = sorted(f for f in glob.glob(spec) if f.lower().endswith(_IMAGE_SUFFIXES))
        where = f"--calibration_images='{spec}'"
    if not files:
        raise FileNotFoundError(f"no calibration images in {where}: int8 quantization needs representative "
                                "images; pass --calibration_images=N (that many validation images) or a glob "
                                "such as 'photos/*.jpg'.")
    return files


def _representative(files: Sequence[str], size: int) -> Callable[[], Iterator[list[np.ndarray]]]:
    def dataset() -> Iterator[list[np.ndarray]]:
        for path in files:
            image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False).numpy()
            yield [fit_to_input(image, size)[0]]
    return dataset


# === Graph ===

class TFLiteEndpoint:
    """The TFLite graph over one model: ``images uint8 [1, S, S, 3]`` -> the five outputs.

    Args:
        model: a built ``MaskRCNN``.
        size: S (:func:`input_size`).
        pixel_normalization: ``cfg.model.pixel_normalization`` (applied in the graph).
        category_ids: ``cfg.data.category_ids`` (label k -> ``category_ids[k - 1]``); may be empty.
    """

    def __init__(self, model: keras.Model, size: int, pixel_normalization: str, category_ids: Sequence[int]):
        self.model = model
        self.size = int(size)
        self.pixel_normalization = pixel_normalization
        self.category_ids = tuple(int(c) for c in category_ids)

    @property
    def input_signature(self) -> list[tf.TensorSpec]:
        return [tf.TensorSpec([1, self.size, self.size, 3], tf.uint8, name="images")]

    def __call__(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """images ``[1, S, S, 3]`` uint8 RGB -> the ``OUTPUT_KEYS`` dict (see the module docstring)."""
        s = float(self.size)
        # The whole input is image: original = scaled = S x S, scale 1, offset 0.
        image_info = tf.constant([[[s, s], [s, s], [1.0, 1.0], [0.0, 0.0]]], tf.float32)
        detections = self.model(normalize_image(images, self.pixel_normalization), image_info, training=False)
        outputs = detections_to_original(detections, image_info, self.category_ids)
        return {key: outputs[key] for key in OUTPUT_KEYS}


# === Conversion ===

def convert_endpoint(function: Callable[..., dict[str, tf.Tensor]], input_signature: Sequence[tf.TensorSpec],
                     quantize: str = "none", representative: Iterable[str] | None = None,
                     size: int | None = None) -> bytes:
    """Converts a function of tensors to a TFLite flatbuffer with builtin ops only.

    Args:
        function: a Python function of the inputs returning a dict of tensors (the outputs' names).
        input_signature: its inputs (static shapes).
        quantize: one of ``QUANTIZE_MODES``.
        representative: image files for ``int8`` calibration (required then).
        size: S, the side the calibration images are fitted to (``int8``).

    Returns:
        The ``.tflite`` file content.

    Raises:
        TFLiteConversionError: an op has no TFLite builtin kernel (named with its source line) or the
            converter failed otherwise (its first error line).
    """
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {quantize!r}")
    if quantize == "int8" and (not representative or size is None):
        raise ValueError("int8 quantization needs representative images and the input size")
    staging = tempfile.mkdtemp(prefix="tflite-")
    try:
        archive = keras.export.ExportArchive()
        archive.add_endpoint(SIGNATURE, function, list(input_signature))
        archive.write_out(staging, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(staging, signature_keys=[SIGNATURE])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantize not in ("none", "int8"):
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        try:
            if quantize == "int8":
                return _convert_int8(converter, _representative(list(representative), int(size)))
            return converter.convert()
        except Exception as e:  # noqa: BLE001 - ConverterError and friends: one paragraph naming the ops
            text = str(e)
            ops = set(_UNSUPPORTED.findall(text))
            sources = _op_sources(function, input_signature, ops) if ops else {}
            raise TFLiteConversionError(conversion_error_message(text, quantize, sources)) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# int8: only the convolutions of the backbone and the FPN (most of the compute and of the weights) run
# int8 kernels; the heads and the post-processing (anchors, box decoding, ROIAlign coordinates, NMS,
# mask selection) stay float32. With every op quantized the shapes model's box AP fell from 0.067 to 0.0001.
INT8_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")
INT8_SCOPES = ("/mobilenetv3", "/resnet", "/fpn")


def _convert_int8(converter: tf.lite.TFLiteConverter, representative: Callable[[], Iterator[list[np.ndarray]]]
                  ) -> bytes:
    """int8 for the ``INT8_OPS`` inside ``INT8_SCOPES``, float32 for every other op (selective quantization)."""
    float_model = converter.convert()  # the op list and the output tensor names to keep in float32
    interpreter = tf.lite.Interpreter(model_content=float_model)
    names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()  # noqa: SLF001 - the only listing of a model's ops and their outputs
    keep_float = {names[op["outputs"][0]] for op in ops
                  if op["op_name"] in INT8_OPS and not any(s in names[op["outputs"][0]] for s in INT8_SCOPES)}
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    options = tf.lite.experimental.QuantizationDebugOptions(
        denylisted_ops=sorted({op["op_name"] for op in ops} - set(INT8_OPS)), denylisted_nodes=sorted(keep_float))
    debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=representative,
                                                         debug_options=options)
    return debugger.get_nondebug_quantized_model()


_UNSUPPORTED = re.compile(r"'tf\.(\w+)' op is neither a custom op nor a flex op")
_SELECT_LIST = re.compile(r"TF Select ops: ([\w, ]+)")
_SOURCE = re.compile(r'"([^"]+\.py)":(\d+):\d+')


def _project_frame(frames: Iterable) -> str:
    """``path:line`` of the innermost frame outside the Python installation's packages ("" if none)."""
    found = ""
    for frame in frames:
        if "site-packages" not in frame.filename and "dist-packages" not in frame.filename:
            path = frame.filename
            found = f"{os.path.relpath(path) if path.startswith(os.getcwd()) else path}:{frame.lineno}"
    return found


def _op_sources(function: Callable[..., dict[str, tf.Tensor]], input_signature: Sequence[tf.TensorSpec],
                op_types: set[str]) -> dict[str, str]:
    """Where the ops of ``op_types`` are created when ``function`` is traced: {op type: "path:line"}.

    The SavedModel the converter reads keeps no Python source locations, so the function is traced
    again here and its graph (and the graphs of its control-flow branches and loop bodies) searched.
    """
    try:
        graph = tf.function(function, input_signature=list(input_signature)).get_concrete_function().graph
    except Exception:  # noqa: BLE001 - the locations are a courtesy; the op names are still reported
        return {}
    sources: dict[str, str] = {}
    pending, seen = [graph], set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for op in current.get_operations():
            if op.type in op_types and op.type not in sources:
                sources[op.type] = _project_frame(op.traceback)
        pending += [f.graph for f in getattr(current, "_functions", {}).values() if hasattr(f, "graph")]
    return sources


def conversion_error_message(text: str, quantize: str = "none", sources: dict[str, str] | None = None) -> str:
    """One paragraph from the converter's error text: the ops without a builtin kernel and where they
    come from (``sources``, else the innermost source line in the converter's locations), or the first
    error line."""
    ops: dict[str, str] = dict(sources or {})
    for line in text.splitlines():
        match = _UNSUPPORTED.search(line)
        if not match:
            continue
        located = [f"{os.path.relpath(path) if path.startswith(os.getcwd()) else path}:{number}"
                   for path, number in _SOURCE.findall(line[:match.start()])
                   if "site-packages" not in path and "dist-packages" not in path]
        if not ops.get(match.group(1)):
            ops[match.group(1)] = located[-1] if located else ""
    for match in _SELECT_LIST.finditer(text):
        for name in match.group(1).split(","):
            if name.strip():
                ops.setdefault(name.strip(), "")
    if ops:
        named = ", ".join(f"{op} (from {src})" if src else op for op, src in sorted(ops.items()))
        return (f"TFLite conversion (--quantize={quantize}) failed: the TensorFlow op(s) {named} have no TFLite "
                "builtin kernel, and the LiteRT interpreter has no Flex delegate to run them. Express that "
                "computation with builtin ops in the exported graph, or export a SavedModel "
                "(--format=saved_model) instead.")
    errors = [line.strip() for line in text.splitlines() if "error:" in line]
    first = (errors[0] if errors else text.strip().splitlines()[0] if text.strip() else "unknown error")
    return f"TFLite conversion (--quantize={quantize}) failed: {first[:400]}"


# === Files ===

def export_tflite(model: keras.Model, cfg: config_lib.Config, export_dir: str, quantize: str = "none",
                  representative: Sequence[str] = ()) -> str:
    """Converts ``model`` and writes ``<export_dir>/tflite/model_<quantize>.tflite`` and its ``.json``.

    Args:
        model: a built ``MaskRCNN`` holding the weights to export (built from ``cfg``).
        cfg: the resolved config (input size, normalization, categories, D and M).
        export_dir: the export base path (created if missing).
        quantize: one of ``QUANTIZE_MODES``.
        representative: calibration image files (``int8`` only; :func:`calibration_images`).

    Returns:
        The path of the ``.tflite`` file.
    """
    size = input_size(cfg)
    endpoint = TFLiteEndpoint(model, size, cfg.model.pixel_normalization, cfg.data.category_ids)
    content = convert_endpoint(endpoint, endpoint.input_signature, quantize, representative, size)
    path = tflite_path(export_dir, quantize)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ids, names = cfg.data.category_ids, cfg.data.category_names
    meta = {"input": {"name": "images", "shape": [1, size, size, 3], "dtype": "uint8",
                      "pixel_normalization_in_graph": cfg.model.pixel_normalization},
            "outputs": list(OUTPUT_KEYS), "quantize": quantize, "config": cfg.name,
            "max_detections": cfg.model.detection.max_detections, "mask_size": cfg.model.roi.mask_size,
            "categories": [{"label": k, "category_id": ids[k - 1] if ids else k,
                            "name": names[k - 1] if names else str(k)} for k in range(1, cfg.model.num_classes)]}
    for target, data, mode in ((path, content, "wb"), (path[:-len(".tflite")] + ".json",
                                                       json.dumps(meta, indent=2), "w")):
        temporary = f"{target}.tmp.{os.getpid()}"
        with open(temporary, mode) as f:
            f.write(data)
        os.replace(temporary, target)
    return path


def export_tflite_from_checkpoint(cfg: config_lib.Config, checkpoint: str, model_dir: str, export_dir: str,
                                  quantize: str = "none", calibration: str = "64") -> str:
    """Builds the model, restores a training checkpoint strictly and writes the ``.tflite`` file.

    Args:
        cfg, checkpoint, model_dir, export_dir: as ``mrcnn_tf2.export.saved_model.export_from_checkpoint``.
        quantize: one of ``QUANTIZE_MODES``.
        calibration: ``int8`` calibration images: a count of validation images or a glob.

    Returns:
        The path of the written ``.tflite`` file.
    """
    from mrcnn_tf2.export.saved_model import _resolve_checkpoint, restore_model_strictly

    from mrcnn_tf2.builder import build_model

    prefix = _resolve_checkpoint(checkpoint, model_dir)
    files = calibration_images(cfg, calibration) if quantize == "int8" else []
    # Direct convolutions: LiteRT has its own (XNNPACK), and int8 quantizes convolutions, not Winograd's matmuls.
    cfg = config_lib.apply_overrides(cfg, {"eval.winograd": False})
    model = build_model(cfg)
    restore_model_strictly(model, prefix, cfg.name)
    return export_tflite(model, cfg, export_dir, quantize, files)
