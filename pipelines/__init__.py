"""Input: COCO-format reading, TFRecords, the shapes dataset, on-graph augmentation and batching.

Modules (host side first, then graph side):

- ``dataset_info``: which files a mode reads, the category mapping, TFRecord ``dataset_info.json`` (JSON only).
- ``coco``: COCO JSON -> validated records, host-side masks, the ground truth for evaluation.
- ``coco_fields``: field-level rules of the JSON: what is refused (errors name the file and the field)
  and what is skipped and counted.
- ``image_header``, ``image_check``: image sizes from file headers; every image file checked once (cached).
- ``dataset_check``: ``load_checked(cfg, mode)``, the checks before training and evaluation (no TensorFlow).
- ``shapes``: the synthetic shapes dataset, written in COCO format, generated on first use.
- ``example``: the encoded example shared by both input paths (image bytes + one stacked mask PNG)
  and its on-graph decoding.
- ``tfrecord``: sharded TFRecord writer (``python -m mrcnn_tf2.pipelines.tfrecord``) and ``dataset_info.json``.
- ``augment``, ``mask_to_box``, ``preprocess``: pure TF ops (``preprocess`` is shared with eval/export).
- ``input_pipeline``: ``build_dataset(cfg, mode, input_context)``, the batch contract of DESIGN.md.
"""
