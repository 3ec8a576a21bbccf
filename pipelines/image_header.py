"""Image dimensions from the file header, without decoding the pixels (host side, pure Python).

:func:`read_image_size` reads ``(height, width)`` from the first bytes of an encoded image:

- JPEG: the first start-of-frame marker (SOF0-SOF15 except DHT/JPG/DAC), found by walking the marker
  segments (APPn/EXIF thumbnails are skipped by their length, so their own SOF is never read);
- PNG (and APNG): the ``IHDR`` chunk;
- BMP: the DIB header (``BITMAPCOREHEADER`` or later; negative heights are top-down bitmaps);
- GIF: the logical screen descriptor (the canvas every frame is drawn on, what decoders return);
- WebP: ``VP8 `` (lossy key frame), ``VP8L`` (lossless) or ``VP8X`` (extended: the canvas size);
- TIFF (classic, both byte orders): ``ImageWidth``/``ImageLength`` of the first IFD.

It never raises on bad input: anything it cannot read (unknown format, a header cut short, a zero
size) gives ``None``. :func:`read_exif_orientation` reads the EXIF ``Orientation`` tag of a JPEG, so a
size mismatch caused by a tool that applied the rotation can be explained. Used by
``pipelines/image_check.py`` to refuse decompression bombs (``export.max_image_pixels``) before
decoding; the SavedModel has its own graph version of the same rule.
"""

from __future__ import annotations

import struct

__all__ = ["read_image_size", "read_exif_orientation", "image_format"]

# SOFn markers: C0-CF except C4 (DHT), C8 (JPG extension) and CC (DAC).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM, RSTn, SOI, EOI.
_STANDALONE = frozenset([0x01, *range(0xD0, 0xDA)])


def image_format(data: bytes) -> str | None:
    """``jpeg``, ``png``, ``bmp``, ``gif``, ``webp`` or ``tiff`` from the magic bytes, else ``None``."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:2] == b"BM":
        return "bmp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return None


def _valid(height: int, width: int) -> tuple[int, int] | None:
    return (height, width) if height > 0 and width > 0 else None


def _jpeg_segments(data: bytes):
    """Yields ``(marker, payload_start, payload_end)`` of the segments before the first scan."""
    i = 2
    n = len(data)
    while i + 1 < n:
        if data[i] != 0xFF:
            return
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            return
        marker = data[i]
        i += 1
        if marker in _STANDALONE:
            if marker == 0xD9:
                return
            continue
        if i + 2 > n:
            return
        (length,) = struct.unpack(">H", data[i:i + 2])
        if length < 2:
            return
        yield marker, i + 2, min(i + length, n)
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            return
        i += length


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    for marker, start, end in _jpeg_segments(data):
        if marker in _SOF:
            if end - start < 5:
                return None
            height, width = struct.unpack(">HH", data[start + 1:start + 5])
            return _valid(height, width)  # height 0 (size in a later DNL marker) is not supported
    return None


def _png_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return _valid(height, width)


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 18:
        return None
    (header_size,) = struct.unpack("<I", data[14:18])
    if header_size == 12:
        if len(data) < 22:
            return None
        width, height = struct.unpack("<HH", data[18:22])
    elif header_size >= 16:
        if len(data) < 26:
            return None
        width, height = struct.unpack("<ii", data[18:26])
    else:
        return None
    return _valid(abs(height), width)


def _gif_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 10:
        return None
    width, height = struct.unpack("<HH", data[6:10])
    return _valid(height, width)


def _webp_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 30:
        return None
    chunk = data[12:16]
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":  # key frame start code
            return None
        width, height = struct.unpack("<HH", data[26:30])
        return _valid(height & 0x3FFF, width & 0x3FFF)
    if chunk == b"VP8L":
        if data[20] != 0x2F:
            return None
        (bits,) = struct.unpack("<I", data[21:25])
        return _valid(((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1)
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return _valid(height, width)
    return None


def _tiff_ifd0(data: bytes) -> tuple[str, dict[int, int]] | None:
    """The byte order and the integer-valued tags of the first IFD of a classic TIFF."""
    order = "<" if data[:2] == b"II" else ">"
    if len(data) < 8:
        return None
    (offset,) = struct.unpack(order + "I", data[4:8])
    if offset + 2 > len(data):
        return None
    (count,) = struct.unpack(order + "H", data[offset:offset + 2])
    tags: dict[int, int] = {}
    for k in range(count):
        entry = offset + 2 + 12 * k
        if entry + 12 > len(data):
            break
        tag, kind, num = struct.unpack(order + "HHI", data[entry:entry + 8])
        if num != 1:
            continue
        if kind == 3:  # SHORT
            (tags[tag],) = struct.unpack(order + "H", data[entry + 8:entry + 10])
        elif kind == 4:  # LONG
            (tags[tag],) = struct.unpack(order + "I", data[entry + 8:entry + 12])
    return order, tags


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    parsed = _tiff_ifd0(data)
    if parsed is None:
        return None
    tags = parsed[1]
    if 256 not in tags or 257 not in tags:
        return None
    return _valid(tags[257], tags[256])


_READERS = {"jpeg": _jpeg_size, "png": _png_size, "bmp": _bmp_size, "gif": _gif_size, "webp": _webp_size,
            "tiff": _tiff_size}


def read_image_size(data: bytes) -> tuple[int, int] | None:
    """``(height, width)`` from an encoded image's header, or ``None`` when it cannot be read.

    Args:
        data: the file's first bytes (the whole file, or at least the header: JPEG headers with large
            EXIF/ICC segments can span tens of kB; the other formats need under 64 bytes, TIFF its IFD).

    Returns:
        ``(height, width)`` in pixels as stored (before any EXIF orientation), both > 0; ``None`` for an
        unknown format or a header that is cut short or malformed.
    """
    kind = image_format(data)
    if kind is None:
        return None
    try:
        return _READERS[kind](data)
    except (struct.error, IndexError, ValueError):
        return None


def read_exif_orientation(data: bytes) -> int | None:
    """The EXIF ``Orientation`` tag (1-8) of a JPEG, or ``None`` when absent or unreadable.

    Values 5-8 mean a viewer shows the image rotated by 90 degrees (height and width swapped);
    TensorFlow's decoders ignore the tag.
    """
    if image_format(data) != "jpeg":
        return None
    try:
        for marker, start, end in _jpeg_segments(data):
            if marker == 0xE1 and data[start:start + 6] == b"Exif\x00\x00":
                tiff = data[start + 6:end]
                if tiff[:4] not in (b"II*\x00", b"MM\x00*"):
                    return None
                parsed = _tiff_ifd0(tiff)
                value = parsed[1].get(0x0112) if parsed else None
                return value if value in range(1, 9) else None
            if marker in _SOF:
                return None
    except (struct.error, IndexError, ValueError):
        return None
    return None
