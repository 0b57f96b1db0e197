"""Decoding image files that a user or a client sent, within a pixel limit (torch-free).

A small compressed file can claim 20000 x 20000 pixels: PNG's deflate shrinks 400 MB of zeros
to 380 KiB. :func:`decode_greyscale` reads the size from the header and refuses an image of more
than ``max_pixels`` pixels before anything is decompressed, so decoding one image holds at most
:func:`decode_bytes_bound` bytes; it is shrunk to the wanted size at once. Paths are opened only
if they are regular files (a FIFO would block the reader, a device feed it forever).

>>> decode_greyscale(png_bytes, (28, 28)).size  # doctest: +SKIP
(28, 28)
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Any

from modmerge.errors import ModmergeError
from modmerge.regular_files import UnsafeFileError, open_regular

# 16.8 megapixels (4096 x 4096): above any photo a phone takes; decoding one holds <= 80 MiB
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096
# PIL's widest modes (RGBA, CMYK, I, F) take 4 bytes a pixel; the greyscale copy takes 1 more
DECODE_BYTES_PER_PIXEL = 5
# what PIL raises on broken or hostile files besides OSError (its DecompressionBombError, raised
# above its own ceiling, is an Exception of its own and is caught by name)
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error)


class ImageFileError(ModmergeError):
    """An image file is unreadable, not an image, or over the pixel limit (one line, no location)."""


def decode_bytes_bound(max_pixels: int) -> int:
    """The most memory that decoding one image within ``max_pixels`` holds at once.

    >>> decode_bytes_bound(DEFAULT_MAX_IMAGE_PIXELS) >> 20
    80
    """
    return max_pixels * DECODE_BYTES_PER_PIXEL


def decode_greyscale(source: str | Path | bytes, size: tuple[int, int], *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Any:
    """The PIL greyscale ("L") image of a file (a path) or of a file's bytes, resized to ``size``
    (H, W, bilinear). ImageFileError when it is missing, not a regular file, not an image, or
    larger than ``max_pixels`` pixels.

    >>> decode_greyscale(big_png, (28, 28), max_pixels=1000)  # doctest: +SKIP
    Traceback (most recent call last):
    ...
    modmerge.image_files.ImageFileError: image_b64 (412 bytes) is 20000 x 20000 pixels, over the limit of 1000 pixels (max_image_pixels)
    """
    from PIL import Image

    uploaded = isinstance(source, bytes)
    what = f"image_b64 ({len(source)} bytes)" if uploaded else f"image {source}"
    try:
        return _decode(source, size, what=what, max_pixels=max_pixels)
    except Image.DecompressionBombError:  # PIL's own ceiling (2 x MAX_IMAGE_PIXELS), checked in open()
        ceiling = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        limit = f"the limit of {max_pixels} pixels (max_image_pixels)" if max_pixels <= ceiling else (
            f"PIL's limit of {ceiling} pixels")
        problem = f"{what} is over {limit}"
    except FileNotFoundError:
        problem = f"image file {source} not found"
    except UnsafeFileError as err:
        problem = f"image {source} is not a regular file ({err})"
    except _DECODE_ERRORS as err:
        problem = (f"image_b64 holds no readable image ({len(source)} bytes)" if uploaded
                   else f"cannot read image {source} ({type(err).__name__})")
    # raised after the except clauses, not in them: raising there keeps the caught error bound in
    # this frame, a cycle (frame -> error -> traceback -> frame) that holds the file's bytes until
    # a full garbage collection; under a stream of bombs that is hundreds of MiB
    raise ImageFileError(problem)


def _decode(source: str | Path | bytes, size: tuple[int, int], *, what: str, max_pixels: int) -> Any:
    from PIL import Image

    with (io.BytesIO(source) if isinstance(source, bytes) else open_regular(source)) as f, Image.open(f) as img:
        width, height = img.size  # read from the header: nothing is decompressed yet
        if width * height > max_pixels:
            raise ImageFileError(f"{what} is {width} x {height} pixels, over the limit of {max_pixels} pixels "
                                 "(max_image_pixels)")
        return resized(img.convert("L"), size)


def resized(img: Any, size: tuple[int, int]) -> Any:
    """``img`` (PIL) at ``size`` (H, W), bilinear; ``img`` itself when it already has that size."""
    from PIL import Image

    height, width = size
    return img if img.size == (width, height) else img.resize((width, height), Image.Resampling.BILINEAR)
