"""Input: COCO-format reading, TFRecords, the shapes dataset, on-graph augmentation and batching.

Modules (host side first, then graph side):

- ``coco``: COCO JSON -> validated records, category mapping, host-side masks, ``dataset_paths``.
- ``coco_fields``: field-level checks of the JSON (errors name the file and the field).
- ``shapes``: the synthetic shapes dataset, written in COCO format, generated on first use.
- ``example``: the encoded example shared by both input paths (image bytes + one stacked mask PNG)
  and its on-graph decoding.
- ``tfrecord``: sharded TFRecord writer (``python -m pipelines.tfrecord``) and ``dataset_info.json``.
- ``augment``, ``mask_to_box``, ``preprocess``: pure TF ops (``preprocess`` is shared with eval/export).
- ``input_pipeline``: ``build_dataset(cfg, mode, input_context)``, the batch contract of DESIGN.md.
"""
