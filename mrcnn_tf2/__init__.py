"""mrcnn-tf2: Mask R-CNN for TensorFlow 2 / Keras 3.

``from mrcnn_tf2 import config, build_model, Detector``. ``config`` imports no TensorFlow; ``build_model``
and ``Detector`` are imported lazily so that reading a config stays cheap. The command line, the input
pipelines and the export are the subpackages ``mrcnn_tf2.cli``, ``mrcnn_tf2.pipelines`` and ``mrcnn_tf2.export``
(the folders ``cli/``, ``pipelines/`` and ``export/`` of the repository).
"""

import os

# In a source checkout the subpackages cli, pipelines and export are the folders beside this one (setup.py
# installs them as mrcnn_tf2/cli, ...): let the import system look for them there too. An installed
# mrcnn_tf2 has no setup.py beside it, so nothing changes there.
_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isfile(os.path.join(_CHECKOUT, "setup.py")) and os.path.isdir(os.path.join(_CHECKOUT, "cli")):
    __path__.append(_CHECKOUT)  # noqa: F821 - a package's __path__

from mrcnn_tf2 import config  # noqa: E402

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
