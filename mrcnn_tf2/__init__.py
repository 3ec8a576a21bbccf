"""mrcnn-tf2: Mask R-CNN for TensorFlow 2 / Keras 3.

``from mrcnn_tf2 import config, build_model``. ``config`` imports no TensorFlow; ``build_model``
is imported lazily so that reading a config stays cheap.
"""

from mrcnn_tf2 import config

__all__ = ["config", "build_model"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "build_model":
        from mrcnn_tf2.builder import build_model

        return build_model
    raise AttributeError(f"module 'mrcnn_tf2' has no attribute '{name}'")
