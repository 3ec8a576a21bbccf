"""Hand-made image files for the header tests: decompression bombs whose headers announce huge sizes.

Each writer builds the bytes field by field from the format specifications (PNG: RFC 2083, GIF89a,
WebP container), so the size a test expects is the one written here, not one read back by our parser.
"""

from __future__ import annotations

import struct
import zlib

__all__ = ["png_bomb", "gif_bomb", "webp_vp8x_header"]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(height: int = 20000, width: int = 20000, rows: int = 16) -> bytes:
    """An 8-bit RGB PNG of ``height x width`` whose IDAT holds ``rows`` zero rows (16: a few kB, truncated;
    ``rows=height``: a complete, valid image, about 1.2 MB at 20000 x 20000)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = b"\x00" + b"\x00" * (3 * width)  # filter byte 0 + RGB zeros
    stream = zlib.compressobj(9)
    idat = b"".join(stream.compress(row) for _ in range(rows)) + stream.flush()
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def gif_bomb(canvas: tuple[int, int] = (10, 10), frames: tuple[tuple[int, int], ...] = ((10, 10), (65535, 65535))
             ) -> bytes:
    """GIF89a with a small logical screen (``canvas`` = (height, width)) and frames of the given sizes.

    Each frame: an image descriptor at (0, 0), LZW minimum code size 2 and one short data sub-block (the
    pixels are not all there: decoders allocate the frame from its descriptor before reading them).
    """
    h, w = canvas
    out = b"GIF89a" + struct.pack("<HHBBB", w, h, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"  # 2-color table
    out += b"\x21\xf9\x04\x00\x00\x00\x00\x00"  # a graphic control extension (one 4-byte sub-block)
    for fh, fw in frames:
        out += b"\x2c" + struct.pack("<HHHHB", 0, 0, fw, fh, 0) + b"\x02" + b"\x02\x4c\x01" + b"\x00"
    return out + b"\x3b"


def webp_vp8x_header(height: int, width: int) -> bytes:
    """The first 30 bytes of an extended WebP (RIFF, VP8X chunk) with a ``height x width`` canvas."""
    chunk = b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    body = b"WEBP" + b"VP8X" + struct.pack("<I", len(chunk)) + chunk
    return b"RIFF" + struct.pack("<I", len(body)) + body
