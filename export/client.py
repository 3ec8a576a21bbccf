"""TF Serving REST client helpers: request bodies with base64 images, responses as NumPy arrays.

Plain ``json``/``base64``/NumPy (no TensorFlow): what a client of ``tensorflow_model_server
--rest_api_port=8501`` needs around ``POST /v1/models/<name>:predict``.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["OUTPUT_DTYPES", "rest_request_body", "predictions_to_arrays"]

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
