"""Pure TensorFlow functions (no Keras state): boxes, anchors, matching, sampling, NMS, ROIAlign, masks."""
