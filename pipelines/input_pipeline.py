"""``build_dataset(cfg, mode, input_context)``: parallel, prefetched, shardable batches for the model.

The batch contract (DESIGN.md sections 3-5), per replica, B = per-replica batch size, S =
``model.image_size``, G = ``data.max_instances``, M = ``data.gt_mask_size``::

    images      [B, S, S, 3]  float32  normalized per model.pixel_normalization, padding 0
    image_info  [B, 4, 2]     float32  [[orig_h, orig_w], [scaled_h, scaled_w], [y_scale, x_scale],
                                        [y_offset, x_offset]]  (pipelines/preprocess.py)
    image_id    [B]           int64    the dataset's image id
    gt_boxes    [B, G, 4]     float32  yxyx model-input pixels, tight boxes of the augmented masks; pad 0
    gt_classes  [B, G]        int32    contiguous labels 1..K, -1 = padding (crowd regions never appear)
    gt_masks    [B, G, M, M]  float32  [0, 1], each mask cropped to its own box (bilinear, aligned); pad 0

Flow: source of encoded examples (``pipelines/example.py``) -> [train: shuffle, repeat] -> decode ->
[train: augment] -> ground truth from masks -> batch -> prefetch. Two sources:

- COCO JSON (small datasets; the default shapes demo), read by ``mrcnn_tf2.pipelines.dataset_check.load_checked``:
  masks are rendered on the host by ``from_generator`` sources, sharded by image; in train mode the
  decoded images and masks are cached in memory when they fit in ``data.cache_max_mb``, so after the
  first epoch only augmentation runs. Without the cache, image *indices* are shuffled, repeated and
  skipped, and only then rendered (one generator per example, order kept), so a resume at a late step
  renders only what it uses; the permutation is the same as shuffling the examples themselves.
- TFRecords (``data.train_tfrecords``): files sharded by ``input_context``, parallel interleave.

Train mode: seeded shuffle, repeat, augmentation (``data.augment``; deterministic: each example's seed
derives from ``data.seed``, the input pipeline id and the example's position), ``drop_remainder`` so every
shape is static. Eval mode: no augmentation, no shuffle, one pass in dataset order, partial last batch
kept. No ``py_function`` anywhere; works with ``strategy.distribute_datasets_from_function``.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging
from mrcnn_tf2.pipelines import augment as augment_lib
from mrcnn_tf2.pipelines.coco import DatasetError, dataset_paths
from mrcnn_tf2.pipelines.dataset_check import load_checked
from mrcnn_tf2.pipelines.example import FEATURE_SPEC, decode_example, encode_record, parse_example
from mrcnn_tf2.pipelines.mask_to_box import mask_to_box, pack_instances
from mrcnn_tf2.pipelines.preprocess import SideResize, build_image_info, preprocess_image, resize_and_pad, side_resize
from mrcnn_tf2.pipelines.tfrecord import INFO_FILE, list_tfrecord_files, read_dataset_info

__all__ = ["MODES", "make_example", "build_dataset"]

MODES = ("train", "eval")
_AUTOTUNE = tf.data.AUTOTUNE


def make_example(decoded: Mapping[str, tf.Tensor], *, image_size: int, pixel_normalization: str,
                 max_instances: int, mask_size: int, aug: Any = None, seed: tf.Tensor | None = None,
                 resize: SideResize | None = None) -> dict[str, tf.Tensor]:
    """One model example from a decoded image and its masks (pure TF, for ``Dataset.map``).

    Args:
        decoded: ``image [H, W, 3]`` uint8, ``masks [N, H, W]`` uint8 {0, 1}, ``classes [N]`` int32,
            ``image_id`` int64 scalar (see ``mrcnn_tf2.pipelines.example.decode_example``).
        image_size: S.
        pixel_normalization: ``caffe`` or ``none``.
        max_instances: G.
        mask_size: M.
        aug: an ``AugmentConfig``, or ``None`` for none (then the image path is exactly
            ``preprocess.preprocess_image``).
        seed: ``[2]`` int, this example's augmentation seed (required with ``aug``).
        resize: without ``aug`` only: torchvision's resize by side (``model.resize_mode="short_side"``); the
            image is then ``[H, W, 3]`` with each side padded on its own (batch with ``padded_batch``).

    Returns:
        The unbatched batch-contract dict (module docstring) without the leading B.
    """
    image, masks, classes = decoded["image"], decoded["masks"], decoded["classes"]
    original_hw = tf.shape(image)[:2]
    if aug is None:
        images, image_info = preprocess_image(image, image_size, pixel_normalization, resize=resize)
        scale_yx = image_info[2]
    else:
        if seed is None:
            raise ValueError("make_example needs a seed when augmenting")
        image, masks = augment_lib.random_flip_rotate(image, masks, aug, seed)
        if aug.crop_prob > 0 or aug.scale_max > 1:
            boxes = mask_to_box(masks)
        else:
            boxes = tf.zeros([tf.shape(masks)[0], 4])
        window_yx, window_hw, scaled_hw = augment_lib.plan_window(boxes, original_hw, image_size, aug, seed)
        image = tf.slice(image, tf.concat([window_yx, [0]], 0), tf.concat([window_hw, [3]], 0))
        masks = tf.slice(masks, tf.concat([[0], window_yx], 0), tf.concat([[-1], window_hw], 0))
        image = augment_lib.color_augment(image, aug, seed)
        images = resize_and_pad(image, scaled_hw, image_size, pixel_normalization)
        scale_yx = tf.cast(scaled_hw, tf.float32) / tf.cast(window_hw, tf.float32)
        image_info = build_image_info(original_hw, scaled_hw, scale_yx,
                                      tf.cast(window_yx, tf.float32) * scale_yx)
    gt = pack_instances(masks, classes, scale_yx, max_instances, mask_size)
    return {"images": images, "image_info": image_info, "image_id": tf.cast(decoded["image_id"], tf.int64),
            "gt_boxes": gt["gt_boxes"], "gt_classes": gt["gt_classes"], "gt_masks": gt["gt_masks"]}


def _log_overflow(source: str, histogram: Mapping[int, int], max_instances: int) -> int:
    over = sum(v for k, v in histogram.items() if k > max_instances)
    if over:
        logging.warning("%s: %d of %d images have more than data.max_instances=%d instances; the %d "
                        "largest (by mask area) are kept", source, over, sum(histogram.values()),
                        max_instances, max_instances)
    return over


def _json_source(cfg: Any, mode: str, pipeline: tuple[int, int]) -> tuple[Any, int, bool]:
    """This pipeline's share of a checked COCO JSON: ``(records, num images, cache decoded?)``."""
    dataset = load_checked(cfg, mode)
    histogram = collections.Counter(len(r.instances) for r in dataset.images)
    _log_overflow(dataset.annotation_file, histogram, cfg.data.max_instances)
    pipeline_id, num_pipelines = pipeline
    records = dataset.images[pipeline_id::num_pipelines]
    if not records:
        raise DatasetError(f"{dataset.annotation_file}: no images for input pipeline {pipeline_id} of "
                           f"{num_pipelines} ({len(dataset.images)} images in all)")
    decoded_bytes = sum(r.height * r.width * (3 + len(r.instances)) for r in records)
    cache = mode == "train" and decoded_bytes <= cfg.data.cache_max_mb * 2**20
    return records, len(records), cache


def _encoded_in_order(records: Sequence[Any]) -> tf.data.Dataset:
    """Encoded examples of ``records`` in order, rendered on the host by one generator."""

    def generate() -> Iterator[dict]:
        for record in records:
            yield encode_record(record)

    return tf.data.Dataset.from_generator(generate, output_signature=FEATURE_SPEC)


def _encode_at(records: Sequence[Any], parallel: int | None) -> Any:
    """``(position, index) -> (position, encoded example of records[index])`` as a Dataset interleave.

    Only the examples that reach it are read and rendered, so indices can be shuffled and skipped first.
    Each index becomes a one-element generator source; the interleave keeps the input order.
    """

    def generate(index: np.ndarray) -> Iterator[dict]:
        yield encode_record(records[int(index)])

    def one(position: tf.Tensor, index: tf.Tensor) -> tf.data.Dataset:
        example = tf.data.Dataset.from_generator(generate, args=(index,), output_signature=FEATURE_SPEC)
        return example.map(lambda x: (position, x))

    cycle = 1 if parallel is None else 4
    return lambda ds: ds.interleave(one, cycle_length=cycle, block_length=1, num_parallel_calls=parallel or None,
                                    deterministic=True)


def _tfrecord_source(cfg: Any, pattern: str, training: bool, pipeline: tuple[int, int]
                     ) -> tuple[tf.data.Dataset, int]:
    """Parsed examples of this pipeline's share of the TFRecord files; also the number of images."""
    files = list_tfrecord_files(pattern)
    info = read_dataset_info(pattern)
    wanted = tuple(cfg.data.category_ids)
    if wanted and tuple(info["category_ids"]) != wanted:
        raise DatasetError(f"{pattern}: category_ids {info['category_ids']} in {INFO_FILE} differ "
                           f"from data.category_ids {list(wanted)}")
    histogram = {int(k): v for k, v in info.get("instances_per_image", {}).items()}
    _log_overflow(pattern, histogram, cfg.data.max_instances)
    pipeline_id, num_pipelines = pipeline
    ds = tf.data.Dataset.from_tensor_slices(files)
    shard_files = len(files) >= num_pipelines
    if shard_files:
        ds = ds.shard(num_pipelines, pipeline_id)
    else:
        logging.warning("%s: %d files for %d input pipelines; sharding by record (write more shards)",
                        pattern, len(files), num_pipelines)
    if training and cfg.data.shuffle_buffer > 1:
        ds = ds.shuffle(len(files), seed=cfg.data.seed, reshuffle_each_iteration=True)
    ds = ds.interleave(lambda f: tf.data.TFRecordDataset(f, buffer_size=8 << 20),
                       cycle_length=min(len(files), 8), block_length=1, num_parallel_calls=_AUTOTUNE,
                       deterministic=True)
    if not shard_files:
        ds = ds.shard(num_pipelines, pipeline_id)
    ds = ds.map(parse_example, num_parallel_calls=_AUTOTUNE)
    if training and cfg.data.skip_empty:
        ds = ds.filter(lambda x: tf.size(x["object/label"]) > 0)
    num_images = int(info["num_images"]) // num_pipelines
    return ds, num_images


def build_dataset(cfg: Any, mode: str, input_context: tf.distribute.InputContext | None = None,
                  skip_batches: int = 0) -> tf.data.Dataset:
    """The input pipeline for ``mode``.

    Args:
        cfg: a ``mrcnn_tf2.config.Config``. ``train.batch_size`` / ``eval.batch_size`` are global.
        mode: ``train`` (shuffled, repeated, augmented, static shapes) or ``eval`` (one ordered pass,
            no augmentation, partial last batch kept).
        input_context: from ``strategy.distribute_datasets_from_function``; shards the data by input
            pipeline and sets the per-replica batch size.
        skip_batches: train mode: start after this many of this pipeline's batches (resuming). The
            skipped examples are never decoded or augmented, unlike ``dataset.skip(n)``, and the
            stream that follows is exactly the one an uninterrupted run would see.

    Returns:
        A ``tf.data.Dataset`` of batch-contract dicts (module docstring).

    Raises:
        ValueError: unknown mode or bad augmentation settings; ``DatasetError`` for bad data.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    training = mode == "train"
    global_batch = cfg.train.batch_size if training else cfg.eval.batch_size
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(global_batch)
        pipeline = (input_context.input_pipeline_id, input_context.num_input_pipelines)
    else:
        batch_size, pipeline = global_batch, (0, 1)
    aug = cfg.data.augment if training and cfg.data.augment.enabled else None
    if aug is not None:
        augment_lib.check_augment_config(aug)
    parallel = _AUTOTUNE if cfg.data.num_parallel_calls < 0 else (cfg.data.num_parallel_calls or None)

    paths = dataset_paths(cfg, mode)
    lazy = None
    if training and paths.tfrecords:
        ds, num_images = _tfrecord_source(cfg, paths.tfrecords, training, pipeline)
        cached = False
    else:
        records, num_images, cached = _json_source(cfg, mode, pipeline)
        if cached or not training:
            ds = _encoded_in_order(records)
        else:  # shuffle and skip indices; render only the examples that are used
            ds = tf.data.Dataset.range(num_images)
            lazy = _encode_at(records, parallel)
    if cached:
        ds = ds.map(decode_example, num_parallel_calls=parallel).cache()

    example_args = dict(image_size=cfg.model.image_size, pixel_normalization=cfg.model.pixel_normalization,
                   max_instances=cfg.data.max_instances, mask_size=cfg.data.gt_mask_size)
    if training:
        if cfg.data.shuffle_buffer > 1:
            ds = ds.shuffle(min(cfg.data.shuffle_buffer, max(num_images, 2)), seed=cfg.data.seed,
                            reshuffle_each_iteration=True)
        ds = ds.repeat().enumerate()
        if skip_batches:
            ds = ds.skip(int(skip_batches) * batch_size)
        if lazy is not None:
            ds = lazy(ds)
        base_seed = tf.constant([cfg.data.seed, pipeline[0]], tf.int64)

        def train_map(index: tf.Tensor, example: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
            decoded = example if cached else decode_example(example)
            seed = tf.random.experimental.stateless_fold_in(base_seed, index)
            return make_example(decoded, aug=aug, seed=seed, **example_args)

        ds = ds.map(train_map, num_parallel_calls=parallel)
        ds = ds.batch(batch_size, drop_remainder=True)
    else:
        resize = side_resize(cfg.model)
        ds = ds.map(lambda x: make_example(decode_example(x), resize=resize, **example_args),
                    num_parallel_calls=parallel)
        # Non-square inputs (short_side mode) are zero-padded at the bottom/right to the batch's largest.
        ds = ds.padded_batch(batch_size) if resize is not None else ds.batch(batch_size, drop_remainder=False)
    options = tf.data.Options()
    # Parallelism comes from the parallel map; one thread per op avoids oversubscribing the cores
    # that the training step also uses.
    options.threading.max_intra_op_parallelism = 1
    options.deterministic = True
    return ds.prefetch(_AUTOTUNE).with_options(options)
