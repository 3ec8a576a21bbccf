"""Image size from the encoded header, in TensorFlow graph ops: refuse decompression bombs before decoding.

A few hundred kilobytes of PNG or GIF can decode to gigabytes, so ``serving_default`` reads the size of
each request image from its first bytes and refuses oversized ones before ``tf.io.decode_image`` runs.
Only core string and control-flow ops are used (``StringLength``, ``Substr``, ``DecodePaddedRaw``,
``While``, ``Case``): the graph runs in TF Serving and in the C API. The host-side reader for training
data is ``pipelines/image_header.py`` (pure Python).

What is read, per format (the fields the decoders behind ``tf.io.decode_image`` size their buffers by):

- PNG: the ``IHDR`` chunk, which must be the first chunk (width, height: big-endian uint32).
- JPEG: the markers after ``SOI`` are walked (a bounded ``tf.while_loop``, one segment per step: APPn,
  DQT, DHT, ... are skipped by their length) up to the first start-of-frame marker (``SOF0``..``SOF15``
  except DHT, JPG and DAC), which holds height and width (big-endian uint16).
- GIF: the logical screen (the output canvas) and every image descriptor: giflib reads all frames, and
  each allocates its own width x height besides the canvas; the larger of the canvas and the sum of
  the frames is what is compared with the limit. The blocks are walked (a bounded
  ``tf.while_loop``; a step jumps over a run of full 255-byte data sub-blocks, or follows a chain of
  shorter ones through a 1 kB window by pointer doubling, so the cost grows with the file size, not
  with the number of sub-blocks).
- BMP: width and height of the info header (little-endian int32; a negative height means top-down).
- WebP: ``VP8 `` (14-bit sizes of the key frame), ``VP8L`` (14-bit sizes minus one) or ``VP8X`` (24-bit
  canvas sizes minus one).

Anything else (including JPEG XL, which ``decode_image`` would accept) is "unknown". A header that ends
early, or a walk that finds no size within its bound, reads as size 0 x 0 ("corrupt").

Results are int64: ``[format, height, width, pixels]`` with ``format`` one of the ``FORMAT_*`` codes and
``pixels`` the decode cost in pixels (height x width; GIF: max(canvas, sum of the frames)).
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["FORMAT_UNKNOWN", "FORMAT_JPEG", "FORMAT_PNG", "FORMAT_GIF", "FORMAT_BMP", "FORMAT_WEBP",
           "FORMAT_NAMES", "MAX_JPEG_SEGMENTS", "MAX_GIF_BLOCKS", "image_header", "check_image_headers"]

FORMAT_UNKNOWN, FORMAT_JPEG, FORMAT_PNG, FORMAT_GIF, FORMAT_BMP, FORMAT_WEBP = range(6)
FORMAT_NAMES = ("unknown", "JPEG", "PNG", "GIF", "BMP", "WebP")
MAX_JPEG_SEGMENTS = 1024  # segments before the frame header; real files have a few tens
# Loop steps of the GIF walk: a step reads one block header, or jumps over a run of up to _GIF_FULL_RUN
# full (255-byte) data sub-blocks, or follows a chain of other sub-blocks through _GIF_WINDOW bytes (at
# least _GIF_WINDOW - 256 bytes of progress), however the data is split. 8192 steps: 4096 frames, or
# 128 MB of full sub-blocks, or 6 MB cut into 1-byte ones; a longer walk is refused as corrupt.
MAX_GIF_BLOCKS = 8192
_GIF_FULL_RUN = 64
_GIF_WINDOW = 1024  # a power of two

_SIGNATURES = (  # (code, offset, magic): checked on the first 16 bytes
    (FORMAT_PNG, 0, b"\x89PNG\r\n\x1a\n"),
    (FORMAT_JPEG, 0, b"\xff\xd8\xff"),
    (FORMAT_GIF, 0, b"GIF87a"),
    (FORMAT_GIF, 0, b"GIF89a"),
    (FORMAT_BMP, 0, b"BM"),
)


# === Byte access ===

def _bytes_at(encoded: tf.Tensor, length: tf.Tensor, pos: tf.Tensor, n: int) -> tf.Tensor:
    """``[n]`` int64: the bytes at ``pos..pos+n-1``, zero past the end (never an out-of-range error)."""
    start = tf.clip_by_value(pos, 0, length)
    chunk = tf.strings.substr(encoded, start, n)
    return tf.cast(tf.io.decode_raw(chunk, tf.uint8, fixed_length=n), tf.int64)


def _be(b: tf.Tensor, i: int, n: int) -> tf.Tensor:
    """Big-endian unsigned integer of ``b[i:i+n]``."""
    value = tf.constant(0, tf.int64)
    for k in range(n):
        value = value * 256 + b[i + k]
    return value


def _le(b: tf.Tensor, i: int, n: int) -> tf.Tensor:
    """Little-endian unsigned integer of ``b[i:i+n]``."""
    return _be(tf.reverse(b[i:i + n], [0]), 0, n)


def _equals(b: tf.Tensor, i: int, magic: bytes) -> tf.Tensor:
    return tf.reduce_all(tf.equal(b[i:i + len(magic)], tf.constant(list(magic), tf.int64)))


def _i64(value: int) -> tf.Tensor:
    return tf.constant(value, tf.int64)


def _size(height: tf.Tensor, width: tf.Tensor, complete: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(height, width, pixels), all 0 when the header is not ``complete``."""
    height = tf.where(complete, height, _i64(0))
    width = tf.where(complete, width, _i64(0))
    return height, width, height * width


# === Formats ===

def _png(head: tf.Tensor, length: tf.Tensor):
    complete = (length >= 24) & _equals(head, 12, b"IHDR")
    return _size(_be(head, 20, 4), _be(head, 16, 4), complete)


def _bmp(head: tf.Tensor, length: tf.Tensor):
    def signed32(value):
        return tf.where(value >= 1 << 31, value - (1 << 32), value)

    return _size(tf.abs(signed32(_le(head, 22, 4))), tf.abs(signed32(_le(head, 18, 4))), length >= 26)


def _webp(head: tf.Tensor, length: tf.Tensor):
    lossy = _equals(head, 12, b"VP8 ") & _equals(head, 23, b"\x9d\x01\x2a") & (length >= 30)
    lossless = _equals(head, 12, b"VP8L") & tf.equal(head[20], 0x2F) & (length >= 25)
    extended = _equals(head, 12, b"VP8X") & (length >= 30)
    bits = _le(head, 21, 4)
    height = tf.where(lossy, _le(head, 28, 2) % (1 << 14),
                      tf.where(lossless, (bits // (1 << 14)) % (1 << 14) + 1, _le(head, 27, 3) + 1))
    width = tf.where(lossy, _le(head, 26, 2) % (1 << 14),
                     tf.where(lossless, bits % (1 << 14) + 1, _le(head, 24, 3) + 1))
    return _size(height, width, lossy | lossless | extended)


def _jpeg(encoded: tf.Tensor, length: tf.Tensor):
    """Walks the segments after SOI to the first SOFn (one segment per loop step, MAX_JPEG_SEGMENTS at most)."""
    sof = [m for m in range(0xC0, 0xD0) if m not in (0xC4, 0xC8, 0xCC)]  # DHT, JPG, DAC are no frame
    standalone = [0x01] + list(range(0xD0, 0xD8))  # TEM, RSTn: no length field

    def cond(pos, height, width, found, done, step):
        return ~done & (step < MAX_JPEG_SEGMENTS)

    def body(pos, height, width, found, done, step):
        # FF, marker, then for SOFn: length (2), precision (1), height (2), width (2).
        b = _bytes_at(encoded, length, pos, 9)
        marker = b[1]
        fill = tf.equal(b[0], 0xFF) & tf.equal(marker, 0xFF)  # fill bytes may precede a marker
        is_sof = tf.reduce_any(tf.equal(marker, sof)) & tf.equal(b[0], 0xFF)
        is_standalone = tf.reduce_any(tf.equal(marker, standalone))
        segment = _be(b, 2, 2)
        # Not a marker, SOS/EOI before any frame, a bad length or the end of the data: stop, no size.
        broken = (tf.not_equal(b[0], 0xFF) | tf.equal(marker, 0xDA) | tf.equal(marker, 0xD9)
                  | (~fill & ~is_standalone & (segment < 2)) | (pos + 4 > length))
        found_here = is_sof & (pos + 9 <= length)
        step_size = tf.where(fill, _i64(1), tf.where(is_standalone, _i64(2), 2 + segment))
        return (pos + step_size,
                tf.where(found_here, _be(b, 5, 2), height),
                tf.where(found_here, _be(b, 7, 2), width),
                found | found_here,
                done | found_here | broken | is_sof,
                step + 1)

    zero = tf.constant(0, tf.int64)
    _, height, width, found, _, _ = tf.while_loop(
        cond, body, (tf.constant(2, tf.int64), zero, zero, tf.constant(False), tf.constant(False), zero),
        parallel_iterations=1)
    return _size(height, width, found)


def _gif(encoded: tf.Tensor, length: tf.Tensor, head: tf.Tensor):
    """max(logical screen, sum of the frames' areas), by walking the blocks (MAX_GIF_BLOCKS steps at most).

    Loop state ``in_data``: the walk is inside a chain of data sub-blocks (after an extension label or an
    image's LZW code size), each ``[n][n bytes]``, ended by ``n = 0``. One step jumps over a run of full
    sub-blocks or follows the chain through ``_GIF_WINDOW`` bytes (pointer doubling), or reads one
    descriptor/extension header.
    """
    def color_table(packed):  # bytes of the color table a packed field announces (bit 7 set)
        return tf.where(packed >= 128, 3 * tf.bitwise.left_shift(_i64(2), packed % 8), _i64(0))

    def cond(pos, in_data, frames, done, step):
        return ~done & (step < MAX_GIF_BLOCKS)

    def body(pos, in_data, frames, done, step):
        # Outside a chain: 2C descriptor (left, top, width, height: 2 bytes each; packed), 21 extension, 3B end.
        b = _bytes_at(encoded, length, pos, 10)
        kind = b[0]
        image = tf.equal(kind, 0x2C)
        extension = tf.equal(kind, 0x21)
        header_next = tf.where(image, pos + 10 + color_table(b[9]) + 1, pos + 2)  # + LZW code size byte
        area = tf.where(~in_data & image & (pos + 10 <= length), _le(b, 5, 2) * _le(b, 7, 2), _i64(0))
        # Inside a chain. Fast path: encoders write full 255-byte sub-blocks, so count the run of 255 length
        # bytes at pos, pos + 256, ... and jump over all of them. Otherwise follow the chain through a
        # window at once: jump[p] = p + 1 + byte[p]; the terminator (a zero byte) and the last length byte
        # before the window's end point to themselves; pointer doubling (jump = jump[jump]) then leads
        # from offset 0 to one of those.
        ahead = _bytes_at(encoded, length, pos, 256 * _GIF_FULL_RUN)
        full_run = tf.reduce_sum(tf.math.cumprod(tf.cast(tf.equal(ahead[::256], 255), tf.int64)))
        data = tf.cast(ahead[:_GIF_WINDOW], tf.int32)  # int32: faster gathers
        offsets = tf.range(_GIF_WINDOW, dtype=tf.int32)
        jump = tf.where(tf.equal(data, 0) | (offsets + 1 + data >= _GIF_WINDOW), offsets, offsets + 1 + data)
        for _ in range(_GIF_WINDOW.bit_length() - 1):  # 2^rounds >= _GIF_WINDOW hops
            jump = tf.gather(jump, jump)
        last = jump[0]
        ended = (full_run == 0) & tf.equal(data[last], 0)
        offset = tf.where(full_run > 0, 256 * full_run, tf.cast(last + 1 + data[last], tf.int64))
        next_pos = tf.where(in_data, pos + offset, header_next)
        stop = (~in_data & ~image & ~extension) | (next_pos > length)  # 3B (trailer) or anything unknown
        next_in_data = tf.where(in_data, ~ended, image | extension)
        return next_pos, next_in_data, frames + area, done | stop, step + 1

    start = 13 + color_table(head[10])
    zero = _i64(0)
    _, _, frames, done, _ = tf.while_loop(
        cond, body, (start, tf.constant(False), zero, tf.constant(False), zero), parallel_iterations=1)
    height, width, canvas = _size(_le(head, 8, 2), _le(head, 6, 2), (length >= 13) & done)
    return height, width, tf.where(done, tf.maximum(canvas, frames), _i64(0))


# === Public ===

def image_header(encoded: tf.Tensor) -> tf.Tensor:
    """Reads format and size of one encoded image from its header, without decoding it.

    Args:
        encoded: scalar tf.string, the file bytes.

    Returns:
        ``[4]`` int64: ``[format, height, width, pixels]``; ``format`` is a ``FORMAT_*`` code (0 = not
        one of JPEG, PNG, GIF, BMP, WebP), ``pixels`` what decoding allocates in pixels (height x width;
        for GIF the larger of the canvas and the sum of the frames). height = width = pixels = 0 when the
        header is truncated or corrupt (GIF: also a walk longer than MAX_GIF_BLOCKS steps), or the
        format is unknown.
    """
    encoded = tf.convert_to_tensor(encoded, tf.string)
    length = tf.cast(tf.strings.length(encoded), tf.int64)
    head = _bytes_at(encoded, length, tf.constant(0, tf.int64), 32)
    code = tf.constant(FORMAT_UNKNOWN, tf.int64)
    for format_code, offset, magic in reversed(_SIGNATURES):
        code = tf.where(_equals(head, offset, magic), tf.constant(format_code, tf.int64), code)
    webp = _equals(head, 0, b"RIFF") & _equals(head, 8, b"WEBP")
    code = tf.where(webp, tf.constant(FORMAT_WEBP, tf.int64), code)

    def unknown():
        zero = tf.constant(0, tf.int64)
        return zero, zero, zero

    branches = {FORMAT_UNKNOWN: unknown,
                FORMAT_JPEG: lambda: _jpeg(encoded, length),
                FORMAT_PNG: lambda: _png(head, length),
                FORMAT_GIF: lambda: _gif(encoded, length, head),
                FORMAT_BMP: lambda: _bmp(head, length),
                FORMAT_WEBP: lambda: _webp(head, length)}
    height, width, pixels = tf.switch_case(tf.cast(code, tf.int32), branches)
    return tf.stack([code, height, width, pixels])


def check_image_headers(images: tf.Tensor, max_image_pixels: int, what: str = "images") -> tf.Operation:
    """Asserts that every encoded image is a known format with a readable size of at most ``max_image_pixels``.

    Run it (as a control dependency) before decoding: the failure is an ``InvalidArgumentError`` naming
    the offending batch positions, and no image of the batch has been decoded.

    Args:
        images: ``[B]`` tf.string, encoded images.
        max_image_pixels: the largest height x width accepted (GIF: max(canvas, sum of the frames)).
        what: how the messages name the input (e.g. the signature's input name).

    Returns:
        The grouped assertion op.
    """
    headers = tf.map_fn(image_header, images, fn_output_signature=tf.TensorSpec([4], tf.int64))
    headers = tf.reshape(headers, [-1, 4])
    code, height, width, pixels = tf.unstack(headers, axis=1)
    unknown = tf.equal(code, FORMAT_UNKNOWN)
    corrupt = ~unknown & (pixels <= 0)
    too_big = pixels > max_image_pixels
    checks = [
        tf.debugging.Assert(
            ~tf.reduce_any(unknown),
            [f"{what}: the bytes at these batch positions are not a JPEG, PNG, GIF, BMP or WebP image "
             "(by their first bytes):", tf.where(unknown)[:, 0]], summarize=16),
        tf.debugging.Assert(
            ~tf.reduce_any(corrupt),
            [f"{what}: the image header at these batch positions is truncated or corrupt (no size found "
             "within the bounded header walk):",
             tf.where(corrupt)[:, 0]], summarize=16),
        tf.debugging.Assert(
            ~tf.reduce_any(too_big),
            [f"{what}: images above export.max_image_pixels={max_image_pixels} (fixed at export) are refused "
             "before decoding; resize them. Batch positions, then [height, width, pixels] read from the "
             "headers:", tf.where(too_big)[:, 0], tf.boolean_mask(headers[:, 1:], too_big)], summarize=16),
    ]
    return tf.group(checks)
