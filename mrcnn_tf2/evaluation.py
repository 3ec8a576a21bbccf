"""COCO evaluation on the host: model detections -> COCO results (RLE masks) -> pycocotools box/mask AP.

This module owns the edge between the model frame and the dataset frame for evaluation and results
files: boxes go from model-input pixels back to original-image pixels, contiguous labels ``1..K`` go
back to dataset category ids, and box-relative masks are pasted into the original image (by the config's
``model.detection.paste_mode``, ``mrcnn_tf2.mask_paste``) and RLE-encoded. Labels whose category name is
``coco_categories.NO_CATEGORY`` ("N/A": outputs of torchvision's 91-way COCO models that belong to no
category) are skipped. It runs in NumPy and pycocotools, never inside a graph, and imports no TensorFlow.

Output of ``CocoEvaluator.evaluate`` (the ``metrics.json`` schema of DESIGN.md section 4)::

    {"bbox": {"AP", "AP50", "AP75", "APs", "APm", "APl"}, "segm": {...same keys...},
     "per_class": {"<category name>": {"bbox_AP", "segm_AP"}}, "num_images": N, "checkpoint": ""}

Values are pycocotools' (0..1); -1 means "no ground truth in that range" (e.g. APl on small objects).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from mrcnn_tf2.coco_categories import is_real_category
from mrcnn_tf2.mask_paste import paste_masks

__all__ = ["METRIC_KEYS", "detections_to_coco", "CocoEvaluator", "format_metrics"]

# Keys of each iou type's section, in the order of COCOeval.stats[0:6].
METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
_PASTE_CHUNK = 16  # detections pasted at once; bounds memory at 16 * H * W floats


def _to_numpy(outputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    keys = ("detection_boxes", "detection_scores", "detection_classes", "detection_masks", "num_detections")
    missing = [k for k in keys if k not in outputs]
    if missing:
        raise KeyError(f"model outputs lack {missing}")
    return {k: np.asarray(outputs[k]) for k in keys}


def detections_to_coco(outputs: Mapping[str, np.ndarray], image_info: np.ndarray, image_ids: np.ndarray,
                       category_ids: Sequence[int], mask_threshold: float = 0.5,
                       category_names: Sequence[str] | None = None, paste_mode: str = "box"
                       ) -> list[dict[str, Any]]:
    """Converts a batch of model detections to COCO result dicts in original-image pixels.

    Args:
        outputs: the model's output dict (NumPy arrays or eager tensors):
            ``detection_boxes [B, D, 4]`` float32 y1x1y2x2 pixels of the model input,
            ``detection_scores [B, D]`` float32, ``detection_classes [B, D]`` int contiguous labels 1..K,
            ``detection_masks [B, D, M, M]`` float32 probabilities whose grid spans the box,
            ``num_detections [B]`` int32; rows past ``num_detections`` are ignored.
        image_info: [B, 4, 2] float32, ``[[orig_h, orig_w], [scaled_h, scaled_w], [y_scale, x_scale],
            [y_offset, x_offset]]``; an original point p is ``p * scale - offset`` in the model input.
        image_ids: [B] int dataset image ids; a negative id marks a padding image and is skipped.
        category_ids: label i (1..K) becomes ``category_ids[i - 1]``.
        mask_threshold: pasted probabilities ``>= mask_threshold`` are foreground.
        category_names: names in the order of ``category_ids``; detections of labels named "N/A"
            (``coco_categories.NO_CATEGORY``) are left out. None keeps every label.
        paste_mode: ``"box"`` or ``"torchvision"`` (``model.detection.paste_mode``).

    Returns:
        One dict per detection: ``{"image_id": int, "category_id": int, "bbox": [x, y, w, h]`` original
        pixels clipped to the image, ``"score": float, "segmentation": {"size": [h, w], "counts": str}}``.

    Raises:
        ValueError: a label within ``num_detections`` is outside 1..K.
    """
    out = _to_numpy(outputs)
    image_info = np.asarray(image_info, np.float64)
    image_ids = np.asarray(image_ids).reshape(-1)
    category_ids = [int(c) for c in category_ids]
    real = np.array([True] + [is_real_category(str(n)) for n in (category_names or ["" for _ in category_ids])])
    if len(real) != len(category_ids) + 1:
        raise ValueError(f"got {len(category_ids)} category ids but {len(real) - 1} category names")
    results: list[dict[str, Any]] = []
    for b, image_id in enumerate(image_ids):
        n = int(out["num_detections"][b])
        if image_id < 0 or n == 0:
            continue
        (orig_h, orig_w), _, (y_scale, x_scale), (y_off, x_off) = image_info[b]
        height, width = round(orig_h), round(orig_w)
        boxes = out["detection_boxes"][b, :n].astype(np.float64)
        boxes = (boxes + [y_off, x_off, y_off, x_off]) / [y_scale, x_scale, y_scale, x_scale]
        boxes = np.clip(boxes, 0.0, [orig_h, orig_w, orig_h, orig_w])
        labels = out["detection_classes"][b, :n].astype(np.int64)
        if labels.min() < 1 or labels.max() > len(category_ids):
            raise ValueError(f"image {image_id}: detection labels {labels.tolist()} "
                             f"outside 1..{len(category_ids)}")
        keep = real[labels]
        boxes, labels = boxes[keep], labels[keep]
        scores = out["detection_scores"][b, :n][keep]
        masks = out["detection_masks"][b, :n][keep].astype(np.float32)
        n = len(labels)
        rles: list[dict[str, Any]] = []
        for start in range(0, n, _PASTE_CHUNK):
            stop = min(start + _PASTE_CHUNK, n)
            pasted = paste_masks(masks[start:stop], boxes[start:stop].astype(np.float32), height, width,
                                 mode=paste_mode)
            binary = np.asfortranarray((pasted >= mask_threshold).transpose(1, 2, 0).astype(np.uint8))
            rles.extend(mask_util.encode(binary))
        for box, label, score, rle in zip(boxes, labels, scores, rles):
            y1, x1, y2, x2 = (float(v) for v in box)
            segmentation = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
            results.append({
                "image_id": int(image_id),
                "category_id": category_ids[label - 1],
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": float(score),
                "segmentation": segmentation,
            })
    return results


class CocoEvaluator:
    """Accumulates detections batch by batch and computes COCO box and mask AP with pycocotools.

    ``ground_truth`` is a COCO dict or an instances JSON file read as is. The CLI passes
    ``mrcnn_tf2.pipelines.coco.ground_truth(dataset)``: the instances that training uses, after the same checks
    (pycocotools itself fails on 2-point polygons, 4-number polygons read as boxes, missing ``area`` or
    ``iscrowd``), so any dataset that trains also evaluates. Only the images passed to ``update`` are
    evaluated (``params.imgIds``), over the categories of ``category_ids`` (less the "N/A"
    placeholders of torchvision's 91-way labels). Crowd ground truth
    (``iscrowd=1``) is handled by pycocotools: detections matched to it are neither true nor false
    positives.

    Example::

        evaluator = CocoEvaluator(coco.ground_truth(dataset), cfg.data.category_ids, cfg.data.category_names)
        for images, image_info, image_ids in dataset:
            evaluator.update(model(images, image_info), image_info, image_ids)
        metrics = evaluator.evaluate()
        print(format_metrics(metrics))
        evaluator.write_results("submission.json")
    """

    def __init__(self, ground_truth: str | Mapping[str, Any], category_ids: Sequence[int],
                 category_names: Sequence[str], mask_threshold: float = 0.5, paste_mode: str = "box"):
        if len(category_ids) != len(category_names) or not category_ids:
            raise ValueError(f"need as many category ids as names (and at least one), got "
                             f"{len(category_ids)} ids and {len(category_names)} names")
        with contextlib.redirect_stdout(io.StringIO()):
            if isinstance(ground_truth, str):
                if not os.path.isfile(ground_truth):
                    raise FileNotFoundError(f"annotation file '{ground_truth}' does not exist")
                self.coco_gt = COCO(ground_truth)
            else:
                self.coco_gt = COCO()
                self.coco_gt.dataset = {key: list(ground_truth.get(key, []))
                                        for key in ("images", "annotations", "categories")}
                self.coco_gt.createIndex()
        self.category_ids = [int(c) for c in category_ids]
        self.category_names = [str(n) for n in category_names]
        self.mask_threshold = mask_threshold
        self.paste_mode = paste_mode
        self._known_ids = set(self.coco_gt.getImgIds())
        self._seen: list[int] = []
        self._seen_set: set[int] = set()
        self._results: list[dict[str, Any]] = []
        self.summaries: dict[str, str] = {}  # pycocotools' summarize() text per iou type, after evaluate()

    @property
    def results(self) -> list[dict[str, Any]]:
        """The COCO result dicts accumulated so far (see ``detections_to_coco``)."""
        return self._results

    @property
    def image_ids(self) -> list[int]:
        """Dataset image ids seen so far, in order."""
        return list(self._seen)

    def update(self, outputs: Mapping[str, Any], image_info: Any, image_ids: Any) -> None:
        """Adds one batch; arguments as in ``detections_to_coco``.

        Negative image ids (padding) are skipped; an id seen before is skipped too (its detections are
        already recorded), which makes repeat-padded final batches harmless.

        Raises:
            ValueError: an image id is not in the annotation file.
        """
        image_ids = np.asarray(image_ids).reshape(-1).astype(np.int64)
        unknown = [int(i) for i in image_ids if i >= 0 and int(i) not in self._known_ids]
        if unknown:
            raise ValueError(f"image ids {unknown} are not in the annotation file")
        keep = []
        for i in image_ids:
            fresh = i >= 0 and int(i) not in self._seen_set
            keep.append(int(i) if fresh else -1)
            if fresh:
                self._seen.append(int(i))
                self._seen_set.add(int(i))
        self._results.extend(detections_to_coco(outputs, image_info, np.array(keep, np.int64),
                                                self.category_ids, self.mask_threshold,
                                                self.category_names, self.paste_mode))

    def _load_results(self, iou_type: str) -> COCO:
        if not self._results:  # COCO.loadRes fails on an empty list: an empty results set instead
            coco_dt = COCO()
            coco_dt.dataset = {"images": list(self.coco_gt.dataset["images"]),
                               "categories": list(self.coco_gt.dataset.get("categories", [])),
                               "annotations": []}
            with contextlib.redirect_stdout(io.StringIO()):
                coco_dt.createIndex()
            return coco_dt
        # loadRes adds keys to the dicts it gets: give it copies. For masks, drop the box so that
        # pycocotools uses the mask area (not the box area) for the small/medium/large split.
        drop = ("bbox",) if iou_type == "segm" else ("segmentation",)
        results = [{k: v for k, v in r.items() if k not in drop} for r in self._results]
        with contextlib.redirect_stdout(io.StringIO()):
            return self.coco_gt.loadRes(results)

    def _run(self, iou_type: str) -> tuple[dict[str, float], dict[int, float]]:
        coco_eval = COCOeval(self.coco_gt, self._load_results(iou_type), iouType=iou_type)
        coco_eval.params.imgIds = sorted(self._seen)
        coco_eval.params.catIds = sorted(c for c, name in zip(self.category_ids, self.category_names)
                                         if is_real_category(name))
        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        self.summaries[iou_type] = text.getvalue()
        overall = {key: float(coco_eval.stats[i]) for i, key in enumerate(METRIC_KEYS)}
        # precision: [iou thresholds, recall points, categories, area ranges, max dets]; area "all",
        # maxDets 100; -1 marks cells without ground truth.
        precision = coco_eval.eval["precision"]
        per_class = {}
        for k, cat_id in enumerate(coco_eval.params.catIds):
            p = precision[:, :, k, 0, -1]
            p = p[p > -1]
            per_class[cat_id] = float(p.mean()) if p.size else -1.0
        return overall, per_class

    def evaluate(self) -> dict[str, Any]:
        """Box and mask AP over the images seen so far, as the ``metrics.json`` dict.

        ``checkpoint`` is left empty for the caller to fill.

        Raises:
            ValueError: no image has been passed to ``update``.
        """
        if not self._seen:
            raise ValueError("no images were evaluated: call update() with at least one batch first")
        bbox, bbox_per_class = self._run("bbox")
        segm, segm_per_class = self._run("segm")
        per_class = {name: {"bbox_AP": bbox_per_class[cat_id], "segm_AP": segm_per_class[cat_id]}
                     for cat_id, name in zip(self.category_ids, self.category_names) if is_real_category(name)}
        return {"bbox": bbox, "segm": segm, "per_class": per_class, "num_images": len(self._seen),
                "checkpoint": ""}

    def write_results(self, path: str) -> str:
        """Writes the results list as JSON (loadable by ``COCO.loadRes``); returns ``path``."""
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self._results, f)
        return path


def _fmt(value: float) -> str:
    return "    -" if value < 0 else f"{value:5.3f}"


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """Text tables of a ``metrics.json`` dict: overall bbox/segm AP, then AP per class (-1 shown as -)."""
    lines = ["type   " + "  ".join(f"{k:>5}" for k in METRIC_KEYS)]
    for iou_type in ("bbox", "segm"):
        lines.append(f"{iou_type:<7}" + "  ".join(_fmt(metrics[iou_type][k]) for k in METRIC_KEYS))
    per_class = metrics.get("per_class", {})
    if per_class:
        width = max(8, *(len(name) for name in per_class))
        lines += ["", f"{'category':<{width}}  bbox AP  segm AP"]
        for name, values in per_class.items():
            lines.append(f"{name:<{width}}    {_fmt(values['bbox_AP'])}    {_fmt(values['segm_AP'])}")
    lines.append(f"images: {metrics.get('num_images', 0)}")
    return "\n".join(lines)
