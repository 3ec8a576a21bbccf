"""``--mode=eval``: COCO box and mask AP on the validation set, metrics.json and the results file.

Also the evaluation hook of training (``evaluate_model``), which returns the metrics and a few
validation images with the predicted masks drawn, for TensorBoard.

Files (DESIGN.md section 4): ``<model_dir>/eval/metrics.json`` (``checkpoint`` = the weights evaluated),
the results file (``--results_file``, default ``submission.json``; a relative path is inside
``--model_dir``, an absolute one is used as is) in the COCO results format with RLE masks, and
TensorBoard scalars/images in ``<model_dir>/eval`` at the checkpoint's step.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from mrcnn_tf2.cli.common import Prepared
from mrcnn_tf2.cli.weights import load_weights
from mrcnn_tf2.pipelines.coco import dataset_paths, ground_truth
from mrcnn_tf2.pipelines.dataset_check import load_checked
from mrcnn_tf2.pipelines.input_pipeline import build_dataset
from mrcnn_tf2.pipelines.preprocess import denormalize_image

from mrcnn_tf2 import config as config_lib
from mrcnn_tf2 import evaluation, training, visualize
from mrcnn_tf2.builder import build_model
from mrcnn_tf2.mask_paste import paste_masks

__all__ = ["EvalRun", "inference_function", "draw_model_input", "evaluate_model", "metric_scalars", "run"]


@dataclass
class EvalRun:
    """The outcome of one evaluation pass."""

    metrics: dict[str, Any]
    evaluator: evaluation.CocoEvaluator
    images: np.ndarray | None  # [N, S, S, 3] uint8 RGB validation images with detections drawn


def inference_function(model: keras.Model) -> Any:
    """``model(images, image_info)`` as a ``tf.function``, traced once per batch size.

    Takes ``images [B, S, S, 3]`` float32 (normalized) and ``image_info [B, 4, 2]`` float32; returns the
    model's detection dict (model-input pixels, labels 1..K). The batch size must be static (the
    proposal layer sizes its top-k from the static anchor count), so callers pad partial batches.
    """

    @tf.function(reduce_retracing=True)  # short_side mode: every image size differs; trace them as one
    def infer(images, image_info):
        return model(images, image_info, training=False)

    return infer


def draw_model_input(image: np.ndarray, outputs: dict[str, np.ndarray], index: int, cfg: config_lib.Config,
                     score_threshold: float = 0.5) -> np.ndarray:
    """Draws the detections of batch row ``index`` on its (denormalized, padded) model input.

    Args:
        image: [S, S, 3] float32 model input, normalized per ``cfg.model.pixel_normalization``.
        outputs: the model's outputs as NumPy arrays (boxes in model-input pixels).
        index: the batch row.
        cfg: for the pixel normalization and the class names.
        score_threshold: detections below it are not drawn.

    Returns:
        [S, S, 3] uint8 RGB.
    """
    canvas = np.asarray(denormalize_image(image, cfg.model.pixel_normalization))
    canvas = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
    n = int(outputs["num_detections"][index])
    boxes = outputs["detection_boxes"][index, :n]
    masks = paste_masks(outputs["detection_masks"][index, :n], boxes, canvas.shape[0], canvas.shape[1],
                        mode=cfg.model.detection.paste_mode)
    return visualize.draw_detections(canvas, boxes, outputs["detection_classes"][index, :n],
                                     outputs["detection_scores"][index, :n], masks >= 0.5,
                                     cfg.data.category_names, score_threshold)


def _pad_batch(batch: dict[str, tf.Tensor], batch_size: int) -> tuple[tf.Tensor, tf.Tensor, np.ndarray]:
    """Pads a partial last batch to ``batch_size`` by repeating its first row, with image id -1 (skipped)."""
    image_ids = batch["image_id"].numpy()
    pad = batch_size - len(image_ids)
    if pad <= 0:
        return batch["images"], batch["image_info"], image_ids
    repeat = lambda x: tf.concat([x, tf.repeat(x[:1], pad, axis=0)], axis=0)  # noqa: E731
    return repeat(batch["images"]), repeat(batch["image_info"]), np.concatenate([image_ids, -np.ones(pad, np.int64)])


def evaluate_model(model: keras.Model, cfg: config_lib.Config, num_visualizations: int = 0,
                   verbose: bool = True) -> EvalRun:
    """Runs the model over the validation set and computes COCO box and mask AP.

    Args:
        model: a built MaskRCNN of ``cfg`` holding the weights to evaluate.
        cfg: its config (``data.val_*`` or the shapes dataset, ``eval.batch_size``, the category mapping).
        num_visualizations: how many validation images to return with their detections drawn.
        verbose: show a progress bar.

    Returns:
        An ``EvalRun``; ``metrics`` follows the metrics.json schema with ``checkpoint`` empty.
    """
    dataset = load_checked(cfg, "eval")  # the records build_dataset reads: same images, same instances
    evaluator = evaluation.CocoEvaluator(ground_truth(dataset), cfg.data.category_ids, cfg.data.category_names,
                                         paste_mode=cfg.model.detection.paste_mode)
    num_batches = math.ceil(len(dataset.images) / cfg.eval.batch_size)
    progbar = keras.utils.Progbar(num_batches, verbose=1 if verbose else 0, unit_name="batch")
    infer = inference_function(model)
    pictures: list[np.ndarray] = []
    for i, batch in enumerate(build_dataset(cfg, "eval")):
        images, image_info, image_ids = _pad_batch(batch, cfg.eval.batch_size)
        outputs = {k: v.numpy() for k, v in infer(images, image_info).items()}
        evaluator.update(outputs, image_info.numpy(), image_ids)
        for row in range(min(num_visualizations - len(pictures), len(batch["image_id"]))):
            pictures.append(draw_model_input(batch["images"][row].numpy(), outputs, row, cfg))
        progbar.update(min(i + 1, num_batches))
    metrics = evaluator.evaluate()
    return EvalRun(metrics, evaluator, np.stack(pictures) if pictures else None)


def metric_scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """TensorBoard scalars of a metrics dict: ``bbox/AP``, ``bbox/AP50``, ..., ``segm/APl``."""
    return {f"{t}/{k}": float(metrics[t][k]) for t in ("bbox", "segm") for k in evaluation.METRIC_KEYS}


def _step_of(path: str) -> int:
    match = re.search(r"ckpt-(\d+)$", path)
    return int(match.group(1)) if match else 0


def run(prep: Prepared) -> dict[str, Any]:
    """``--mode=eval``: restores the weights, evaluates, writes metrics.json and the results file.

    Returns:
        The metrics dict (as written to metrics.json) plus ``results_file`` and ``metrics_file`` paths.
    """
    cfg, args, paths = prep.cfg, prep.args, prep.paths
    model = build_model(cfg)
    loaded = load_weights(model, prep.weights, cfg)
    if args.verbose:
        print(f"Evaluating {prep.weights.path} on {dataset_paths(cfg, 'eval').annotations} ({loaded})", flush=True)
    result = evaluate_model(model, cfg, cfg.eval.num_visualizations, verbose=args.verbose)
    metrics = dict(result.metrics, checkpoint=prep.weights.path)
    os.makedirs(paths.eval_dir, exist_ok=True)
    with open(paths.metrics, "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2)
    results_file = result.evaluator.write_results(paths.results(args.results_file))
    logger = training.TensorBoardLogger(paths.model_dir)
    step = _step_of(prep.weights.path)
    logger.scalars("eval", metric_scalars(metrics), step)
    if result.images is not None:
        logger.images("eval", "detections", result.images, step)
    logger.close()
    if args.verbose:
        print(evaluation.format_metrics(metrics))
        print(f"metrics: {paths.metrics}\nresults ({len(result.evaluator.results)} detections): {results_file}")
    return {**metrics, "results_file": results_file, "metrics_file": paths.metrics}
