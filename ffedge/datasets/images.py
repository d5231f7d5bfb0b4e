"""Decoding image files into uint8 pixels: the one decoder ``predict`` and folder datasets share.

- Formats: PNG, JPEG, GIF, TIFF, BMP, WebP and PPM/PGM (others, e.g. EPS, are
  never handed to their decoders). Only regular files are read; GIF/TIFF read their first frame.
- At most :data:`MAX_IMAGE_PIXELS` pixels per image, checked from the header
  before the pixels are decoded.
- Pixel depth: 8-bit images are used as they are (palette, CMYK, ... converted by
  Pillow). 16-bit images (mode I;16, e.g. 16-bit grey PNG/TIFF) are scaled by their
  bit depth: ``v * 255 / (2**bits - 1)``, bits = 16 (or a TIFF's BitsPerSample,
  e.g. 12). 32-bit integer (mode I) and float (mode F) images have no fixed depth,
  so their value range decides: ``max <= 1`` (float only) is 0..1 and scaled by
  255, ``max <= 255`` is used as is, ``max <= 65535`` is scaled by 255/65535;
  negative, NaN/infinite or larger values are refused. Values are rounded to the
  nearest level, never clipped.
- EXIF orientation is applied. Any malformed file is one FFEdgeError naming it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from ffedge.datasets.base import resize_images
from ffedge.untrusted import MAX_ARRAY_BYTES, open_regular, printable, reason
from ffedge.errors import FFEdgeError

if TYPE_CHECKING:  # Pillow is imported where an image is decoded: `ffedge info` and `--help` never need it
    from PIL import Image

MAX_IMAGE_PIXELS = 8192 * 8192
"""Largest image (width x height) read: 67,108,864 pixels (a 48-megapixel photo fits)."""

FORMATS = ("PNG", "JPEG", "GIF", "TIFF", "BMP", "WEBP", "PPM")
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}

# Pillow's decoders raise many types on malformed files (OSError, ValueError, SyntaxError,
# struct.error, EOFError, TypeError, KeyError, ZeroDivisionError, ... by format and
# damage): whatever escapes while an image is decoded becomes one line naming the file.
_PILLOW_ERRORS = (Exception,)


def image_extensions() -> set[str]:
    """File name extensions (lower case, with the dot) of the formats read."""
    from PIL import Image

    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in FORMATS}


class _CStderr:
    """What a C library prints on file descriptor 2 while :meth:`capturing`, kept from the user's terminal."""

    def __init__(self) -> None:
        self.text = ""

    @contextlib.contextmanager
    def capturing(self, active: bool = True) -> Iterator[None]:
        saved = -1
        if active:
            try:
                if sys.stderr is not None:
                    sys.stderr.flush()
                tmp = tempfile.TemporaryFile()
                saved = os.dup(2)
                os.dup2(tmp.fileno(), 2)
            except (OSError, ValueError):  # no usable fd 2: nothing to protect
                saved = -1
        try:
            yield
        finally:
            if saved >= 0:
                os.dup2(saved, 2)
                os.close(saved)
                tmp.seek(0)
                self.text = tmp.read(4096).decode("utf-8", "replace")
                tmp.close()


def _check_size(width: int, height: int, path: Path) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise FFEdgeError(
            f"{path}: image is {width}x{height} ({width * height:,} pixels), above the limit of "
            f"{MAX_IMAGE_PIXELS:,} pixels (MAX_IMAGE_PIXELS): scale it down first"
        )
    if width < 1 or height < 1:
        raise FFEdgeError(f"{path}: image has no pixels ({width}x{height})")


def _palette_is_gray(im: Image.Image) -> bool:
    pal = im.getpalette("RGB") or []
    rgb = np.asarray(pal[: len(pal) // 3 * 3], dtype=np.uint8).reshape(-1, 3)
    return bool(np.all(rgb[:, 0] == rgb[:, 1]) and np.all(rgb[:, 1] == rgb[:, 2]))


def _auto_mode(im: Image.Image) -> str:
    """'L' for grayscale images (also palettes of greys), else 'RGB'."""
    return "L" if im.mode in _GRAY_MODES or (im.mode == "P" and _palette_is_gray(im)) else "RGB"


def _tiff_bits(im: Image.Image) -> int | None:
    tags = getattr(im, "tag_v2", None)
    bits = tags.get(258) if tags is not None else None
    if isinstance(bits, tuple):
        bits = bits[0] if bits else None
    return bits if isinstance(bits, int) and 1 <= bits <= 16 else None


def _wide_to_uint8(a: np.ndarray, mode: str, bits: int | None, path: Path) -> np.ndarray:
    """A 16-bit, 32-bit integer or float single-channel image -> uint8, by the module's rule."""
    if mode == "F" and not np.all(np.isfinite(a)):
        raise FFEdgeError(f"{path}: image contains NaN or infinite values")
    lo, hi = float(a.min()), float(a.max())
    if mode.startswith("I;16"):
        top = 2 ** (bits or 16) - 1
    elif lo < 0 or hi > 65535:
        kind = "float" if mode == "F" else "32-bit integer"
        raise FFEdgeError(
            f"{path}: {kind} pixel values {lo:g}..{hi:g} are outside 0..65535: store 0..1, 0..255 or 0..65535"
        )
    else:
        top = 1 if mode == "F" and hi <= 1 else 255 if hi <= 255 else 65535
    if lo < 0 or hi > top:
        raise FFEdgeError(f"{path}: pixel values {lo:g}..{hi:g} exceed the {bits or 16}-bit range 0..{top}")
    if mode == "F":
        return np.rint(a.astype(np.float32) * np.float32(255 / top)).astype(np.uint8)
    # Integers: round(v * 255 / top) exactly (top is odd, so there are no ties), in 32 bits.
    return ((a.astype(np.uint32) * 255 + top // 2) // top).astype(np.uint8)


def _pixels(im: Image.Image, mode: str, bits: int | None, path: Path) -> np.ndarray:
    """A loaded image in ``mode`` ('L' or 'RGB') as uint8 HWC (Pillow errors propagate)."""
    if im.mode in _WIDE_MODES:
        grey = _wide_to_uint8(np.asarray(im), im.mode, bits, path)[..., None]
        return grey if mode == "L" else np.repeat(grey, 3, axis=2)
    a = np.asarray(im if im.mode == mode else im.convert(mode))
    return a.reshape(a.shape[0], a.shape[1], 1 if mode == "L" else 3)


def decode_image(path: Path, mode: str | None = None) -> np.ndarray:
    """One image file -> uint8 HWC in ``mode`` ('L', 'RGB', or None for the image's own: see ``_auto_mode``)."""
    from PIL import Image, ImageOps

    if mode not in (None, "L", "RGB"):
        raise ValueError(f"mode must be 'L' or 'RGB', got {mode!r}")
    with open_regular(path) as f:
        lib = _CStderr()
        try:
            with warnings.catch_warnings():
                # Never a stray line on stderr ("corrupt EXIF", Pillow's bomb warning: the size is checked below).
                warnings.simplefilter("ignore")
                with Image.open(f, formats=FORMATS) as im:
                    _check_size(im.width, im.height, path)
                    with lib.capturing(im.format == "TIFF"):  # libtiff prints its errors on stderr
                        im.load()
                    _check_size(im.width, im.height, path)  # some formats pick their size on load
                    upright = ImageOps.exif_transpose(im)  # a copy: without the TIFF tags
                    return _pixels(upright, mode or _auto_mode(upright), _tiff_bits(im), path)
        except FFEdgeError:
            raise
        except Image.DecompressionBombError:  # Pillow's own limit, above ours
            raise FFEdgeError(
                f"{path}: image is above the limit of {MAX_IMAGE_PIXELS:,} pixels (MAX_IMAGE_PIXELS)"
            ) from None
        except Image.UnidentifiedImageError:
            raise FFEdgeError(
                f"cannot read image {path}: not a {', '.join(FORMATS[:-1])} or {FORMATS[-1]} file"
            ) from None
        except _PILLOW_ERRORS as e:
            why = f"{printable(lib.text)} (libtiff)" if lib.text else f"{reason(e)} ({type(e).__name__})"
            raise FFEdgeError(f"cannot read image {path}: {why}") from None


def load_images(paths: list[Path], size: tuple[int, int] | None = None, mode: str | None = None) -> np.ndarray:
    """Read image files into uint8 NHWC.

    ``size`` (H, W) resizes (bilinear); without it all images must share the first
    one's size. ``mode`` 'L' or 'RGB'; by default the first image's ('L' if it is
    grayscale, else 'RGB').
    """
    if not paths:
        raise FFEdgeError("no images to load")
    out: np.ndarray | None = None
    for i, p in enumerate(paths):
        img = decode_image(Path(p), mode)
        if size is not None:
            img = resize_images(img[None], size)[0]
        if out is None:
            mode = "L" if img.shape[2] == 1 else "RGB"
            need = len(paths) * img.size
            if need > MAX_ARRAY_BYTES:
                raise FFEdgeError(
                    f"{len(paths)} images of {img.shape[0]}x{img.shape[1]} need {need:,} bytes, above the "
                    f"{MAX_ARRAY_BYTES:,}-byte limit: pass an image size to resize them"
                )
            out = np.empty((len(paths), *img.shape), dtype=np.uint8)
        elif img.shape[:2] != out.shape[1:3]:
            raise FFEdgeError(
                f"folder: {p} is {img.shape[0]}x{img.shape[1]} but {paths[0]} is {out.shape[1]}x{out.shape[2]} (HxW): "
                f"pass an image size to resize all images"
            )
        out[i] = img
    assert out is not None
    return out
