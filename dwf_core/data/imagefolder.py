"""Reader for zip archives of class folders of images (optionally under train/, val/, test/)."""

from __future__ import annotations

import io
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dwf_core.data.common import Array, ByteBudget, DataLimits, RawDataset, check_counts
from dwf_core.data.safety import check_zip, open_zip
from dwf_core.errors import DatasetError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
# Only these decoders may run on user bytes, whatever the extension claims.
PIL_FORMATS = ["PNG", "JPEG", "BMP", "GIF"]
SPLIT_DIRS = ("train", "val", "test")
_GREY_MODES = {"1", "L", "LA", "La"}
_COLOUR_MODES = {"RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}


@dataclass(frozen=True)
class _Entry:
    """One image member: its split (None = unsplit), class folder and zip entry."""

    split: str | None
    label: str
    info: zipfile.ZipInfo


def _is_junk(name: str) -> bool:
    """Hidden files and macOS metadata that zip tools add, never part of the dataset."""
    parts = name.split("/")
    return parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts if p)


def is_image_name(name: str) -> bool:
    """True for a non-junk member whose extension is an accepted image type."""
    return name.lower().endswith(IMAGE_EXTENSIONS) and not _is_junk(name)


def _layout(infos: list[zipfile.ZipInfo], archive: str) -> list[_Entry]:
    """Find the class (and split) folder of every image, stripping one wrapping top folder."""
    images = [i for i in infos if not i.is_dir() and is_image_name(i.filename)]
    if not images:
        raise DatasetError(
            f"{archive}: no images ({', '.join(IMAGE_EXTENSIONS)}); expected <class>/<image> members",
            code="bad_layout",
            param=archive,
        )
    paths = [[p for p in i.filename.replace("\\", "/").split("/") if p] for i in images]
    tops = {p[0] for p in paths}
    if len(tops) == 1 and next(iter(tops)).lower() not in SPLIT_DIRS and all(len(p) >= 3 for p in paths):
        paths = [p[1:] for p in paths]
    split_layout = all(len(p) == 3 and p[0].lower() in SPLIT_DIRS for p in paths)
    depth = 3 if split_layout else 2
    entries = []
    for info, parts in zip(images, paths, strict=True):
        if len(parts) != depth:
            raise DatasetError(
                f"{archive}: image {info.filename!r} is not directly inside a class folder; expected "
                "<class>/<image> or <train|val|test>/<class>/<image> (optionally under one top folder)",
                code="bad_layout",
                param=info.filename,
            )
        split = parts[0].lower() if split_layout else None
        entries.append(_Entry(split, parts[-2], info))
    if split_layout and not any(e.split == "train" for e in entries):
        raise DatasetError(
            f"{archive}: split folders found but no train/ folder with images",
            code="empty_split",
            param="train",
        )
    return entries


def _decode(data: bytes, name: str, size: tuple[int, int] | None, limits: DataLimits) -> tuple[Array, bool]:
    """Decode one image to uint8 (H,W) grey or (H,W,3) colour; the flag says whether it is colour."""
    try:
        with Image.open(io.BytesIO(data), formats=PIL_FORMATS) as img:
            # Image.open only parses the header, so size checks run before any pixels are decoded.
            w, h = img.size
            check_counts(1, w * h, limits, name)
            if size is not None and (w, h) != size:
                raise DatasetError(
                    f"{name}: image is {w}x{h}; expected {size[0]}x{size[1]} like the first image",
                    code="shape_mismatch",
                    param=name,
                )
            mode = img.mode
            if mode in _GREY_MODES:
                return np.asarray(img.convert("L")), False
            if mode.startswith("I;16"):
                # 16-bit grey: keep the high byte so values land in 0..255 like every other image.
                return (np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8), False
            if mode in ("P", "PA"):
                rgb = np.asarray(img.convert("RGB"))
                grey = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
                return (rgb[..., 0].copy(), False) if grey else (rgb, True)
            if mode in _COLOUR_MODES:
                return np.asarray(img.convert("RGB")), True
    except Image.DecompressionBombError as exc:
        raise DatasetError(f"{name}: {exc}", code="too_large", param=name) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, zlib.error) as exc:
        raise DatasetError(
            f"{name}: cannot decode image ({exc}); expected a valid {'/'.join(PIL_FORMATS)} file",
            code="corrupt_file",
            param=name,
        ) from exc
    raise DatasetError(
        f"{name}: image mode {mode!r} is not supported; expected greyscale, palette or RGB(A)",
        code="unsupported_format",
        param=name,
    )


def read_imagefolder(path: Path, limits: DataLimits, budget: ByteBudget) -> RawDataset:
    """Read a zip of class folders of images into uint8 (N, C, H, W) arrays per split."""
    with open_zip(path, limits) as zf:
        infos = check_zip(zf, limits, path.name)
        entries = _layout(infos, path.name)
        check_counts(len(entries), 0, limits, path.name)
        class_names = sorted({e.label for e in entries})
        index = {c: i for i, c in enumerate(class_names)}
        pixels: list[Array] = []
        colour: list[bool] = []
        size: tuple[int, int] | None = None
        for entry in entries:
            budget.take(entry.info.file_size, entry.info.filename)
            try:
                data = zf.read(entry.info)
            except (zipfile.BadZipFile, OSError, zlib.error, EOFError) as exc:
                raise DatasetError(
                    f"{entry.info.filename}: cannot read member ({exc})",
                    code="corrupt_file",
                    param=entry.info.filename,
                ) from exc
            arr, is_colour = _decode(data, entry.info.filename, size, limits)
            size = (arr.shape[1], arr.shape[0])
            pixels.append(arr)
            colour.append(is_colour)
    # All images share one mode: RGB as soon as one is colour, else single-channel L.
    channels = 3 if any(colour) else 1
    h, w = pixels[0].shape[:2]
    check_counts(len(pixels), channels * h * w, limits, path.name)
    budget.take(len(pixels) * channels * h * w, path.name)
    x = np.empty((len(pixels), channels, h, w), dtype=np.uint8)
    for i, (arr, is_colour) in enumerate(zip(pixels, colour, strict=True)):
        x[i] = arr.transpose(2, 0, 1) if is_colour else arr[None]
    y = np.array([index[e.label] for e in entries], dtype=np.int64)
    raw = RawDataset(fmt="imagefolder-zip", x={}, y={}, class_names=class_names)
    splits = [e.split for e in entries]
    if splits[0] is None:
        raw.x["train"], raw.y["train"] = x, y
        raw.params = {"x_train": path.name, "y_train": path.name}
        return raw
    tags = np.array(splits)
    for split in SPLIT_DIRS:
        mask = tags == split
        if mask.any():
            raw.x[split], raw.y[split] = x[mask], y[mask]
    raw.params = {f"{k}_{s}": f"{s}/" for s in SPLIT_DIRS for k in "xy"}
    return raw
