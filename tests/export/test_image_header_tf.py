"""export/image_header_tf.py: sizes read from headers equal the decoder's, bombs and unknown bytes are refused.

The reference for every real file is ``tf.io.decode_image``'s output shape (an independent decoder);
the bombs are written field by field in ``tests/export/image_files.py``.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import tensorflow as tf
from mrcnn_tf2.export import image_header_tf as header

from tests.export.image_files import gif_bomb, png_bomb, webp_vp8x_header

SIZES = ((37, 53), (1, 1), (64, 17))
_read = tf.function(header.image_header)


def _array(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _pil(array: np.ndarray, fmt: str, **options) -> bytes:
    image_module = pytest.importorskip("PIL.Image")
    buffer = io.BytesIO()
    image_module.fromarray(array).save(buffer, fmt, **options)
    return buffer.getvalue()


def _bmp(array: np.ndarray, top_down: bool = False) -> bytes:
    """24-bit BI_RGB BMP written from the format's fields (rows padded to 4 bytes, BGR)."""
    h, w, _ = array.shape
    row = w * 3 + (-w * 3) % 4
    rows = array[:, :, ::-1] if top_down else array[::-1, :, ::-1]
    pixels = b"".join(r.tobytes() + b"\x00" * (row - w * 3) for r in rows)
    info = struct.pack("<IiiHHIIiiII", 40, w, -h if top_down else h, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + len(pixels), 0, 0, 54) + info + pixels


def _jpeg_with_segments(jpeg: bytes, sizes=(60000, 60000, 5000), fill: int = 3) -> bytes:
    """Inserts APP15 segments of the given payload sizes and ``fill`` 0xFF fill bytes after SOI."""
    segments = b"".join(b"\xff\xef" + struct.pack(">H", n + 2) + bytes(n) for n in sizes)
    return jpeg[:2] + segments + b"\xff" * fill + jpeg[2:]


def _cases() -> dict[str, callable]:
    cases = {}
    for h, w in SIZES:
        a = _array(h, w)
        cases[f"png-{h}x{w}"] = lambda a=a: tf.io.encode_png(a).numpy()
        cases[f"png-gray-{h}x{w}"] = lambda a=a: tf.io.encode_png(a[:, :, :1]).numpy()
        cases[f"jpeg-{h}x{w}"] = lambda a=a: tf.io.encode_jpeg(a, quality=90).numpy()
        cases[f"jpeg-progressive-{h}x{w}"] = lambda a=a: tf.io.encode_jpeg(a, progressive=True).numpy()
        cases[f"jpeg-big-app-segments-{h}x{w}"] = lambda a=a: _jpeg_with_segments(tf.io.encode_jpeg(a).numpy())
        cases[f"jpeg-exif-{h}x{w}"] = lambda a=a: _pil(a, "JPEG", exif=b"Exif\x00\x00" + bytes(3000))
        cases[f"bmp-{h}x{w}"] = lambda a=a: _bmp(a)
        cases[f"bmp-top-down-{h}x{w}"] = lambda a=a: _bmp(a, top_down=True)
        cases[f"gif-{h}x{w}"] = lambda a=a: _pil(a, "GIF")
        cases[f"webp-lossy-{h}x{w}"] = lambda a=a: _pil(a, "WEBP", quality=80)
        cases[f"webp-lossless-{h}x{w}"] = lambda a=a: _pil(a, "WEBP", lossless=True)
        cases[f"webp-extended-{h}x{w}"] = lambda a=a: _pil(a, "WEBP", exif=b"Exif\x00\x00" + bytes(64))
    return cases


CASES = _cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_size_equals_decoded_shape(name):
    encoded = CASES[name]()
    decoded = tf.io.decode_image(encoded, channels=3, expand_animations=False).shape
    code, height, width, pixels = _read(tf.constant(encoded)).numpy().tolist()
    expected_format = {"png": "PNG", "jpeg": "JPEG", "bmp": "BMP", "gif": "GIF", "webp": "WebP"}[name.split("-")[0]]
    assert header.FORMAT_NAMES[code] == expected_format
    assert (height, width) == tuple(decoded[:2])
    assert pixels == height * width


def test_extended_webp_is_really_vp8x():
    encoded = CASES["webp-extended-37x53"]()
    assert encoded[12:16] == b"VP8X"  # the case covers the VP8X branch, not VP8 again


def _rechunk_gif(gif: bytes, sizes=(1, 7, 255, 3, 255, 255, 2)) -> bytes:
    """The same GIF with every chain of data sub-blocks re-cut into sub-blocks of the cycling ``sizes``."""
    packed = gif[10]
    pos = 13 + (3 * 2 ** ((packed & 7) + 1) if packed & 0x80 else 0)
    out = bytearray(gif[:pos])
    while gif[pos] != 0x3B:
        if gif[pos] == 0x2C:
            local = gif[pos + 9]
            head = 10 + (3 * 2 ** ((local & 7) + 1) if local & 0x80 else 0) + 1  # + LZW code size
        else:
            head = 2  # 21, label
        out += gif[pos:pos + head]
        pos += head
        data = bytearray()
        while gif[pos]:
            data += gif[pos + 1:pos + 1 + gif[pos]]
            pos += 1 + gif[pos]
        pos += 1
        i = k = 0
        while i < len(data):
            n = min(sizes[k % len(sizes)], len(data) - i)
            out += bytes([n]) + data[i:i + n]
            i, k = i + n, k + 1
        out += b"\x00"
    return bytes(out + b"\x3b")


@pytest.mark.parametrize("sizes", [(1,), (1, 7, 255, 3, 255, 255, 2), (255,)])
def test_gif_with_any_sub_block_sizes(sizes):
    frames = [_array(40, 300, seed) for seed in range(3)]
    image_module = pytest.importorskip("PIL.Image")
    buffer = io.BytesIO()
    image_module.fromarray(frames[0]).save(buffer, "GIF", save_all=True, duration=50, optimize=False,
                                           append_images=[image_module.fromarray(f) for f in frames[1:]])
    gif = _rechunk_gif(buffer.getvalue(), sizes)
    assert tf.io.decode_image(gif, channels=3).shape == (3, 40, 300, 3)  # still a valid 3-frame GIF
    assert _read(tf.constant(gif)).numpy().tolist() == [header.FORMAT_GIF, 40, 300, 3 * 40 * 300]


def test_animated_gif_counts_every_frame():
    frames = [_array(20, 30, seed) for seed in range(4)]
    image_module = pytest.importorskip("PIL.Image")
    buffer = io.BytesIO()
    image_module.fromarray(frames[0]).save(buffer, "GIF", save_all=True, duration=50, optimize=False,
                                           append_images=[image_module.fromarray(f) for f in frames[1:]])
    code, height, width, pixels = _read(tf.constant(buffer.getvalue())).numpy().tolist()
    assert tf.io.decode_image(buffer.getvalue(), channels=3).shape[0] == 4  # really 4 frames
    assert (code, height, width, pixels) == (header.FORMAT_GIF, 20, 30, 4 * 20 * 30)


def test_bombs_read_their_announced_size():
    assert _read(tf.constant(png_bomb(20000, 20000))).numpy().tolist() == [header.FORMAT_PNG, 20000, 20000, 4 * 10**8]
    # A 10 x 10 canvas whose second frame is 65535 x 65535: what giflib allocates is the frame.
    code, height, width, pixels = _read(tf.constant(gif_bomb())).numpy().tolist()
    assert (code, height, width, pixels) == (header.FORMAT_GIF, 10, 10, 100 + 65535 * 65535)
    webp = webp_vp8x_header(30000, 20000)
    assert _read(tf.constant(webp)).numpy().tolist() == [header.FORMAT_WEBP, 30000, 20000, 6 * 10**8]


@pytest.mark.parametrize("data", [b"", b"hello, not an image", b"\xff\x0a" + bytes(40), b"GIF8", b"RIFF1234WAVE"])
def test_unknown_bytes_have_no_format(data):
    assert _read(tf.constant(data)).numpy().tolist() == [header.FORMAT_UNKNOWN, 0, 0, 0]


@pytest.mark.parametrize("name", ["png-37x53", "jpeg-37x53", "bmp-37x53", "webp-lossy-37x53", "gif-37x53"])
def test_truncated_headers_read_as_corrupt(name):
    encoded = CASES[name]()
    cut = {"png": 20, "jpeg": 100, "bmp": 20, "webp": 24, "gif": 11}[name.split("-")[0]]
    code, height, width, pixels = _read(tf.constant(encoded[:cut])).numpy().tolist()
    assert header.FORMAT_NAMES[code] != "unknown" and (height, width, pixels) == (0, 0, 0)


def test_jpeg_without_frame_header_is_corrupt():
    jpeg = tf.io.encode_jpeg(_array(8, 8)).numpy()
    sof = jpeg.index(b"\xff\xc0")
    assert _read(tf.constant(jpeg[:sof] + b"\xff\xd9")).numpy().tolist() == [header.FORMAT_JPEG, 0, 0, 0]
    # Empty comment segments before the frame header: found up to the walk's bound, corrupt beyond it.
    comments = b"\xff\xfe\x00\x02"
    n = header.MAX_JPEG_SEGMENTS - 8
    assert _read(tf.constant(jpeg[:2] + comments * n + jpeg[2:])).numpy().tolist() == [header.FORMAT_JPEG, 8, 8, 64]
    n = header.MAX_JPEG_SEGMENTS + 1
    assert _read(tf.constant(jpeg[:2] + comments * n + jpeg[2:])).numpy().tolist() == [header.FORMAT_JPEG, 0, 0, 0]


def test_check_refuses_the_batch_naming_positions():
    good = tf.io.encode_png(_array(10, 12)).numpy()
    @tf.function
    def check(images):
        with tf.control_dependencies([header.check_image_headers(images, max_image_pixels=120, what="images")]):
            return tf.size(images)

    check(tf.constant([good, good]))  # 10 x 12 = 120: at the limit, accepted
    check(tf.zeros([0], tf.string))  # an empty batch passes
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"export.max_image_pixels=120(.|\n)*\[1\]"):
        check(tf.constant([good, tf.io.encode_png(_array(11, 12)).numpy()]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_image_pixels"):
        check(tf.constant([png_bomb(20000, 20000)]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"not a JPEG, PNG, GIF, BMP or WebP(.|\n)*\[0 2\]"):
        check(tf.constant([b"text", good, b"\x00" * 64]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="truncated or corrupt"):
        check(tf.constant([good[:20]]))
