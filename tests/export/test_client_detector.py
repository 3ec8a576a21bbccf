"""mrcnn_tf2.export.client.RestServe behind mrcnn_tf2.Detector, against a local fake of TF Serving's REST API.

The fake server checks what a real one would receive (row format, base64 PNGs that decode to the exact
pixels sent) and answers with fixed detections, so the test needs no model and checks the client side:
request encoding, response parsing, category mapping and mask pasting in the original frame.
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import cv2
import numpy as np
import pytest
from mrcnn_tf2.export.client import RestServe, read_categories

from mrcnn_tf2 import Detector

D, M = 3, 4
CATEGORY_IDS, NAMES = (5, 9), ("cat", "dog")


def _answer(image: np.ndarray) -> dict:
    """Two detections per image: a box in the top-left quarter (id 9) and one on the right half (id 5)."""
    h, w = image.shape[:2]
    boxes = np.zeros([D, 4])
    boxes[0] = [0, 0, h / 2, w / 2]
    boxes[1] = [1.0, w / 2, h - 1.0, w]
    masks = np.zeros([D, M, M])
    masks[:2] = 1.0  # the whole box is foreground
    return {"num_detections": 2, "detection_boxes": boxes.tolist(), "detection_classes": [9, 5, 0],
            "detection_scores": [0.9, 0.6, 0.0], "detection_masks": masks.tolist()}


@pytest.fixture
def server():
    received: list[np.ndarray] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            assert body["signature_name"] == "serving_default"
            predictions = []
            for instance in body["instances"]:
                png = np.frombuffer(base64.b64decode(instance["b64"]), np.uint8)
                image = cv2.cvtColor(cv2.imdecode(png, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                received.append(image)
                predictions.append(_answer(image))
            data = json.dumps({"predictions": predictions}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1/models/maskrcnn:predict", received
    httpd.shutdown()
    httpd.server_close()


def _inside(h: int, w: int, box) -> np.ndarray:
    """Pixels whose centre lies in the box (a full box-relative mask, pasted)."""
    y1, x1, y2, x2 = box
    yy, xx = np.mgrid[:h, :w] + 0.5
    return (yy >= y1) & (yy < y2) & (xx >= x1) & (xx < x2)


def test_rest_serve_behind_a_detector(server, tmp_path):
    url, received = server
    categories = tmp_path / "categories.json"
    categories.write_text(json.dumps({"categories": [{"label": 2, "category_id": 9, "name": "dog"},
                                                     {"label": 1, "category_id": 5, "name": "cat"}]}))
    assert read_categories(str(categories)) == (CATEGORY_IDS, NAMES)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, [30, 40, 3], dtype=np.uint8), rng.integers(0, 256, [24, 16, 3], dtype=np.uint8),
              rng.integers(0, 256, [8, 8, 3], dtype=np.uint8)]
    detector = Detector(RestServe(url), *read_categories(str(categories)), batch_size=2)
    results = detector.detect(images)
    assert len(received) == 3  # two requests: 2 images, then 1
    for sent, got in zip(images, received):
        np.testing.assert_array_equal(got, sent)  # PNG: lossless
    for image, result in zip(images, results):
        h, w = image.shape[:2]
        assert result.category_names == ("dog", "cat")
        np.testing.assert_array_equal(result.category_ids, [9, 5])
        np.testing.assert_array_equal(result.labels, [2, 1])
        np.testing.assert_allclose(result.scores, [0.9, 0.6])
        np.testing.assert_allclose(result.boxes, [[0, 0, h / 2, w / 2], [1, w / 2, h - 1, w]], atol=1e-6)
        assert result.masks.shape == (2, h, w) and result.masks.dtype == bool
        for mask, box in zip(result.masks, result.boxes):
            np.testing.assert_array_equal(mask, _inside(h, w, box))
        assert result.draw().shape == image.shape
