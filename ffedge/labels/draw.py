"""Pictures of label encodings (``ffedge labels``): what the network actually sees.

The sheet has two sections, each a grid with one tile per class after a
"neutral" tile: first the label itself (Fourier gratings, one-hot label
pixels, or morphological structuring elements), then one test image encoded
with every label (Fourier channel mode: the image and the label channel side
by side). Values are mapped linearly to grey levels (RGB for 3-channel
inputs; channel 0 for other channel counts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ffedge.errors import FFEdgeError
from ffedge.fsutil import atomic_write_with
from ffedge.labels import LabelEncoding, make_encoding

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
FRAME = (150, 150, 150)  # outline around each tile, so white pixels at an edge stay visible
PAD = 6  # pixels around each tile
FONT_SIZE = 11
Tile = tuple[np.ndarray, str]  # (uint8 [h, w, 3], caption)


def _font(size: int = FONT_SIZE) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # old pillow or no FreeType: the bitmap font
        return ImageFont.load_default()


def to_rgb(chw: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """[C, h, w] floats -> uint8 [h, w, 3], mapping [lo, hi] to [0, 255]; C=3 as RGB, else channel 0."""
    span = hi - lo if hi > lo else 1.0
    grey = np.clip((np.asarray(chw, dtype=np.float64) - lo) / span * 255.0, 0, 255).round().astype(np.uint8)
    if grey.shape[0] == 3:
        return np.ascontiguousarray(grey.transpose(1, 2, 0))
    return np.repeat(grey[0][:, :, None], 3, axis=2)


def _enlarge(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlarge by an integer factor."""
    return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)


def _fit(rgb: np.ndarray, box: tuple[int, int]) -> np.ndarray:
    """Enlarge ``rgb`` by the largest integer factor that fits ``box`` (h, w)."""
    h, w = rgb.shape[:2]
    return _enlarge(rgb, max(1, min(box[0] // h, box[1] // w)))


def _short(name: str, limit: int = 14) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "~"


def pattern_tiles(enc: LabelEncoding, names: Sequence[str]) -> tuple[list[Tile], str]:
    """Tiles showing each label by itself (neutral first, as the encoding pictures it) and a section heading."""
    pics, heading = enc.pictures()
    captions = ["neutral"] + [_short(n) for n in names]
    tiles = [(to_rgb(p.values, p.lo, p.hi), f"{cap}\n{p.note}" if p.note else cap) for p, cap in zip(pics, captions)]
    return tiles, heading


def encoded_tiles(enc: LabelEncoding, image: np.ndarray, names: Sequence[str]) -> list[Tile]:
    """Tiles of ``image`` ([C, H, W] normalized) with the neutral label and with every label."""
    x = image[None]
    stack = np.concatenate([enc.neutral(x), enc.encode_all(x)], axis=0)
    captions = ["neutral"] + [_short(n) for n in names]
    c = enc.image_shape[0]
    img = stack[:, :c]
    lo, hi = float(img.min()), float(img.max())
    tiles = []
    for i, cap in enumerate(captions):
        rgb = to_rgb(img[i], lo, hi)
        if enc.out_channels > c:  # label channel appended: show it beside the image
            a = getattr(enc, "amplitude", 1.0)
            label = to_rgb(stack[i, c:], -a, a)
            sep = np.full((rgb.shape[0], 1, 3), 255, dtype=np.uint8)
            rgb = np.concatenate([rgb, sep, label], axis=1)
        tiles.append((rgb, cap))
    return tiles


def _grid(sheet: Image.Image, tiles: list[Tile], top: int, cols: int, cell: tuple[int, int], tile_h: int) -> int:
    """Paste (already enlarged) tiles in a grid starting at y = ``top``; return the y below the grid."""
    draw = ImageDraw.Draw(sheet)
    font = _font()
    cw, ch = cell
    for n, (rgb, cap) in enumerate(tiles):
        r, col = divmod(n, cols)
        x0, y0 = PAD + col * cw, top + r * ch
        px, py = x0 + (cw - PAD - rgb.shape[1]) // 2, y0 + (tile_h - rgb.shape[0]) // 2
        sheet.paste(Image.fromarray(rgb), (px, py))
        draw.rectangle((px - 1, py - 1, px + rgb.shape[1], py + rgb.shape[0]), outline=FRAME)
        draw.multiline_text((x0, y0 + tile_h + 2), cap, fill=INK, font=font, spacing=1)
    rows = -(-len(tiles) // cols)
    return top + rows * ch


def label_sheet(
    enc: LabelEncoding,
    image: np.ndarray,
    class_names: Sequence[str] | None = None,
    title: str | None = None,
    scale: int = 4,
    cols: int | None = None,
) -> Image.Image:
    """Draw the label patterns and ``image`` (normalized [C, H, W]) encoded with every label."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(enc.num_classes)]
    if len(names) != enc.num_classes:
        raise FFEdgeError(f"{len(names)} class names for {enc.num_classes} classes")
    if scale < 1:
        raise FFEdgeError(f"scale must be >= 1, got {scale}")
    _, h, w = enc.image_shape
    pats, heading = pattern_tiles(enc, names)
    pats = [(_fit(t, (h * scale, w * scale)), cap) for t, cap in pats]
    coded = [(_enlarge(t, scale), cap) for t, cap in encoded_tiles(enc, image, names)]
    cols = cols or min(enc.num_classes + 1, 11)
    tiles = pats + coded
    font = _font()
    tile_w = max(t.shape[1] for t, _ in tiles)
    tile_h = max(t.shape[0] for t, _ in tiles)
    text_w = max(font.getlength(line) for _, cap in tiles for line in cap.split("\n"))
    cap_lines = max(cap.count("\n") + 1 for _, cap in tiles)
    cell = (int(max(tile_w, text_w, 40)) + 2 * PAD, tile_h + cap_lines * (FONT_SIZE + 2) + PAD + 4)
    rows_p, rows_c = -(-len(pats) // cols), -(-len(coded) // cols)
    head = FONT_SIZE + 10
    sheet = Image.new("RGB", (PAD + cols * cell[0], 2 * PAD + 3 * head + (rows_p + rows_c) * cell[1]), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    head_font = _font(FONT_SIZE + 1)
    y = PAD
    draw.text((PAD, y), title or f"{enc.name} label encoding, {enc.num_classes} classes", fill=INK, font=head_font)
    y += head
    draw.text((PAD, y), heading, fill=INK, font=head_font)
    y = _grid(sheet, pats, y + head, cols, cell, tile_h)
    side = " (left: image, right: label channel)" if enc.out_channels > enc.image_shape[0] else ""
    draw.text((PAD, y), f"one test image encoded with every label{side}", fill=INK, font=head_font)
    _grid(sheet, coded, y + head, cols, cell, tile_h)
    return sheet


def save_label_sheet(path: str | Path, sheet: Image.Image) -> Path:
    """Write the sheet as a PNG, atomically."""
    path = Path(path)
    atomic_write_with(path, lambda tmp: sheet.save(tmp, format="PNG"))
    return path


def write_dataset_label_sheet(
    dataset: str,
    encoding: str,
    out: str | Path,
    *,
    label_mode: str | None = None,
    data_dir: str | Path | None = None,
    index: int = 0,
    download: bool = True,
    scale: int = 4,
) -> Path:
    """Load ``dataset``, build ``encoding`` for it and draw test image ``index`` with every label to ``out``."""
    from ffedge.datasets import load_dataset  # lazy: only this command needs the loaders
    from ffedge.runtime.preprocess import compute_normalization, normalize

    params = {}
    if label_mode is not None:
        if encoding.strip().lower() != "fourier":
            raise FFEdgeError("--label-mode applies only to the fourier encoding")
        params["mode"] = label_mode
    if Path(out).suffix.lower() != ".png":
        raise FFEdgeError(f"--out must name a .png file, got {out}")
    ds = load_dataset(dataset, data_dir=data_dir, download=download)
    enc = make_encoding(encoding, ds.num_classes, ds.image_shape, **params)
    if not 0 <= index < len(ds.y_test):
        raise FFEdgeError(f"--index {index} is out of range: the test split has {len(ds.y_test)} images")
    mean, std = compute_normalization(ds.x_train)
    image = normalize(ds.x_test[index : index + 1], mean, std)[0]
    detail = enc.detail()
    mode = f" ({detail})" if detail else ""
    true = ds.classes[int(ds.y_test[index])]
    title = f"{dataset}: {enc.name}{mode} labels, {enc.num_classes} classes; test image #{index} is a '{true}'"
    return save_label_sheet(out, label_sheet(enc, image, ds.classes, title=title, scale=scale))
