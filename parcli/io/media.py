"""Writing pixels and tokens to files: PNG, JPEG and WebP images and grids, MP4 and GIF videos,
.npy tokens; every file through `atomic_write`, so none is ever left half-written."""

from __future__ import annotations

import errno
import importlib.util
import json
import math
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from parcli.config import CLIP_FPS
from parcli.io.files import (
    OutputError,
    PathLike,
    atomic_path,
    atomic_write,
    check_writable,
    file_sha256,
    is_directory_target,
)
from parcli.io.recipe import FILE_SHA256, RECIPE_KEY, sidecar_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
VIDEO_SUFFIXES = (".mp4", ".gif")
MACRO_BLOCK = 16  # libx264's yuv420p block side: MP4 frames are padded (never resized) to it


def _uint8(array, what: str = "images") -> np.ndarray:
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8, not {array.dtype}")
    return array


def save_image(path: PathLike, image: np.ndarray, recipe: str | None = None) -> Path:
    """Write one uint8 image as PNG, JPEG or WebP by its suffix; `recipe` in a PNG or beside."""
    from PIL import Image

    pixels = _uint8(image)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise OutputError(
            f"cannot write {target}: still images are {', '.join(IMAGE_SUFFIXES)} files"
        )
    kind = {".png": "PNG", ".webp": "WEBP"}.get(suffix, "JPEG")
    # JPEG and WebP at quality 95, near the eye's limit; PNG is the lossless choice.
    options: dict = {"format": kind} if kind == "PNG" else {"format": kind, "quality": 95}
    if kind == "JPEG" and pixels.ndim == 3:
        pixels = pixels[..., :3]
    if kind == "PNG" and recipe is not None:
        from PIL.PngImagePlugin import PngInfo

        options["pnginfo"] = PngInfo()
        options["pnginfo"].add_itxt(RECIPE_KEY, recipe)
    picture = Image.fromarray(np.ascontiguousarray(pixels))
    atomic_write(target, lambda tmp: picture.save(tmp, **options))
    return target if kind == "PNG" else _write_sidecar(target, recipe)


def _write_sidecar(path: Path, recipe: str | None) -> Path:
    """The recipe beside `path`, with the file's sha256 so that par can later prove it wrote the
    file; if it cannot be written, neither is the file it describes."""
    if recipe is not None:
        document = {**json.loads(recipe), FILE_SHA256: file_sha256(path)}
        text = json.dumps(document, ensure_ascii=False)
        try:
            atomic_write(sidecar_path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"))
        except BaseException:
            path.unlink(missing_ok=True)
            raise
    return path


def make_grid(images: np.ndarray | Sequence[np.ndarray], ncols: int | None = None, pad: int = 2):
    """Tile N images of one size into a near-square uint8 grid, `pad` black pixels between cells."""
    stack = _uint8(images)
    count, height, width = stack.shape[:3]
    cols = min(ncols or math.ceil(math.sqrt(count)), count)
    rows = math.ceil(count / cols)
    shape = (rows * height + (rows - 1) * pad, cols * width + (cols - 1) * pad) + stack.shape[3:]
    grid = np.zeros(shape, dtype=np.uint8)
    for index in range(count):
        top, left = (height + pad) * (index // cols), (width + pad) * (index % cols)
        grid[top : top + height, left : left + width] = stack[index]
    return grid


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def image_names(stems: Sequence[str], suffix: str = ".png") -> list[str]:
    """File names of a folder output: the stems made safe for any file system."""
    names = [(_UNSAFE.sub("_", stem).strip("._") or "sample") + suffix for stem in stems]
    if len(set(names)) != len(names):
        raise ValueError("file names must differ from one another")
    return names


def check_mp4_writer(target: PathLike, setting: str = "output", folder: bool = False) -> None:
    """Refuse, before any work, an MP4 (or a `folder` of them) where imageio-ffmpeg is missing."""
    mp4 = folder or Path(target).suffix.lower() == ".mp4"
    if mp4 and importlib.util.find_spec("imageio_ffmpeg") is None:
        what = f"MP4 clips into {target}" if folder else str(target)
        raise OutputError(
            f"cannot write {what}: MP4 needs imageio-ffmpeg, which is not installed; "
            "pip install imageio-ffmpeg, or write a .gif",
            setting,
        )


def save_samples(
    output: PathLike,
    samples: np.ndarray,
    names: Sequence[str] | None = None,
    video: bool = False,
    ncols: int | None = None,
    fps: float = CLIP_FPS,
    recipes: Sequence[str] | None = None,
) -> list[Path]:
    """Write images (N, H, W, C) or videos (N, T, H, W, C): one file each into a folder (with
    `recipes[i]`), or all of them as one grid into a file (with `recipes[0]`)."""
    recipes = recipes or [None] * len(samples)  # type: ignore[list-item]
    if not is_directory_target(output):
        if video:
            return [save_video(output, samples, fps, ncols=ncols, recipe=recipes[0])]
        return [save_image(output, make_grid(samples, ncols=ncols), recipes[0])]
    directory = check_writable(output, allow_directory=True)
    directory.mkdir(exist_ok=True)
    names = image_names(names, ".mp4" if video else ".png")
    files = zip(names, samples, recipes, strict=True)
    if video:
        return [save_video(directory / name, clip, fps, recipe=text) for name, clip, text in files]
    return [save_image(directory / name, image, text) for name, image, text in files]


def save_video(
    path: PathLike,
    frames: np.ndarray,
    fps: float = CLIP_FPS,
    *,
    ncols: int | None = None,
    pad: int = 2,
    recipe: str | None = None,
) -> Path:
    """Write (T, H, W[, C]) frames, or N videos (N, T, H, W, C) tiled, as an MP4 or a GIF."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise OutputError(
            f"cannot write {target}: unsupported video type {target.suffix or '(no suffix)'}; "
            f"use {' or '.join(VIDEO_SUFFIXES)}"
        )
    video = _uint8(frames, "frames")
    if video.ndim == 3:
        video = video[..., None]
    if video.ndim == 5:  # several videos of equal length: tile each frame into a grid
        video = np.stack([make_grid(video[:, t], ncols, pad) for t in range(video.shape[1])])
    video = np.repeat(video, 3, axis=3) if video.shape[3] == 1 else video[..., :3]
    if suffix == ".gif":
        from PIL import Image

        pictures = [Image.fromarray(frame) for frame in np.ascontiguousarray(video)]
        with atomic_path(target) as tmp:
            pictures[0].save(
                tmp, format="GIF", save_all=True, append_images=pictures[1:],
                duration=1000.0 / fps, loop=0,
            )  # fmt: skip
        return _write_sidecar(target, recipe)

    check_mp4_writer(target)
    import imageio_ffmpeg

    extra_h, extra_w = -video.shape[1] % MACRO_BLOCK, -video.shape[2] % MACRO_BLOCK
    video = np.ascontiguousarray(np.pad(video, ((0, 0), (0, extra_h), (0, extra_w), (0, 0))))
    with atomic_path(target) as tmp:
        writer = imageio_ffmpeg.write_frames(
            str(tmp), (video.shape[2], video.shape[1]), fps=fps, codec="libx264",
            pix_fmt_in="rgb24", pix_fmt_out="yuv420p", quality=8, macro_block_size=MACRO_BLOCK,
            ffmpeg_log_level="quiet",  # its failures are detected below and said in one line
        )  # fmt: skip
        writer.send(None)  # start ffmpeg
        try:
            for frame in video:
                writer.send(frame)
        finally:
            writer.close()
        # ffmpeg can fail to finish the file (a full disk) without the writer raising: count
        # the frames of what it wrote, so that a damaged video never gets the final name.
        try:
            count, _ = imageio_ffmpeg.count_frames_and_secs(str(tmp))
        except (RuntimeError, OSError, ValueError):
            count = -1
        if count != len(video):
            full = shutil.disk_usage(tmp.parent).free < (1 << 20)
            why = "no space left on the device" if full else "its output is incomplete"
            raise OSError(errno.ENOSPC if full else errno.EIO, f"ffmpeg could not finish ({why})")
    return _write_sidecar(target, recipe)


def save_tokens(path: PathLike, tokens: np.ndarray) -> Path:
    """Write an integer token array as ``.npy``, atomically."""
    target = Path(path)
    if target.suffix.lower() != ".npy":
        raise OutputError(f"cannot write {target}: token files must end in .npy")
    array = np.asarray(tokens)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"tokens must be integers, not {array.dtype}")
    # A handle: np.save would add .npy to a name in .NPY.
    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)
    return target
