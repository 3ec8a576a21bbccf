"""pipelines/image_check.py: bad image files refused or skipped before training; agreement with TensorFlow; cache."""

from __future__ import annotations

import io
import json
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf
from mrcnn_tf2.pipelines import coco, image_check
from mrcnn_tf2.pipelines.example import encode_image_file

from tests.pipelines.coco_fixtures import rect_polygon

H, W = 40, 50
PIL = pytest.importorskip("PIL.Image")


def _rgb(h=H, w=W, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _jpeg_with_orientation(rgb: np.ndarray, orientation: int) -> bytes:
    exif = PIL.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    PIL.fromarray(rgb).save(buffer, "JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def _pil_bytes(rgb, fmt, mode=None):
    picture = PIL.fromarray(rgb)
    picture = picture.convert(mode) if mode else picture
    buffer = io.BytesIO()
    picture.save(buffer, fmt)
    return buffer.getvalue()


def _good_files() -> dict[str, bytes]:
    rgb = _rgb()
    return {
        "ok.jpg": cv2.imencode(".jpg", rgb)[1].tobytes(),
        "ok_progressive.jpg": cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes(),
        "ok_cmyk.jpg": _pil_bytes(rgb, "JPEG", "CMYK"),
        "ok.png": cv2.imencode(".png", rgb)[1].tobytes(),
        "ok16.png": cv2.imencode(".png", rgb.astype(np.uint16) * 257)[1].tobytes(),
        "ok.bmp": cv2.imencode(".bmp", rgb)[1].tobytes(),
        "ok_1bit.bmp": _pil_bytes(rgb, "BMP", "1"),
        "ok.gif": _pil_bytes(rgb, "GIF"),
        "ok.webp": cv2.imencode(".webp", rgb)[1].tobytes(),
        "ok.tiff": cv2.imencode(".tiff", rgb)[1].tobytes(),
        "ok_exif_upright.jpg": _jpeg_with_orientation(rgb, 1),
    }


def _bad_files() -> dict[str, tuple[bytes | None, str]]:
    """file name -> (bytes, or None for no file; a fragment of the reason)."""
    rgb = _rgb()
    jpg = cv2.imencode(".jpg", rgb)[1].tobytes()
    png = cv2.imencode(".png", rgb)[1].tobytes()
    gif = _pil_bytes(rgb, "GIF")
    return {
        "empty.jpg": (b"", "is empty"),
        "truncated.jpg": (jpg[: len(jpg) * 2 // 3], "does not decode"),
        "cut_end.jpg": (jpg[:-2], "does not decode"),
        "truncated.png": (png[:-12], "does not decode"),
        "truncated.gif": (gif[: len(gif) // 2], "does not decode"),
        "header_only.png": (png[:30], "does not decode"),
        "cut_header.jpg": (jpg[:20], "unreadable JPEG header"),
        "text.jpg": (b"<html>404 not found</html>", "not a JPEG, PNG"),
        "smaller.png": (cv2.imencode(".png", _rgb(H - 1, W))[1].tobytes(), "is 39 x 50 (height x width) but the JSON"),
        "rotated.jpg": (_jpeg_with_orientation(_rgb(W, H), 6), "EXIF orientation is 6"),
        "swapped.png": (cv2.imencode(".png", _rgb(W, H))[1].tobytes(), "look swapped"),
        "gone.png": (None, "not found"),
    }


def _tf_decodes(data: bytes) -> bool:
    try:
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
        return tuple(image.shape[:2]) == (H, W)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
        return False


def _write_dataset(root: str, files: dict[str, bytes | None]) -> tuple[str, str]:
    image_dir = os.path.join(root, "images")
    os.makedirs(image_dir, exist_ok=True)
    images, anns = [], []
    for k, (name, data) in enumerate(sorted(files.items())):
        if data is not None:
            with open(os.path.join(image_dir, name), "wb") as f:
                f.write(data)
        images.append({"id": k + 1, "file_name": name, "height": H, "width": W})
        anns.append({"id": k + 1, "image_id": k + 1, "category_id": 1, "segmentation": [rect_polygon(3, 3, 9, 9)]})
    path = os.path.join(root, "ann.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]}, f)
    return path, image_dir


def test_good_files_pass_and_tensorflow_reads_what_the_pipeline_feeds_it(tmp_path):
    good = _good_files()
    ann, image_dir = _write_dataset(str(tmp_path), good)
    ds = coco.load_coco(ann, image_dir, check_files=False)
    assert image_check.check_images(ds, "error", use_cache=False) is ds
    for name in good:
        assert _tf_decodes(encode_image_file(os.path.join(image_dir, name))), name


def test_each_kind_of_bad_file_is_named_with_the_fix_and_tensorflow_agrees(tmp_path):
    bad = _bad_files()
    good = _good_files()
    ann, image_dir = _write_dataset(str(tmp_path), {**{k: v for k, (v, _) in bad.items()}, **good})
    ds = coco.load_coco(ann, image_dir, check_files=False)
    with pytest.raises(coco.DatasetError) as err:
        image_check.check_images(ds, "error", use_cache=False)
    message = str(err.value)
    assert message.startswith(ann) and f"{len(bad)} of {len(bad) + len(good)} images" in message
    assert "data.bad_images=skip" in message and "Fix or remove" in message
    for name, (data, reason) in bad.items():
        facts = image_check.inspect_file(os.path.join(image_dir, name), 0)
        problem = image_check._problem(next(r for r in ds.images if r.file_name == name), facts, 0)
        assert reason in problem, (name, problem)
        if data:  # what the check refuses, TensorFlow's decoders cannot use either (or it has the wrong size)
            assert not _tf_decodes(data), name


def test_skip_drops_bad_images_and_their_annotations(tmp_path, caplog):
    bad = _bad_files()
    ann, image_dir = _write_dataset(str(tmp_path), {**{k: v for k, (v, _) in bad.items()}, **_good_files()})
    ds = coco.load_coco(ann, image_dir, check_files=False)
    kept = image_check.check_images(ds, "skip", use_cache=False)
    assert sorted(r.file_name for r in kept.images) == sorted(_good_files())
    assert kept.skipped["bad_images"] == len(bad) and kept.num_instances == len(_good_files())
    assert "skipping image 'truncated.jpg'" in caplog.text and f"skipped {len(bad)} of" in caplog.text


def test_images_above_the_pixel_limit_are_refused_without_decoding(tmp_path, monkeypatch):
    ann, image_dir = _write_dataset(str(tmp_path), {"big.png": _good_files()["ok.png"]})
    ds = coco.load_coco(ann, image_dir, check_files=False)
    decoded = []
    real = image_check._decode_ok
    monkeypatch.setattr(image_check, "_decode_ok", lambda *a: decoded.append(1) or real(*a))
    with pytest.raises(coco.DatasetError, match=r"40 x 50 = 2,000 pixels .* above export.max_image_pixels=1,999"):
        image_check.check_images(ds, "error", max_pixels=1999)
    assert not decoded
    assert image_check.check_images(ds, "error", max_pixels=2000) is ds  # cached as too large: now decoded
    assert decoded == [1]


def test_cache_makes_the_second_check_read_no_file_and_sees_changes(tmp_path, monkeypatch):
    files = {f"{k}.png": cv2.imencode(".png", _rgb(seed=k))[1].tobytes() for k in range(5)}
    ann, image_dir = _write_dataset(str(tmp_path), files)
    ds = coco.load_coco(ann, image_dir, check_files=False)
    opened = []
    real = image_check.inspect_file
    monkeypatch.setattr(image_check, "inspect_file", lambda p, m: opened.append(os.path.basename(p)) or real(p, m))
    image_check.check_images(ds)
    assert sorted(opened) == sorted(files) and os.path.isfile(os.path.join(image_dir, image_check.CACHE_NAME))
    opened.clear()
    image_check.check_images(ds)
    assert opened == []
    with open(os.path.join(image_dir, "3.png"), "wb") as f:  # replaced by a truncated file: size and mtime change
        f.write(files["3.png"][:100])
    with pytest.raises(coco.DatasetError, match="'3.png'"):
        image_check.check_images(ds)
    assert opened == ["3.png"]


def test_read_only_image_folder_caches_in_the_user_cache(tmp_path, monkeypatch):
    ann, image_dir = _write_dataset(str(tmp_path / "data"), {"a.png": _good_files()["ok.png"]})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    real_access = os.access
    read_only = os.path.abspath(image_dir)
    monkeypatch.setattr(image_check.os, "access",
                        lambda p, mode: os.path.abspath(p) != read_only and real_access(p, mode))
    path = image_check.cache_path(image_dir)
    assert path.startswith(str(tmp_path / "cache" / "mrcnn_tf2" / "image_check"))
    image_check.check_images(coco.load_coco(ann, image_dir, check_files=False))
    assert os.path.isfile(path) and not os.path.exists(os.path.join(image_dir, image_check.CACHE_NAME))


def test_tfrecord_conversion_applies_the_checks(tmp_path):
    from mrcnn_tf2.pipelines import tfrecord

    bad = _bad_files()
    ann, image_dir = _write_dataset(str(tmp_path), {"ok.png": _good_files()["ok.png"],
                                                    "truncated.jpg": bad["truncated.jpg"][0]})
    out = str(tmp_path / "records")
    with pytest.raises(SystemExit, match="truncated.jpg"):
        tfrecord.main(["--annotations", ann, "--images", image_dir, "--output", out, "--shards", "1"])
    tfrecord.main(["--annotations", ann, "--images", image_dir, "--output", out, "--shards", "1",
                   "--bad_images", "skip"])
    info = tfrecord.read_dataset_info(out)
    assert info["num_images"] == 1 and info["num_instances"] == 1
