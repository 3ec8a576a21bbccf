"""mrcnn-tf2: Mask R-CNN for TensorFlow 2 / Keras 3.

``from mrcnn_tf2 import config, build_model, Detector``. ``config`` imports no TensorFlow; ``build_model``
and ``Detector`` are imported lazily so that reading a config stays cheap.
"""

from mrcnn_tf2 import config

__all__ = ["config", "build_model", "Detector", "Detection"]
__version__ = "0.1.0"

# The distributions that install the ``tensorflow`` import package; an install must hold exactly one.
TENSORFLOW_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-intel", "tensorflow-macos",
                            "tensorflow-aarch64", "tensorflow-gpu", "tensorflow-rocm", "intel-tensorflow",
                            "tf-nightly", "tf-nightly-cpu")
INSTALL_TENSORFLOW = ("pip install 'mrcnn-tf2[cpu]' (CPU only) or pip install 'mrcnn-tf2[gpu]' (NVIDIA GPUs on "
                      "Linux: tensorflow[and-cuda]); in a source checkout pip install -e '.[cpu]' or -e '.[gpu]'")
TENSORFLOW_MISSING = ("TensorFlow is not installed; mrcnn-tf2 lets you choose the build. Install one extra: "
                      f"{INSTALL_TENSORFLOW}.")


def __getattr__(name: str):
    try:
        if name == "build_model":
            from mrcnn_tf2.builder import build_model

            return build_model
        if name in ("Detector", "Detection"):
            from mrcnn_tf2 import detector

            return getattr(detector, name)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] == "tensorflow":
            raise ModuleNotFoundError(TENSORFLOW_MISSING, name="tensorflow") from e
        raise
    raise AttributeError(f"module 'mrcnn_tf2' has no attribute '{name}'")
