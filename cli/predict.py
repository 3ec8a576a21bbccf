"""``--mode=predict``: detections for every image of ``--images`` (a glob), drawn and as JSON.

For ``<output_dir>/<stem>.png`` the masks, boxes, class names and scores of the detections scoring at
least ``DRAW_THRESHOLD`` are drawn on the original image. ``<output_dir>/<stem>.json`` holds every
detection the model returns (``model.detection.score_threshold`` and up), best first::

    {"image": "<path>", "height": H, "width": W,
     "detections": [{"category_id": <dataset id>, "category_name": "...", "score": 0.97,
                     "bbox": [x, y, w, h],                                # original-image pixels (COCO)
                     "segmentation": {"size": [H, W], "counts": "..."}}]}  # COCO RLE, full image

Boxes and masks are in original-image pixels and the masks are COCO RLE of the whole image, as in the
results file of ``--mode=eval`` (``pycocotools.mask.decode`` gives an ``[H, W]`` uint8 mask).
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any

import numpy as np
import tensorflow as tf
from pycocotools import mask as mask_util

from cli.common import CliError, Prepared
from cli.evaluate import inference_function
from cli.weights import load_weights
from mrcnn_tf2 import config as config_lib
from mrcnn_tf2 import evaluation, visualize
from mrcnn_tf2.builder import build_model
from pipelines.preprocess import preprocess_image, side_resize

__all__ = ["DRAW_THRESHOLD", "list_images", "load_image", "predict_image", "run"]

DRAW_THRESHOLD = 0.5


def list_images(pattern: str) -> list[str]:
    """The files matching a glob (``**`` recurses), sorted; a folder means every file in it."""
    if os.path.isdir(pattern):
        pattern = os.path.join(pattern, "*")
    files = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    if not files:
        raise CliError(f"--images='{pattern}' matches no file; pass a glob such as 'photos/*.jpg' (quote it).")
    return files


def load_image(path: str) -> np.ndarray:
    """Decodes a JPEG/PNG/BMP/GIF file to [H, W, 3] uint8 RGB (first frame of animations)."""
    try:
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    except tf.errors.OpError as e:
        raise CliError(f"'{path}' is not a readable image ({e.message.splitlines()[0]}).") from None
    return image.numpy()


def predict_image(infer: Any, image: np.ndarray, cfg: config_lib.Config) -> list[dict[str, Any]]:
    """Detections of one image in original-image pixels and dataset category ids.

    Args:
        infer: ``cli.evaluate.inference_function(model)``.
        image: [H, W, 3] uint8 RGB.
        cfg: the model's config (image size, pixel normalization, category mapping).

    Returns:
        The detection dicts of the module docstring, best first.
    """
    inputs, info = preprocess_image(tf.convert_to_tensor(image), cfg.model.image_size,
                                    cfg.model.pixel_normalization, resize=side_resize(cfg.model))
    outputs = {k: v.numpy() for k, v in infer(inputs[None], info[None]).items()}
    detections = evaluation.detections_to_coco(outputs, info.numpy()[None], np.zeros([1], np.int64),
                                               cfg.data.category_ids, category_names=cfg.data.category_names,
                                               paste_mode=cfg.model.detection.paste_mode)
    names = dict(zip(cfg.data.category_ids, cfg.data.category_names))
    out = []
    for det in detections:
        out.append({"category_id": det["category_id"], "category_name": names[det["category_id"]],
                    "score": det["score"], "bbox": det["bbox"], "segmentation": det["segmentation"]})
    return out


def _draw(image: np.ndarray, detections: list[dict[str, Any]], cfg: config_lib.Config) -> np.ndarray:
    label_of = {cid: i + 1 for i, cid in enumerate(cfg.data.category_ids)}
    height, width = image.shape[:2]
    if not detections:
        return image.copy()
    boxes = np.array([[y, x, y + h, x + w] for x, y, w, h in (d["bbox"] for d in detections)], np.float32)
    rles = [{"size": d["segmentation"]["size"], "counts": d["segmentation"]["counts"].encode()} for d in detections]
    masks = mask_util.decode(rles).transpose(2, 0, 1).reshape(len(detections), height, width)
    classes = np.array([label_of[d["category_id"]] for d in detections])
    scores = np.array([d["score"] for d in detections], np.float32)
    return visualize.draw_detections(image, boxes, classes, scores, masks, cfg.data.category_names, DRAW_THRESHOLD)


def run(prep: Prepared) -> dict[str, Any]:
    """``--mode=predict``; returns ``{"images": N, "output_dir": DIR, "files": [(png, json), ...]}``."""
    cfg, args = prep.cfg, prep.args
    files = list_images(args.images)
    model = build_model(cfg)
    loaded = load_weights(model, prep.weights, cfg)
    infer = inference_function(model)
    os.makedirs(args.output_dir, exist_ok=True)
    if args.verbose:
        print(f"Predicting {len(files)} image(s) with {loaded}", flush=True)
    written: list[tuple[str, str]] = []
    used: set[str] = set()
    for path in files:
        stem = os.path.splitext(os.path.basename(path))[0]
        name, k = stem, 1
        while name in used:
            k += 1
            name = f"{stem}_{k}"
        used.add(name)
        image = load_image(path)
        detections = predict_image(infer, image, cfg)
        png = visualize.save_png(os.path.join(args.output_dir, f"{name}.png"), _draw(image, detections, cfg))
        record = {"image": path, "height": int(image.shape[0]), "width": int(image.shape[1]),
                  "detections": detections}
        json_path = os.path.join(args.output_dir, f"{name}.json")
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(record, f)
        written.append((png, json_path))
        if args.verbose:
            shown = sum(d["score"] >= DRAW_THRESHOLD for d in detections)
            print(f"{path}: {len(detections)} detections ({shown} drawn) -> {png}", flush=True)
    return {"images": len(files), "output_dir": args.output_dir, "files": written}
