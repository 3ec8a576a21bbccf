"""Keras layers of the Mask R-CNN architecture; constructors take plain values, never a config."""
