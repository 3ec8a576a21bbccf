"""mrcnn-tf2: Mask R-CNN for TensorFlow 2 / Keras 3.

``from mrcnn_tf2 import config, build_model, Detector``. ``config`` imports no TensorFlow; ``build_model``
and ``Detector`` are imported lazily so that reading a config stays cheap.
"""

from mrcnn_tf2 import config

__all__ = ["config", "build_model", "Detector", "Detection"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "build_model":
        from mrcnn_tf2.builder import build_model

        return build_model
    if name in ("Detector", "Detection"):
        from mrcnn_tf2 import detector

        return getattr(detector, name)
    raise AttributeError(f"module 'mrcnn_tf2' has no attribute '{name}'")
