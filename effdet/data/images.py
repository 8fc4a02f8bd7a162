"""Check an image file's integrity and give the bytes a record should carry.

Kept byte for byte: 8-bit RGB JPEGs and 8-bit truecolour (RGB) PNGs, which decode to RGB
without flags. Decoders need not agree on a JPEG's pixels (PIL 13's libjpeg and TensorFlow's
differ by a few levels), so training and evaluation, also of exported models, decode with
TensorFlow.
Everything else (grayscale, CMYK, palette, alpha, 16-bit, other formats) is converted to
RGB and re-encoded as lossless PNG: TensorFlow's JPEG decoder gets CMYK colours wrong and
the other cases depend on decoder flags, while one rule for "what a record holds" keeps
the training pipeline simple. Alpha is dropped, not composited. EXIF orientation is
ignored, as by COCO tools and TensorFlow, so pixels and boxes stay in stored orientation.

Integrity: a JPEG must start with SOI and end with EOI (trailing NUL padding allowed) and
its whole entropy-coded stream is decoded at 1/8 scale (libjpeg's DCT scaling), which
detects truncation at about a quarter of the cost of a full decode; PNGs and other formats
are decoded fully.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"
_PNG_RGB8 = (8, 2)  # IHDR (bit depth, colour type) of an 8-bit truecolour PNG
# Checked on the header's size before decoding (PIL itself only warns below twice this): a
# small, highly compressed file can otherwise expand to gigabytes. PIL's own warning level.
MAX_IMAGE_PIXELS = 89_478_485


class ImageProblem(ValueError):
    """The file is not a usable image; the message says why, in a few words."""


@dataclass(frozen=True)
class PreparedImage:
    encoded: bytes
    format: str  # "jpeg" or "png"
    width: int
    height: int


def prepare_image(data: bytes) -> PreparedImage:
    """Check `data` decodes completely; return it, or its RGB PNG re-encoding."""
    try:
        image = open_image(io.BytesIO(data))
        fmt, (width, height) = image.format, image.size
        if width * height > MAX_IMAGE_PIXELS:
            raise ImageProblem(f"{width}x{height} pixels is over the {MAX_IMAGE_PIXELS}-pixel "
                               "limit")
        if fmt == "JPEG" and image.mode == "RGB":
            _check_jpeg_markers(data)
            image.draft("RGB", (width // 8, height // 8))
            image.load()
            return PreparedImage(data, "jpeg", width, height)
        if fmt == "JPEG":
            _check_jpeg_markers(data)
        image.load()
    except ImageProblem:
        raise
    except UnidentifiedImageError:
        raise ImageProblem("not a readable image") from None
    except Image.DecompressionBombError as e:
        raise ImageProblem(f"too large to decode safely: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageProblem(f"corrupt {_kind(data)}: {e}") from None
    if fmt == "PNG" and image.mode == "RGB" and _png_depth_and_colour(data) == _PNG_RGB8:
        return PreparedImage(data, "png", width, height)
    out = io.BytesIO()
    _to_rgb(image).save(out, format="PNG")
    return PreparedImage(out.getvalue(), "png", width, height)


def open_image(source: str | Path | io.BytesIO) -> Image.Image:
    """Image.open without PIL's decompression-bomb warning: callers check the size against
    MAX_IMAGE_PIXELS (PIL's warning level) themselves, with a one-line message."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(source)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I"):
        # PIL clips 16-bit grey to 255 when converting; keep the high byte instead.
        high = np.asarray(image).astype(np.uint32) >> 8
        image = Image.fromarray(np.minimum(high, 255).astype(np.uint8))
    return image.convert("RGB")


def _kind(data: bytes) -> str:
    """A word for the kind of file, for error messages."""
    if data.startswith(_JPEG_SOI):
        return "JPEG"
    if data.startswith(b"\x89PNG"):
        return "PNG"
    return "image"


def _check_jpeg_markers(data: bytes) -> None:
    if not data.startswith(_JPEG_SOI):
        raise ImageProblem("corrupt JPEG: no start-of-image marker")
    if not data.rstrip(b"\x00").endswith(_JPEG_EOI):
        raise ImageProblem("corrupt JPEG: no end-of-image marker (truncated?)")


def _png_depth_and_colour(data: bytes) -> tuple[int, int]:
    # IHDR is always the first chunk: 8-byte signature, length, type, width, height, ...
    return data[24], data[25]
