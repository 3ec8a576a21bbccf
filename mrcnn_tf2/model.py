"""MaskRCNN: the meta-architecture, its inference `call` and its custom `train_step`/`test_step`.

Shape shorthand: B = per-replica batch, S = image size, L = FPN levels, N_a = anchors, P = proposals,
R = sampled ROIs, G = max_instances, K = num_classes including background, D = max_detections,
M = mask size.

Batch contract (DESIGN.md section 3): a dict with
  images [B, S, S, 3] float32 (normalised as the backbone expects), image_info [B, 4, 2] float32,
  gt_boxes [B, G, 4] float32 yxyx pixels, gt_classes [B, G] int32 (-1 = padding),
  gt_masks [B, G, Sm, Sm] float32 (each instance cropped to its box).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from mrcnn_tf2 import losses as losses_lib
from mrcnn_tf2 import targets
from mrcnn_tf2.config.choices import LOSS_KEYS
from mrcnn_tf2.ops import anchors as anchors_lib
from mrcnn_tf2.ops import roi_align

ROI_MAX_LEVEL = 5  # the coarsest FPN level that ROIAlign pools from
# Inference pools ROIs in sequential chunks of at most this many gathered float32 values per image (128 MB):
# 1000 boxes at 7 x 7 x 256 would otherwise gather 200M values (800 MB) at once (ops/roi_align.py).
INFERENCE_ROI_GATHER_VALUES = 2**25
_SUBLAYERS = ("backbone", "fpn", "rpn_head", "proposals_train", "proposals_test", "roi_sampler",
              "box_head", "mask_head", "detection_generator")


def default_image_info(batch_size: tf.Tensor, image_size: int) -> tf.Tensor:
    """image_info for images that are already S x S (no resize, no offset): [B, 4, 2]."""
    s = float(image_size)
    info = tf.constant([[s, s], [s, s], [1.0, 1.0], [0.0, 0.0]], tf.float32)
    return tf.tile(info[None], [batch_size, 1, 1])


_SUMMED_LOCK = threading.Lock()
_SUMMED_DEPTH: dict[int, int] = {}  # id(optimizer) -> replicas inside _gradients_already_summed


@contextlib.contextmanager
def _gradients_already_summed(optimizer: keras.optimizers.Optimizer) -> Iterator[bool]:
    """While ``apply_gradients`` is traced, tells a Keras 3 optimizer not to sum the gradients over replicas.

    Keras 3 has no public switch for this (Keras 2 had ``experimental_aggregate_gradients=False``): its
    TensorFlow optimizer always all-reduces in ``_all_reduce_sum_gradients``. ``train_step`` has summed
    them already (global-norm clipping needs the sum), so that method is made the identity on this
    optimizer (and the inner one of a ``LossScaleOptimizer``) for the duration. Yields False, and changes
    nothing, when the optimizer has no such method; the caller then lets the optimizer sum again.
    MirroredStrategy traces ``train_step`` in one thread per replica: a count per optimizer keeps the
    identity in place until the last replica leaves.
    """
    owners = [o for o in (optimizer, getattr(optimizer, "inner_optimizer", None))
              if o is not None and hasattr(o, "_all_reduce_sum_gradients")]
    with _SUMMED_LOCK:
        for owner in owners:
            if _SUMMED_DEPTH.get(id(owner), 0) == 0:
                object.__setattr__(owner, "_all_reduce_sum_gradients", list)  # shadows the method
            _SUMMED_DEPTH[id(owner)] = _SUMMED_DEPTH.get(id(owner), 0) + 1
    try:
        yield bool(owners)
    finally:
        with _SUMMED_LOCK:
            for owner in owners:
                _SUMMED_DEPTH[id(owner)] -= 1
                if _SUMMED_DEPTH[id(owner)] == 0:
                    del _SUMMED_DEPTH[id(owner)]
                    object.__delattr__(owner, "_all_reduce_sum_gradients")


@keras.saving.register_keras_serializable(package="mrcnn_tf2")
class MaskRCNN(keras.Model):
    """Mask R-CNN with an FPN backbone. Build it with `mrcnn_tf2.build_model(cfg)`.

    ``model(images, image_info)`` runs inference and returns a dict of detections in model-input
    pixels (contiguous labels): detection_boxes [B, D, 4], detection_scores [B, D],
    detection_classes [B, D] int32, detection_masks [B, D, M, M] probabilities (box-relative),
    num_detections [B] int32. ``fit``/``train_step`` take the batch dict described above.

    Example::

        cfg = config.preset("shapes")
        model = build_model(cfg)
        outputs = model(images, image_info)
    """

    def __init__(self, backbone: keras.Model, fpn: keras.layers.Layer, rpn_head: keras.layers.Layer,
                 proposals_train: keras.layers.Layer, proposals_test: keras.layers.Layer,
                 roi_sampler: keras.layers.Layer, box_head: keras.layers.Layer, mask_head: keras.layers.Layer,
                 detection_generator: keras.layers.Layer, *, image_size: int, min_level: int, max_level: int,
                 anchor_sizes: Sequence[float], aspect_ratios: Sequence[float],
                 rpn_fg_iou_threshold: float = 0.7, rpn_bg_iou_threshold: float = 0.3,
                 rpn_anchors_per_image: int = 256, rpn_positive_fraction: float = 0.5,
                 box_pool_size: int = 7, mask_pool_size: int = 14, canonical_size: float = 224.0,
                 canonical_level: int = 4, loss_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0, 1.0),
                 clip_norm: float = 10.0, anchor_offset: float = 0.5, anchor_rounding: bool = False,
                 roi_align_aligned: bool = True, roi_sampling_ratio: int = 2, roi_level_eps: float = 1e-5,
                 sampling_seed: int = 0, **kwargs):
        # A float32 layer whatever the global policy: Keras casts every floating input of a layer to its
        # compute dtype, and image_info (sizes up to 1333, scales) must not be rounded to bfloat16. The
        # sub-layers keep the policy they were built with (the backbone casts the images itself).
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.backbone = backbone
        self.fpn = fpn
        self.rpn_head = rpn_head
        self.proposals_train = proposals_train
        self.proposals_test = proposals_test
        self.roi_sampler = roi_sampler
        self.box_head = box_head
        self.mask_head = mask_head
        self.detection_generator = detection_generator
        self.image_size = int(image_size)
        self.min_level = int(min_level)
        self.max_level = int(max_level)
        self.anchor_sizes = tuple(float(s) for s in anchor_sizes)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self.rpn_fg_iou_threshold = rpn_fg_iou_threshold
        self.rpn_bg_iou_threshold = rpn_bg_iou_threshold
        self.rpn_anchors_per_image = rpn_anchors_per_image
        self.rpn_positive_fraction = rpn_positive_fraction
        self.box_pool_size = box_pool_size
        self.mask_pool_size = mask_pool_size
        self.canonical_size = canonical_size
        self.canonical_level = canonical_level
        self.loss_weights = tuple(float(w) for w in loss_weights)
        if len(self.loss_weights) != len(LOSS_KEYS):
            raise ValueError(f"loss_weights needs {len(LOSS_KEYS)} values ({', '.join(LOSS_KEYS)})")
        self.clip_norm = clip_norm
        self.anchor_offset = float(anchor_offset)
        self.roi_align_aligned = bool(roi_align_aligned)
        self.roi_sampling_ratio = int(roi_sampling_ratio)
        self.roi_level_eps = float(roi_level_eps)
        self.anchor_rounding = bool(anchor_rounding)
        # Training runs on the static S x S canvas: its anchors are constants. Inference builds them from
        # the feature grids it actually gets (`_grid_anchors`), so any padded size works.
        self.sampling_seed = int(sampling_seed)
        anchors = anchors_lib.generate_anchors(self.image_size, self.min_level, self.max_level,
                                               self.anchor_sizes, self.aspect_ratios, self.anchor_offset,
                                               self.anchor_rounding)
        self._anchors_np = {level: np.asarray(a, np.float32) for level, a in anchors.items()}
        self.trackers = [keras.metrics.Mean(name=k) for k in ("loss",) + LOSS_KEYS + ("grad_norm",)]

    # === Inference ===

    def _anchors(self) -> dict[int, tf.Tensor]:
        """Anchors of the square S x S training canvas, {level: [N_l, 4]} constants."""
        return {level: tf.constant(a) for level, a in self._anchors_np.items()}

    def _grid_anchors(self, images: tf.Tensor, features: Mapping[int, tf.Tensor]) -> dict[int, tf.Tensor]:
        """Anchors for the feature grids of this batch (any padded H x W), {level: [H_l * W_l * A, 4]}."""
        sizes = [self.anchor_sizes[level - self.min_level] for level in sorted(features)]
        return anchors_lib.grid_anchors(tf.shape(images)[1:3], {lv: tf.shape(x)[1:3] for lv, x in features.items()},
                                        sizes, self.aspect_ratios, self.anchor_offset, self.anchor_rounding)

    @staticmethod
    def _clip_window(images: tf.Tensor, image_info: tf.Tensor) -> tf.Tensor:
        """image_info with row 1 (scaled h, w: the clip window) bounded by the padded input size."""
        image_info = tf.cast(image_info, tf.float32)
        padded_hw = tf.cast(tf.shape(images)[1:3], tf.float32)
        window = tf.minimum(image_info[:, 1, :], padded_hw[None, :])
        return tf.concat([image_info[:, :1], window[:, None, :], image_info[:, 2:]], axis=1)

    def _features(self, images: tf.Tensor, training: bool) -> dict[int, tf.Tensor]:
        return self.fpn(self.backbone(images, training=training), training=training)

    def _roi_align(self, features: Mapping[int, tf.Tensor], boxes: tf.Tensor, size: int,
                   max_gather_values: int | None = None) -> tf.Tensor:
        # ROIs are pooled from P2-P5 as in the FPN paper (detectron2, torchvision); P6 only feeds the RPN.
        pooled = {level: x for level, x in features.items() if level <= ROI_MAX_LEVEL}
        return roi_align.multilevel_roi_align(pooled, boxes, size, self.roi_sampling_ratio,
                                              canonical_size=self.canonical_size,
                                              canonical_level=self.canonical_level,
                                              aligned=self.roi_align_aligned, level_eps=self.roi_level_eps,
                                              max_gather_values=max_gather_values)

    def call(self, images: tf.Tensor, image_info: tf.Tensor | None = None, training: bool = False
             ) -> dict[str, tf.Tensor]:
        """Inference. images [B, H, W, 3] float32 normalised, any padded H x W (square S x S for the
        square resize mode); image_info [B, 4, 2] (default: the whole input is image, no resize).
        Proposals and detections are clipped to each image's scaled size (image_info row 1)."""
        if image_info is None:
            shape = tf.shape(images)
            hw = tf.cast(shape[1:3], tf.float32)
            info = tf.stack([hw, hw, tf.ones([2]), tf.zeros([2])])
            image_info = tf.tile(info[None], [shape[0], 1, 1])
        image_info = self._clip_window(images, image_info)
        features = self._features(images, training=False)
        rpn_logits, rpn_deltas = self.rpn_head(features, training=False)
        anchors = self._grid_anchors(images, features)
        rois, _, roi_valid = self.proposals_test(rpn_logits, rpn_deltas, anchors, image_info)
        class_logits, box_deltas = self.box_head(
            self._roi_align(features, rois, self.box_pool_size, INFERENCE_ROI_GATHER_VALUES))
        detections = self.detection_generator(class_logits, box_deltas, rois, roi_valid, image_info)
        mask_features = self._roi_align(features, detections["detection_boxes"], self.mask_pool_size,
                                        INFERENCE_ROI_GATHER_VALUES)
        mask_logits = self.mask_head(mask_features, detections["detection_classes"])
        valid = tf.range(tf.shape(mask_logits)[1])[None, :] < detections["num_detections"][:, None]
        detections["detection_masks"] = tf.where(valid[:, :, None, None], tf.sigmoid(mask_logits), 0.0)
        return detections

    # === Training ===

    def step_seed(self, step: tf.Tensor | int) -> tf.Tensor:
        """The [2] int64 seed of one training step's random draws on this replica.

        A pure function of (``sampling_seed`` = ``data.seed``, ``step``, the replica id in sync group), so
        a resumed run (which restores ``optimizer.iterations``) draws the anchors and ROIs of an
        uninterrupted run, and the replicas of one step draw independently.
        """
        ctx = tf.distribute.get_replica_context()
        replica = ctx.replica_id_in_sync_group if ctx is not None else 0
        seed = tf.constant([self.sampling_seed, 0], tf.int64)
        seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(step, tf.int64))
        return tf.random.experimental.stateless_fold_in(seed, tf.cast(replica, tf.int64))

    def compute_losses(self, data: Mapping[str, tf.Tensor], training: bool = True,
                       static_shapes: bool = False, seed: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
        """The forward pass with targets; returns {loss key: scalar float32} for this replica's batch.

        ``static_shapes`` keeps every intermediate shape static (needed under XLA); otherwise the mask
        branch runs on as many ROIs as the batch has foreground ROIs. ``seed`` ([2] int64, from
        :meth:`step_seed`) drives the anchor and ROI sampling, which are stateless; None = ``step_seed(0)``.
        """
        if seed is None:
            seed = self.step_seed(0)
        images, image_info = data["images"], data["image_info"]
        gt_boxes = tf.cast(data["gt_boxes"], tf.float32)
        gt_classes = tf.cast(data["gt_classes"], tf.int32)
        gt_masks = tf.cast(data["gt_masks"], tf.float32)
        features = self._features(images, training=training)
        rpn_logits, rpn_deltas = self.rpn_head(features, training=training)
        anchors = self._anchors()

        # Stage 1: RPN losses on a balanced anchor sample (targets computed here, not in the pipeline).
        # Anchors and head outputs concatenated in the same level order (tests/ops/test_anchors.py pins the
        # row-for-row correspondence through this function).
        rpn_target = targets.rpn_targets(
            anchors_lib.concat_levels(anchors), gt_boxes, gt_classes,
            fg_iou_threshold=self.rpn_fg_iou_threshold, bg_iou_threshold=self.rpn_bg_iou_threshold,
            num_samples=self.rpn_anchors_per_image, positive_fraction=self.rpn_positive_fraction,
            seed=tf.random.experimental.stateless_fold_in(seed, 1))
        losses = losses_lib.rpn_losses(
            anchors_lib.concat_levels(rpn_logits, axis=1),
            anchors_lib.concat_levels(rpn_deltas, axis=1), **rpn_target)

        # Proposals carry no gradient: the second stage treats them as fixed inputs.
        rois, _, roi_valid = self.proposals_train(
            {lv: tf.stop_gradient(x) for lv, x in rpn_logits.items()},
            {lv: tf.stop_gradient(x) for lv, x in rpn_deltas.items()}, anchors, image_info)
        rois, roi_valid = tf.stop_gradient(rois), tf.stop_gradient(roi_valid)

        # Stage 2: box head on sampled ROIs.
        sample = self.roi_sampler(rois, roi_valid, gt_boxes, gt_classes,
                                  seed=tf.random.experimental.stateless_fold_in(seed, 2))
        class_logits, box_deltas = self.box_head(self._roi_align(features, sample["rois"], self.box_pool_size),
                                                 training=training)
        losses.update(losses_lib.box_head_losses(class_logits, box_deltas, sample["classes"],
                                                 sample["box_targets"], sample["valid"]))

        # Mask head on the foreground ROIs only; the sampler puts them first, so a slice holds all. Under
        # XLA (jit_compile, TPUs) the slice has the static worst-case size; otherwise it is cut to the
        # largest foreground count in the batch, which saves most of the mask head's cost early in
        # training and on images with few objects.
        num_mask = max(1, int(self.roi_sampler.num_samples * self.roi_sampler.positive_fraction))
        if not static_shapes:
            most = tf.reduce_max(tf.reduce_sum(tf.cast(sample["positive"], tf.int32), axis=1))
            num_mask = tf.clip_by_value(most, 1, num_mask)
        mask_rois = sample["rois"][:, :num_mask]
        mask_positive = sample["positive"][:, :num_mask]
        mask_classes = tf.maximum(sample["classes"][:, :num_mask], 0)
        mask_logits = self.mask_head(self._roi_align(features, mask_rois, self.mask_pool_size), mask_classes,
                                     training=training)
        mask_target = targets.mask_targets(gt_masks, gt_boxes, mask_rois, sample["matched_gt"][:, :num_mask],
                                           mask_logits.shape[-1])
        losses.update(losses_lib.mask_loss(mask_logits, mask_target, mask_positive))
        return {k: losses[k] for k in LOSS_KEYS}

    def total_loss(self, losses: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """The one place where the loss terms are weighted and summed."""
        return tf.add_n([w * losses[k] for k, w in zip(LOSS_KEYS, self.loss_weights)])

    def _reduce_and_clip(self, grads: list[tf.Tensor], loss_scale: tf.Tensor) -> tuple[list, tf.Tensor]:
        """Sums the gradients over replicas (the step's only all-reduce) and clips their global norm.

        Clipping needs the *cross-replica* gradient (clipping each replica's part would clip another
        norm), so the sum happens here and ``train_step`` keeps the optimizer from summing again.
        ``loss_scale`` (mixed float16) scales the norm. Returns (clipped sum, unscaled norm).
        """
        ctx = tf.distribute.get_replica_context()
        replicas = ctx.num_replicas_in_sync if ctx is not None else 1
        if replicas > 1:
            grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        clip = self.clip_norm * loss_scale if self.clip_norm and self.clip_norm > 0 else None
        norm = tf.linalg.global_norm(grads)
        if clip is not None:
            grads, _ = tf.clip_by_global_norm(grads, clip, use_norm=norm)
        return grads, norm / loss_scale

    def _losses_and_gradients(self, data: Mapping[str, tf.Tensor], replicas: int, static_shapes: bool,
                              seed: tf.Tensor) -> tuple[tf.Tensor, dict[str, tf.Tensor], list[tf.Tensor | None]]:
        """This replica's forward pass, losses and (scaled) gradients; the part XLA compiles."""
        with tf.GradientTape() as tape:
            losses = self.compute_losses(data, training=True, static_shapes=static_shapes, seed=seed)
            total = self.total_loss(losses)
            # Keras 3 sums gradients over replicas: divide by their number to get the global mean.
            scaled = self.optimizer.scale_loss(total / replicas)
        return total, losses, tape.gradient(scaled, self.trainable_variables)

    def _compiled_losses_and_gradients(self):
        fn = self.__dict__.get("_xla_losses_and_gradients")
        if fn is None:
            fn = tf.function(self._losses_and_gradients, jit_compile=True, reduce_retracing=True)
            object.__setattr__(self, "_xla_losses_and_gradients", fn)
        return fn

    def train_step(self, data: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """One optimisation step on this replica's batch (run it through ``strategy.run``).

        With ``self.jit_compile`` (Keras' attribute, set by ``compile(jit_compile=True)`` or directly),
        the forward pass, the losses and the gradients (everything per replica: backbone, RPN, proposal
        NMS, ROI sampling, ROIAlign, heads, targets and losses) run as one XLA computation; the
        cross-replica reduction, clipping and optimizer update stay outside it, so the same step works
        under MirroredStrategy and MultiWorkerMirroredStrategy.

        Gradients cross replicas once per step: ``_reduce_and_clip`` sums them and the optimizer is told
        not to sum again (Keras 3 would otherwise all-reduce a second time inside ``apply_gradients``).

        The step's random draws (anchor and ROI sampling) are seeded by :meth:`step_seed` from
        ``optimizer.iterations`` (read before the update), which checkpoints restore.
        """
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        variables = self.trainable_variables
        seed = self.step_seed(self.optimizer.iterations)
        if self.jit_compile:
            total, losses, grads = self._compiled_losses_and_gradients()(data, replicas, True, seed)
        else:
            static = isinstance(tf.distribute.get_strategy(), tf.distribute.TPUStrategy)
            total, losses, grads = self._losses_and_gradients(data, replicas, static, seed)
        pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
        # 1.0, or the current dynamic loss scale of a LossScaleOptimizer (mixed float16).
        loss_scale = tf.cast(self.optimizer.scale_loss(tf.constant(1.0)), tf.float32)
        clipped, grad_norm = self._reduce_and_clip([g for g, _ in pairs], loss_scale)
        with _gradients_already_summed(self.optimizer) as summed:
            if not summed and replicas > 1:  # the optimizer will sum them again: hand it 1/n each
                clipped = [g / replicas for g in clipped]
            self.optimizer.apply_gradients(zip(clipped, [v for _, v in pairs]))
        return self._update_trackers(total, losses, grad_norm)

    def compile(self, *args: Any, jit_compile: bool | str = False, **kwargs: Any) -> None:
        """Keras' ``compile`` with ``jit_compile=False`` unless asked.

        Keras' default ``"auto"`` turns XLA on where a GPU is visible, which silently switches the mask
        branch to its static worst case (every possible foreground ROI); pass ``jit_compile=True`` (or
        ``"auto"``) to choose XLA on purpose.
        """
        super().compile(*args, jit_compile=jit_compile, **kwargs)

    def test_step(self, data: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        static = self.jit_compile or isinstance(tf.distribute.get_strategy(), tf.distribute.TPUStrategy)
        losses = self.compute_losses(data, training=False, static_shapes=static)
        return self._update_trackers(self.total_loss(losses), losses, None)

    def predict_step(self, data: Any) -> dict[str, tf.Tensor]:
        if isinstance(data, (tuple, list)):
            data = data[0]
        return self(data["images"], data.get("image_info"))

    def _update_trackers(self, total, losses, grad_norm) -> dict[str, tf.Tensor]:
        values = {"loss": total, **losses}
        if grad_norm is not None:
            values["grad_norm"] = grad_norm
        for tracker in self.trackers:
            if tracker.name in values:
                tracker.update_state(values[tracker.name])
        return {t.name: t.result() for t in self.trackers if t.name in values}

    @property
    def metrics(self) -> list:
        return list(self.trackers)

    # === Config ===

    def get_config(self) -> dict:
        config = {"name": self.name, "image_size": self.image_size, "min_level": self.min_level,
                  "max_level": self.max_level, "anchor_sizes": list(self.anchor_sizes),
                  "aspect_ratios": list(self.aspect_ratios),
                  "rpn_fg_iou_threshold": self.rpn_fg_iou_threshold,
                  "rpn_bg_iou_threshold": self.rpn_bg_iou_threshold,
                  "rpn_anchors_per_image": self.rpn_anchors_per_image,
                  "rpn_positive_fraction": self.rpn_positive_fraction,
                  "box_pool_size": self.box_pool_size, "mask_pool_size": self.mask_pool_size,
                  "canonical_size": self.canonical_size, "canonical_level": self.canonical_level,
                  "loss_weights": list(self.loss_weights), "clip_norm": self.clip_norm,
                  "anchor_offset": self.anchor_offset, "anchor_rounding": self.anchor_rounding,
                  "roi_align_aligned": self.roi_align_aligned, "roi_sampling_ratio": self.roi_sampling_ratio,
                  "roi_level_eps": self.roi_level_eps, "sampling_seed": self.sampling_seed}
        for name in _SUBLAYERS:
            config[name] = keras.saving.serialize_keras_object(getattr(self, name))
        return config

    @classmethod
    def from_config(cls, config: dict) -> MaskRCNN:
        config = dict(config)
        layers = {name: keras.saving.deserialize_keras_object(config.pop(name)) for name in _SUBLAYERS}
        return cls(**layers, **config)
