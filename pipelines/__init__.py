"""Input: COCO-format reading, TFRecords, the shapes dataset, on-graph augmentation and batching."""
