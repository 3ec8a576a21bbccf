"""TF Serving REST client helpers: request bodies with base64 images, responses as NumPy arrays.

Plain ``json``/``base64``/NumPy/OpenCV (no TensorFlow): what a client of ``tensorflow_model_server
--rest_api_port=8501`` needs around ``POST /v1/models/<name>:predict``. ``RestServe`` plugs a server
into ``mrcnn_tf2.Detector`` (which does import TensorFlow), so a client gets the same full-image results
as ``Detector.from_saved_model`` and ``--mode=predict``::

    ids, names = read_categories("exported/maskrcnn/1/assets.extra/categories.json")
    detector = Detector(RestServe("http://localhost:8501/v1/models/maskrcnn:predict"), ids, names, batch_size=8)
    result = detector.detect("photo.jpg")
"""

from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np

__all__ = ["OUTPUT_DTYPES", "rest_request_body", "predictions_to_arrays", "read_categories", "RestServe"]

# The SavedModel's outputs (DESIGN.md section 4) and their dtypes.
OUTPUT_DTYPES = {"num_detections": np.int32, "detection_boxes": np.float32, "detection_classes": np.int32,
                 "detection_scores": np.float32, "detection_masks": np.float32}


def rest_request_body(encoded_images: Sequence[bytes], signature_name: str = "serving_default"
                      ) -> dict[str, Any]:
    """The JSON body of a row-format predict request for the ``serving_default`` signature.

    Args:
        encoded_images: file contents (JPEG/PNG/BMP) of each image of the batch.
        signature_name: the signature to call.

    Returns:
        ``{"signature_name": ..., "instances": [{"b64": "<base64>"}, ...]}`` (``json.dumps`` it).
    """
    instances = [{"b64": base64.b64encode(bytes(data)).decode("ascii")} for data in encoded_images]
    return {"signature_name": signature_name, "instances": instances}


def predictions_to_arrays(response: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Stacks a row-format response ``{"predictions": [{output: value}, ...]}`` into batch arrays.

    Returns:
        ``{output name: array [B, ...]}`` with the dtypes of ``OUTPUT_DTYPES`` (B may be 0).
    """
    rows = response["predictions"]
    return {key: np.asarray([row[key] for row in rows], dtype) for key, dtype in OUTPUT_DTYPES.items()}


def read_categories(path: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """(category ids, names) of the model's labels 1..K from an export's ``assets.extra/categories.json``."""
    with open(path, encoding="utf-8") as f:
        categories = sorted(json.load(f)["categories"], key=lambda c: c["label"])
    return tuple(int(c["category_id"]) for c in categories), tuple(str(c["name"]) for c in categories)


class RestServe:
    """A ``mrcnn_tf2.Detector`` serve function backed by TF Serving's REST API (``serving_default``).

    Each call sends its images as lossless PNG in one row-format request, so the server decodes exactly
    the pixels given; sizes may differ within a request.

    Args:
        url: the predict endpoint, e.g. ``http://localhost:8501/v1/models/maskrcnn:predict``.
        timeout: seconds to wait for an answer.
    """

    def __init__(self, url: str, timeout: float = 60.0):
        self.url = url
        self.timeout = float(timeout)

    def __call__(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """uint8 ``[h, w, 3]`` RGB images -> the SavedModel's outputs (``OUTPUT_DTYPES``), one row each."""
        encoded = []
        for image in images:
            ok, png = cv2.imencode(".png", cv2.cvtColor(np.asarray(image, np.uint8), cv2.COLOR_RGB2BGR))
            if not ok:
                raise ValueError(f"could not PNG-encode an image of shape {np.shape(image)}")
            encoded.append(png.tobytes())
        request = urllib.request.Request(self.url, data=json.dumps(rest_request_body(encoded)).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=self.timeout) as answer:
            return predictions_to_arrays(json.load(answer))
