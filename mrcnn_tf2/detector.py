"""Detector: trained weights in, full-image detections out, for notebooks, ``--mode=predict`` and clients.

``Detector.from_run(model_dir)`` (the newest checkpoint and ``config.json`` of a training run) and
``Detector.from_saved_model(path)`` (an export of ``--mode=export``) give the same object (either may
compute in bfloat16: ``from_run(..., precision="bfloat16")``, or an export made with ``--precision``):
``detect(images)`` takes file paths, encoded bytes (JPEG/PNG/BMP/GIF) or uint8 RGB arrays of any sizes
and returns one :class:`Detection` per image in the image's own frame.

Conventions of every result (the same as the SavedModel outputs and the COCO results file):

- boxes: ``[y1, x1, y2, x2]`` float32 in pixels of the *original* image (as everywhere in this project;
  ``to_coco`` writes COCO ``[x, y, w, h]``), clipped to the image;
- classes: the dataset's category ids (``category_ids``) and names, not the model's labels 1..K;
- masks: ``[N, height, width]`` bool, pasted into the image (probabilities on request).

Inside, everything goes through one contract, the SavedModel's (DESIGN.md section 4): a *serve*
function maps uint8 images to ``num_detections [B]``, ``detection_boxes [B, D, 4]`` (original pixels),
``detection_classes [B, D]`` (category ids), ``detection_scores [B, D]`` and ``detection_masks
[B, D, M, M]`` (box-relative probabilities). A run directory is served by preprocess -> model ->
back to the original frame (:class:`ModelServe`), a SavedModel by its ``serve_image_tensor``
signature; the host side (decoding inputs, batching, pasting masks, thresholds) is shared.

Dependencies: this module imports TensorFlow and ``mrcnn_tf2`` only. The preprocessing (resize,
normalize, pad) is the project's one path in ``pipelines/preprocess.py``; ``mrcnn_tf2`` does not import
``pipelines`` at module level, so ``ModelServe`` takes the preprocess function as an argument and only
its default, :func:`default_preprocess`, reaches it, when called (see that function).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from mrcnn_tf2 import config as config_lib
from mrcnn_tf2 import precision as precision_lib
from mrcnn_tf2 import run_dir
from mrcnn_tf2.coco_categories import NO_CATEGORY
from mrcnn_tf2.detection import Detection, ImageError, ImageInput, as_list, load_image
from mrcnn_tf2.mask_paste import paste_masks
from mrcnn_tf2.original_frame import boxes_to_original

__all__ = ["ImageError", "Detection", "Detector", "ModelServe", "default_preprocess", "load_image",
           "model_outputs_to_original"]

# (image [h, w, 3] uint8, cfg) -> (model input [H, W, 3] float32, image_info [4, 2] float32)
PreprocessFn = Callable[[tf.Tensor, config_lib.Config], tuple[tf.Tensor, tf.Tensor]]
# uint8 [h, w, 3] images (sizes may differ) -> the SavedModel's five outputs, one row per image
ServeFn = Callable[[Sequence[np.ndarray]], Mapping[str, np.ndarray]]

OUTPUT_KEYS = ("num_detections", "detection_boxes", "detection_classes", "detection_scores", "detection_masks")
_PASTE_CHUNK = 16  # masks pasted at once: bounds the float32 working memory at 16 * H * W


# === Serving functions ===

def default_preprocess(image: tf.Tensor, cfg: config_lib.Config) -> tuple[tf.Tensor, tf.Tensor]:
    """The eval/export preprocessing of ``pipelines/preprocess.py`` with the model's settings.

    ``pipelines`` depends on ``mrcnn_tf2``, so this import is deferred to the call, and it is the only
    place where ``mrcnn_tf2`` reaches ``pipelines`` (pass ``preprocess=`` to avoid it).

    Args:
        image: ``[h, w, 3]`` uint8 RGB.
        cfg: the model's config.

    Returns:
        ``image [H, W, 3]`` float32 (normalized, zero padding) and ``image_info [4, 2]`` float32.
    """
    from mrcnn_tf2.pipelines.preprocess import preprocess_image, side_resize

    return preprocess_image(image, cfg.model.image_size, cfg.model.pixel_normalization,
                            resize=side_resize(cfg.model))


def model_outputs_to_original(outputs: Mapping[str, np.ndarray], image_info: np.ndarray,
                              category_ids: Sequence[int]) -> dict[str, np.ndarray]:
    """``MaskRCNN.call`` outputs (model-input pixels, labels 1..K) -> the SavedModel's outputs.

    A model-input point ``q`` came from the original point ``p = (q + offset) / scale`` (``image_info``
    rows 3 and 2; ``original_frame.boxes_to_original``); boxes are clipped to ``[0, orig_h] x [0, orig_w]``;
    label ``k`` becomes ``category_ids[k - 1]``; rows past ``num_detections`` are zero.

    Args:
        outputs: NumPy ``detection_boxes [B, D, 4]``, ``detection_scores [B, D]``, ``detection_classes
            [B, D]``, ``detection_masks [B, D, M, M]``, ``num_detections [B]``.
        image_info: ``[B, 4, 2]`` float32.
        category_ids: the K dataset ids.

    Returns:
        The five ``OUTPUT_KEYS`` arrays: int32 counts and classes, float32 boxes, scores and masks.
    """
    num = np.asarray(outputs["num_detections"]).astype(np.int32)
    scores = np.asarray(outputs["detection_scores"], np.float32)
    valid = np.arange(scores.shape[1])[None, :] < num[:, None]  # [B, D]
    boxes = boxes_to_original(outputs["detection_boxes"], image_info)
    table = np.array([0] + [int(c) for c in category_ids], np.int64)
    labels = np.clip(np.asarray(outputs["detection_classes"]).astype(np.int64), 0, len(category_ids))
    return {"num_detections": num,
            "detection_boxes": np.where(valid[..., None], boxes, 0.0).astype(np.float32),
            "detection_classes": np.where(valid, table[labels], 0).astype(np.int32),
            "detection_scores": np.where(valid, scores, 0.0).astype(np.float32),
            "detection_masks": np.where(valid[..., None, None],
                                        np.asarray(outputs["detection_masks"], np.float32), 0.0).astype(np.float32)}


class ModelServe:
    """The serve function of an in-memory model: preprocess each image -> ``model`` -> original frame.

    Images of any sizes share a batch: each is preprocessed on its own, the model inputs are zero-padded
    to the largest of the batch (zero is the padding value after normalization), and a partial batch is
    filled up to ``batch_size`` by repeating its first image (the model is traced for one static batch).

    Args:
        model: a built ``MaskRCNN`` of ``cfg`` holding the weights.
        cfg: its config (preprocessing settings, category mapping).
        preprocess: ``(image [h, w, 3] uint8, cfg) -> (image, image_info [4, 2])``; default
            :func:`default_preprocess`.
        batch_size: images per model call.
    """

    def __init__(self, model: Any, cfg: config_lib.Config, preprocess: PreprocessFn | None = None,
                 batch_size: int = 1):
        self.model = model
        self.cfg = cfg
        self.batch_size = int(batch_size)
        self.category_ids = _categories(cfg)[0]
        fn = preprocess or default_preprocess
        self._preprocess = tf.function(lambda image: fn(image, cfg),
                                       input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
        self._infer = tf.function(lambda images, info: model(images, info, training=False))

    def __call__(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """uint8 ``[h, w, 3]`` images (at most ``batch_size``) -> the five outputs, one row per image."""
        prepared = [self._preprocess(tf.convert_to_tensor(image)) for image in images]
        height = max(int(x.shape[0]) for x, _ in prepared)
        width = max(int(x.shape[1]) for x, _ in prepared)
        batch = [tf.pad(x, [[0, height - x.shape[0]], [0, width - x.shape[1]], [0, 0]]) for x, _ in prepared]
        info = [i for _, i in prepared]
        pad = max(self.batch_size - len(batch), 0)
        outputs = self._infer(tf.stack(batch + batch[:1] * pad), tf.stack(info + info[:1] * pad))
        outputs = {k: v.numpy()[:len(images)] for k, v in outputs.items()}
        return model_outputs_to_original(outputs, np.stack([i.numpy() for i in info]), self.category_ids)


class _SavedModelServe:
    """The ``serve_image_tensor`` signature of a loaded SavedModel; consecutive equal sizes share a call."""

    def __init__(self, loaded: Any):
        self.loaded = loaded  # keeps the variables alive
        self.signature = loaded.signatures["serve_image_tensor"]

    def __call__(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        groups: list[list[np.ndarray]] = []
        for image in images:
            if groups and groups[-1][0].shape == image.shape:
                groups[-1].append(image)
            else:
                groups.append([image])
        parts = [self.signature(images=tf.constant(np.stack(group))) for group in groups]
        return {key: np.concatenate([part[key].numpy() for part in parts]) for key in OUTPUT_KEYS}


def _categories(cfg: config_lib.Config) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """(category ids, names) of the K labels; without a mapping, labels 1..K named by their number."""
    ids = tuple(int(c) for c in cfg.data.category_ids) or tuple(range(1, cfg.model.num_classes))
    names = tuple(cfg.data.category_names) or tuple(str(c) for c in ids)
    return ids, names


# === Detector ===

class Detector:
    """Detects objects in images of any size; one inference path for notebooks, the CLI and clients.

    Example::

        from mrcnn_tf2 import Detector
        detector = Detector.from_run("logs/coco")       # or Detector.from_saved_model("exported/maskrcnn")
        result = detector.detect("photo.jpg")           # a list of inputs gives a list of results
        result.boxes, result.category_names, result.masks   # [N, 4] y1x1y2x2 pixels, N names, [N, H, W] bool
        picture = result.draw()                         # [H, W, 3] uint8, as --mode=predict draws it

    Args:
        serve: uint8 ``[h, w, 3]`` images (at most ``batch_size``, sizes may differ) -> the SavedModel's
            outputs for them (module docstring), as NumPy arrays with one row per image.
        category_ids: the K dataset category ids (``detection_classes`` values).
        category_names: their names.
        batch_size: images per ``serve`` call.
        config: the model's config, when known.
        source: what the weights are (a checkpoint prefix, a SavedModel path), for messages.
        precision: what the model computes in, ``float32`` or ``bfloat16`` (informative: ``serve`` decides).
    """

    def __init__(self, serve: ServeFn, category_ids: Sequence[int], category_names: Sequence[str],
                 batch_size: int = 1, config: config_lib.Config | None = None, source: str = "",
                 precision: str = "float32"):
        if len(category_ids) != len(category_names):
            raise ValueError(f"{len(category_ids)} category ids but {len(category_names)} names")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self.serve = serve
        self.category_ids = tuple(int(c) for c in category_ids)
        self.category_names = tuple(str(n) for n in category_names)
        self.batch_size = int(batch_size)
        self.config = config
        self.source = source
        self.precision = precision
        # How box-relative masks are pasted: the model's rule (torchvision presets: torchvision's).
        self.paste_mode = config.model.detection.paste_mode if config is not None else "box"
        self._label_of = {c: i + 1 for i, c in enumerate(self.category_ids)}

    # --- constructors ---

    @classmethod
    def from_model(cls, model: Any, cfg: config_lib.Config, preprocess: PreprocessFn | None = None,
                   batch_size: int | None = None, source: str = "") -> Detector:
        """A Detector over an in-memory ``MaskRCNN`` of ``cfg`` (weights already loaded).

        Args:
            model: the model.
            cfg: its config (``data.category_ids/names``, preprocessing; ``eval.batch_size`` by default).
            preprocess: see :class:`ModelServe`.
            batch_size: images per model call (default ``cfg.eval.batch_size``).
            source: a description of the weights.
        """
        batch_size = int(batch_size or cfg.eval.batch_size)
        ids, names = _categories(cfg)
        return cls(ModelServe(model, cfg, preprocess, batch_size), ids, names, batch_size, cfg, source,
                   precision=precision_lib.model_precision(model))

    @classmethod
    def from_run(cls, model_dir: str, checkpoint: str | None = None, preprocess: PreprocessFn | None = None,
                 batch_size: int | None = None, precision: str | None = None) -> Detector:
        """The model of a training run: ``<model_dir>/config.json`` and its newest checkpoint.

        Args:
            model_dir: the run directory (``--model_dir`` of training; also the output of
                ``python -m mrcnn_tf2.convert``).
            checkpoint: another checkpoint prefix (``.../ckpt-3000``) or folder of checkpoints instead of
                the newest one in ``<model_dir>/checkpoints``.
            preprocess: see :class:`ModelServe`.
            batch_size: images per model call (default ``eval.batch_size`` of the run's config).
            precision: ``float32`` or ``bfloat16`` (the ``mixed_bfloat16`` policy: bfloat16 compute on the
                float32 weights of any checkpoint; outputs stay float32); default: ``eval.precision`` of
                the run's config (float32 unless set).

        Raises:
            ValueError: ``precision`` is not float32 or bfloat16.
            FileNotFoundError: no ``config.json`` or no checkpoint.
            config.ConfigError: ``config.json`` is unreadable.
            ValueError, AssertionError: the checkpoint does not fit the model of ``config.json``.
        """
        if precision is not None:
            precision_lib.policy_name(precision)  # a bad value fails before anything is read
        config_path = os.path.join(model_dir, run_dir.CONFIG_FILE)
        if not os.path.isfile(config_path):
            raise FileNotFoundError(f"'{config_path}' does not exist: pass the run directory of --mode=train "
                                    "(it holds config.json and checkpoints/), or use Detector.from_saved_model "
                                    "for an export")
        where = checkpoint or os.path.join(model_dir, run_dir.CHECKPOINTS_DIR)
        prefix = run_dir.find_checkpoint(where)
        if prefix is None:
            raise FileNotFoundError(f"no checkpoint in '{where}': train first, or pass checkpoint= a prefix such "
                                    "as logs/run/checkpoints/ckpt-3000 (with ckpt-3000.index beside it)")
        cfg = run_dir.read_config(config_path)
        if precision is not None:
            cfg = config_lib.apply_overrides(cfg, {"eval.precision": precision})
        model = precision_lib.build_inference_model(cfg)
        run_dir.restore_model(model, prefix)
        return cls.from_model(model, cfg, preprocess, batch_size, source=prefix)

    @classmethod
    def from_saved_model(cls, path: str, batch_size: int | None = None) -> Detector:
        """An export of ``--mode=export``: ``<export_dir>/<version>`` (or ``<export_dir>``: its newest version).

        Runs the ``serve_image_tensor`` signature; the category names (and ``precision``, the export's
        ``eval.precision``) come from the ``assets.extra/config.json`` that the export writes beside the
        SavedModel.

        Args:
            path: the SavedModel folder, or the model base path holding integer versions.
            batch_size: images per call of the signature (default: ``eval.batch_size`` of the export's
                config); a call batches consecutive images of the same size, others go one by one.

        Raises:
            FileNotFoundError: no SavedModel at ``path``.
        """
        path = _saved_model_version(path)
        extra = os.path.join(path, "assets.extra")
        cfg = None
        if os.path.isfile(os.path.join(extra, run_dir.CONFIG_FILE)):
            cfg = run_dir.read_config(os.path.join(extra, run_dir.CONFIG_FILE))
            ids, names = _categories(cfg)
        elif os.path.isfile(os.path.join(extra, "categories.json")):
            with open(os.path.join(extra, "categories.json"), encoding="utf-8") as f:
                categories = json.load(f)["categories"]
            ids = tuple(c["category_id"] for c in categories)
            names = tuple(c["name"] for c in categories)
        else:
            raise FileNotFoundError(f"'{extra}' holds neither config.json nor categories.json (written by "
                                    "--mode=export): the category names are unknown")
        batch_size = int(batch_size or (cfg.eval.batch_size if cfg is not None else 1))
        serve = _SavedModelServe(tf.saved_model.load(path))
        return cls(serve, ids, names, batch_size, cfg, source=path,
                   precision=cfg.eval.precision if cfg is not None else "float32")

    # --- inference ---

    def detect(self, images: ImageInput | Sequence[ImageInput], score_threshold: float | None = None,
               mask_threshold: float = 0.5, return_probabilities: bool = False) -> Detection | list[Detection]:
        """Detections of one image or of a list of images, each in its original frame.

        Args:
            images: one input or a list (or a ``[B, H, W, 3]`` uint8 array); each a file path, encoded
                bytes or a uint8 ``[H, W, 3]`` RGB array, sizes may differ (see :func:`load_image`).
            score_threshold: keep detections scoring at least this; None keeps all that the model
                returns (``model.detection.score_threshold`` and up).
            mask_threshold: a pasted mask probability ``>= mask_threshold`` is foreground.
            return_probabilities: ``masks`` as float32 probabilities instead of bool.

        Returns:
            A :class:`Detection` for a single input, else a list with one per input, in order.

        Raises:
            ImageError: an input is not an image (the message names it).
        """
        items, single = as_list(images)
        decoded = [load_image(item) for item in items]
        results: list[Detection] = []
        for start in range(0, len(decoded), self.batch_size):
            chunk = decoded[start:start + self.batch_size]
            outputs = self.serve(chunk)
            for row, image in enumerate(chunk):
                results.append(self._result(outputs, row, image, score_threshold, mask_threshold,
                                            return_probabilities))
        return results[0] if single else results

    def _result(self, outputs: Mapping[str, np.ndarray], row: int, image: np.ndarray, score_threshold: float | None,
                mask_threshold: float, return_probabilities: bool) -> Detection:
        n = int(outputs["num_detections"][row])
        scores = np.asarray(outputs["detection_scores"][row, :n], np.float32)
        keep = np.ones(n, bool) if score_threshold is None else scores >= score_threshold
        scores = scores[keep]
        boxes = np.asarray(outputs["detection_boxes"][row, :n], np.float32)[keep]
        ids = np.asarray(outputs["detection_classes"][row, :n], np.int64)[keep]
        box_masks = np.asarray(outputs["detection_masks"][row, :n], np.float32)[keep]
        unknown = sorted(set(ids.tolist()) - set(self._label_of))
        if unknown:
            raise ValueError(f"{self.source}: detection classes {unknown} are not among the category ids "
                             f"{list(self.category_ids)}")
        names = {c: n for c, n in zip(self.category_ids, self.category_names)}
        real = np.array([names[int(c)] != NO_CATEGORY for c in ids], bool)  # torchvision's unused COCO ids
        scores, boxes, ids, box_masks = scores[real], boxes[real], ids[real], box_masks[real]
        height, width = image.shape[:2]
        masks = np.zeros((len(ids), height, width), np.float32 if return_probabilities else bool)
        for start in range(0, len(ids), _PASTE_CHUNK):
            pasted = paste_masks(box_masks[start:start + _PASTE_CHUNK], boxes[start:start + _PASTE_CHUNK],
                                 height, width, mode=self.paste_mode)
            masks[start:start + _PASTE_CHUNK] = pasted if return_probabilities else pasted >= mask_threshold
        return Detection(boxes=boxes, scores=scores, category_ids=ids,
                         category_names=tuple(names[int(c)] for c in ids), masks=masks,
                         labels=np.array([self._label_of[int(c)] for c in ids], np.int64),
                         mask_threshold=float(mask_threshold), image=image, class_names=self.category_names)

    def __repr__(self) -> str:
        return (f"Detector({self.source or 'custom serve'}, {len(self.category_ids)} categories, "
                f"batch_size={self.batch_size}, precision={self.precision})")


def _saved_model_version(path: str) -> str:
    """``path`` when it is a SavedModel, else its highest integer-named sub-folder that is one."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    versions = sorted(int(name) for name in (os.listdir(path) if os.path.isdir(path) else ())
                       if name.isdigit() and os.path.isfile(os.path.join(path, name, "saved_model.pb")))
    if not versions:
        raise FileNotFoundError(f"no SavedModel at '{path}' (no saved_model.pb, no integer version folder with "
                                "one): pass what --mode=export wrote, e.g. exported/maskrcnn/1")
    return os.path.join(path, str(versions[-1]))
