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
from mrcnn_tf2.cli.common import CliError, Prepared
from mrcnn_tf2.cli.weights import load_weights

from mrcnn_tf2 import detector as detector_lib
from mrcnn_tf2 import visualize
from mrcnn_tf2.builder import build_model

__all__ = ["DRAW_THRESHOLD", "list_images", "load_image", "detection_records", "run"]

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
        return detector_lib.load_image(path)
    except detector_lib.ImageError as e:
        raise CliError(f"{e}.") from None


def detection_records(result: detector_lib.Detection) -> list[dict[str, Any]]:
    """The ``detections`` list of the JSON file (module docstring) of one ``Detection``, best first."""
    return [{"category_id": entry["category_id"], "category_name": name, "score": entry["score"],
             "bbox": entry["bbox"], "segmentation": entry["segmentation"]}
            for entry, name in zip(result.to_coco(0), result.category_names)]


def run(prep: Prepared) -> dict[str, Any]:
    """``--mode=predict``; returns ``{"images": N, "output_dir": DIR, "files": [(png, json), ...]}``.

    Inference is ``mrcnn_tf2.Detector`` over the restored model (``eval.batch_size`` images per call).
    """
    cfg, args = prep.cfg, prep.args
    files = list_images(args.images)
    model = build_model(cfg)
    loaded = load_weights(model, prep.weights, cfg)
    detector = detector_lib.Detector.from_model(model, cfg, source=prep.weights.path)
    os.makedirs(args.output_dir, exist_ok=True)
    if args.verbose:
        print(f"Predicting {len(files)} image(s) with {loaded}", flush=True)
    written: list[tuple[str, str]] = []
    used: set[str] = set()
    for start in range(0, len(files), detector.batch_size):
        batch = files[start:start + detector.batch_size]
        for path, result in zip(batch, detector.detect([load_image(p) for p in batch])):
            stem = os.path.splitext(os.path.basename(path))[0]
            name, k = stem, 1
            while name in used:
                k += 1
                name = f"{stem}_{k}"
            used.add(name)
            png = visualize.save_png(os.path.join(args.output_dir, f"{name}.png"), result.draw(DRAW_THRESHOLD))
            height, width = result.image.shape[:2]
            record = {"image": path, "height": int(height), "width": int(width),
                      "detections": detection_records(result)}
            json_path = os.path.join(args.output_dir, f"{name}.json")
            with open(json_path, "w", encoding="utf-8") as f:
                json.dump(record, f)
            written.append((png, json_path))
            if args.verbose:
                shown = int(np.sum(result.scores >= DRAW_THRESHOLD))
                print(f"{path}: {len(result)} detections ({shown} drawn) -> {png}", flush=True)
    return {"images": len(files), "output_dir": args.output_dir, "files": written}
