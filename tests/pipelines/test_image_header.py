"""pipelines/image_header.py: header sizes against what OpenCV and Pillow decode, on files written here."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from mrcnn_tf2.pipelines.image_header import image_format, read_exif_orientation, read_image_size

PIL = pytest.importorskip("PIL.Image")

SIZES = [(37, 53), (64, 48), (1, 300), (301, 2)]


def _cv2(ext: str, image: np.ndarray, *params: int) -> bytes:
    ok, data = cv2.imencode(ext, image, list(params))
    assert ok
    return data.tobytes()


def _pil(image: np.ndarray, fmt: str, mode: str | None = None, **kwargs) -> bytes:
    picture = PIL.fromarray(image)
    if mode:
        picture = picture.convert(mode)
    buffer = io.BytesIO()
    picture.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _encodings(h: int, w: int) -> dict[str, bytes]:
    rng = np.random.default_rng(h * 1000 + w)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    rgba = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    gray16 = rng.integers(0, 65536, (h, w), dtype=np.uint16)
    out = {
        "jpeg": _cv2(".jpg", rgb),
        "jpeg_progressive": _cv2(".jpg", rgb, cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
        "jpeg_gray": _cv2(".jpg", rgb[..., 0]),
        "jpeg_cmyk": _pil(rgb, "JPEG", "CMYK"),
        "jpeg_exif": _pil(rgb, "JPEG", exif=_exif(6)),
        "png": _cv2(".png", rgb),
        "png_rgba": _cv2(".png", rgba),
        "png_16bit": _cv2(".png", gray16),
        "png_palette": _pil(rgb, "PNG", "P"),
        "bmp": _cv2(".bmp", rgb),
        "bmp_gray": _cv2(".bmp", rgb[..., 0]),
        "bmp_1bit": _pil(rgb, "BMP", "1"),
        "gif": _pil(rgb, "GIF"),
        "webp_lossy": _cv2(".webp", rgb, cv2.IMWRITE_WEBP_QUALITY, 80),
        "webp_lossless": _cv2(".webp", rgb, cv2.IMWRITE_WEBP_QUALITY, 101),
        "webp_alpha": _pil(rgba, "WEBP", quality=80),
        "tiff": _cv2(".tiff", rgb),
        "tiff_big_endian": _tiff_big_endian(rgb),
    }
    return out


def _exif(orientation: int) -> bytes:
    exif = PIL.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _tiff_big_endian(rgb: np.ndarray) -> bytes:
    """A minimal uncompressed big-endian RGB TIFF, ImageWidth as SHORT and ImageLength as LONG."""
    h, w = rgb.shape[:2]
    entries = [(256, 3, 1, w), (257, 4, 1, h), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 2),
               (273, 4, 1, 0), (277, 3, 1, 3), (278, 4, 1, h), (279, 4, 1, h * w * 3)]
    ifd_size = 2 + 12 * len(entries) + 4
    pixel_offset = 8 + ifd_size
    out = bytearray(b"MM\x00*" + (8).to_bytes(4, "big") + len(entries).to_bytes(2, "big"))
    for tag, kind, count, value in entries:
        value = pixel_offset if tag == 273 else value
        field = value.to_bytes(2, "big") + b"\x00\x00" if kind == 3 else value.to_bytes(4, "big")
        out += tag.to_bytes(2, "big") + kind.to_bytes(2, "big") + count.to_bytes(4, "big") + field
    out += b"\x00\x00\x00\x00" + rgb.tobytes()
    return bytes(out)


def _decoded_sizes(data: bytes) -> set[tuple[int, int]]:
    """(height, width) as OpenCV and Pillow decode the bytes (each that can)."""
    sizes = set()
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is not None:
        sizes.add(image.shape[:2])
    with PIL.open(io.BytesIO(data)) as picture:
        picture.load()
        sizes.add((picture.height, picture.width))
    return sizes


@pytest.mark.parametrize("h, w", SIZES)
def test_header_size_equals_decoded_size(h, w):
    for name, data in _encodings(h, w).items():
        decoded = _decoded_sizes(data)
        assert decoded == {(h, w)}, (name, decoded)
        assert read_image_size(data) == (h, w), name
        assert image_format(data) == name.split("_")[0], name


def test_top_down_bmp_and_exif_orientation():
    rgb = np.zeros((7, 11, 3), np.uint8)
    rgb[0] = 255
    bmp = bytearray(_cv2(".bmp", rgb))
    bmp[22:26] = (-7).to_bytes(4, "little", signed=True)  # top-down: negative height
    image = cv2.imdecode(np.frombuffer(bytes(bmp), np.uint8), cv2.IMREAD_COLOR)
    assert image.shape[:2] == (7, 11) and image[6].min() == 255  # rows flipped, size the same
    assert read_image_size(bytes(bmp)) == (7, 11)
    for orientation in (1, 6, 8):
        data = _pil(rgb, "JPEG", exif=_exif(orientation))
        assert read_exif_orientation(data) == orientation
        assert read_image_size(data) == (7, 11)  # the stored size, not the displayed one
    assert read_exif_orientation(_cv2(".jpg", rgb)) is None
    assert read_exif_orientation(_cv2(".png", rgb)) is None


def test_jpeg_thumbnail_in_exif_is_not_the_image_size():
    rgb = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    thumb = _cv2(".jpg", rgb[:10, :16])  # a JPEG (with its own SOF) inside the APP1 segment
    app1 = b"Exif\x00\x00" + b"II*\x00\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00" + thumb
    main = _cv2(".jpg", rgb)
    data = main[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + main[2:]
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape[:2] == (90, 120)
    assert read_image_size(data) == (90, 120)


def test_bombs_are_read_from_a_few_bytes():
    """A 20000 x 20000 PNG header: the size is known without decoding (or even having) the pixels."""
    png = _cv2(".png", np.zeros((20000, 20000), np.uint8), cv2.IMWRITE_PNG_COMPRESSION, 9)
    assert read_image_size(png[:33]) == (20000, 20000)
    assert len(png) < 2_000_000


def test_garbage_and_cut_headers_give_none_never_raise():
    rng = np.random.default_rng(0)
    for name, data in _encodings(37, 53).items():
        for cut in range(0, 40):
            size = read_image_size(data[:cut])
            assert size is None or size == (37, 53), (name, cut, size)
        for _ in range(50):  # random bit flips in the header region
            noisy = bytearray(data[:256])
            noisy[int(rng.integers(0, len(noisy)))] ^= int(rng.integers(1, 256))
            size = read_image_size(bytes(noisy))
            assert size is None or (isinstance(size, tuple) and min(size) > 0), (name, size)
            read_exif_orientation(bytes(noisy))
    for data in (b"", b"\xff\xd8\xff", b"BM", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"II*\x00",
                 b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 8 + b"IHDR" + b"\x00" * 8):
        assert read_image_size(data) is None, data
