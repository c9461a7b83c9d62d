"""Writing pixels and tokens to files: PNG images and grids, MP4 and GIF videos, .npy tokens.

Every file goes through `parcli.io.files.atomic_write`, so none is ever left half-written.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from parcli.config import CLIP_FPS
from parcli.io.files import (
    OutputError,
    PathLike,
    atomic_write,
    check_writable,
    file_sha256,
    is_directory_target,
)
from parcli.io.recipe import FILE_SHA256, RECIPE_KEY, sidecar_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
LOSSY_QUALITY = 95  # JPEG and WebP: near the eye's limit; PNG is the lossless choice
VIDEO_SUFFIXES = (".mp4", ".gif")
TOKEN_SUFFIXES = (".npy",)


# The recipe (JSON text) of the file that holds the given samples, by their number in the run.
Describe = Callable[[list[int]], str]

# libx264 with yuv420p works on 16x16 macroblocks; frames are padded (never resized) to this.
MACRO_BLOCK = 16


def _as_image(image: np.ndarray) -> np.ndarray:
    """Check a uint8 image and return it as HxW (grayscale) or HxWx3/4."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"images must be uint8, not {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4)):
        return np.ascontiguousarray(array)
    raise ValueError(f"expected an HxW or HxWxC image with C in 1, 3, 4; got shape {array.shape}")


def save_png(path: PathLike, image: np.ndarray, recipe: str | None = None) -> Path:
    """Write one uint8 image (HxW, HxWx1, HxWx3 or HxWx4) as PNG, atomically."""
    if Path(path).suffix.lower() != ".png":
        raise OutputError(f"cannot write {path}: expected a .png file name")
    return save_image(path, image, recipe)


def save_image(path: PathLike, image: np.ndarray, recipe: str | None = None) -> Path:
    """Write one uint8 image as PNG, JPEG or WebP by its suffix, atomically; a `recipe` goes
    into a PNG's text chunk, and beside any other file."""
    from PIL import Image

    pixels = _as_image(image)
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise OutputError(
            f"cannot write {target}: still images are {', '.join(IMAGE_SUFFIXES)} files"
        )
    if suffix in (".jpg", ".jpeg") and pixels.ndim == 3 and pixels.shape[2] == 4:
        pixels = np.ascontiguousarray(pixels[..., :3])
    picture = Image.fromarray(pixels)
    if suffix == ".png":
        options: dict = {"format": "PNG"}
        if recipe is not None:
            from PIL.PngImagePlugin import PngInfo

            options["pnginfo"] = PngInfo()
            options["pnginfo"].add_itxt(RECIPE_KEY, recipe)
        return atomic_write(target, lambda tmp: picture.save(tmp, **options))
    kind = "JPEG" if suffix in (".jpg", ".jpeg") else "WEBP"
    atomic_write(target, lambda tmp: picture.save(tmp, format=kind, quality=LOSSY_QUALITY))
    return _write_sidecar(target, recipe)


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


def make_grid(
    images: np.ndarray | Sequence[np.ndarray],
    ncols: int | None = None,
    pad: int = 2,
    pad_value: int | Sequence[int] = 0,
) -> np.ndarray:
    """Tile N images of one size into a near-square grid (uint8), ``pad`` pixels between cells
    and no outer border."""
    stack = np.asarray(images)
    if stack.dtype != np.uint8:
        raise ValueError(f"images must be uint8, not {stack.dtype}")
    if stack.ndim not in (3, 4) or stack.shape[0] == 0:
        raise ValueError(f"expected (N, H, W[, C]) images with N >= 1; got shape {stack.shape}")
    if pad < 0:
        raise ValueError("pad must be >= 0")
    count, height, width = stack.shape[:3]
    cols = ncols if ncols is not None else math.ceil(math.sqrt(count))
    if cols < 1:
        raise ValueError("ncols must be >= 1")
    cols = min(cols, count)
    rows = math.ceil(count / cols)
    shape = (rows * height + (rows - 1) * pad, cols * width + (cols - 1) * pad) + stack.shape[3:]
    grid = np.empty(shape, dtype=np.uint8)
    grid[...] = np.asarray(pad_value, dtype=np.uint8)
    for index in range(count):
        row, col = divmod(index, cols)
        top, left = row * (height + pad), col * (width + pad)
        grid[top : top + height, left : left + width] = stack[index]
    return grid


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def image_names(stems: Sequence[str] | None, count: int, suffix: str = ".png") -> list[str]:
    """File names of a folder output: the stems made safe for any file system, or, without
    stems, a zero-padded index that sorts in generation order."""
    if stems is None:
        width = max(4, len(str(count - 1)))
        return [f"{index:0{width}d}{suffix}" for index in range(count)]
    if len(stems) != count:
        raise ValueError(f"got {len(stems)} names for {count} images")
    names = [(_UNSAFE.sub("_", stem).strip("._") or "sample") + suffix for stem in stems]
    if len(set(names)) != count:
        raise ValueError("file names must differ from one another")
    return names


def _make_directory(output: PathLike) -> Path:
    directory = check_writable(output, allow_directory=True)
    try:
        directory.mkdir(exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise OutputError(f"cannot create directory {directory}: {reason}", "output") from exc
    return directory


def check_output_kind(output: PathLike, video: bool, maker: str = "the model") -> None:
    """Refuse a video file for images and an image file for videos; a folder takes either."""
    if is_directory_target(output):
        return
    suffixes = VIDEO_SUFFIXES if video else IMAGE_SUFFIXES
    suffix = Path(output).suffix.lower()
    if suffix not in suffixes:
        kind = "videos" if video else "images"
        hint = ""
        if not video and suffix in VIDEO_SUFFIXES:
            hint = f" (--animate {Path(output).name} animates how they are generated)"
        raise OutputError(
            f"{maker} makes {kind}; write them to a {' or '.join(suffixes)} file or a folder, "
            f"not {output}{hint}",
            "output",
        )


def check_mp4_writer(target: PathLike, setting: str = "output", folder: bool = False) -> None:
    """Refuse, before anything is generated, an MP4 (or a `folder` of them) when imageio-ffmpeg,
    which an install without dependencies lacks, is missing."""
    if not folder and Path(target).suffix.lower() != ".mp4":
        return
    if mp4_writer_installed():
        return
    what = f"MP4 clips into {target}" if folder else str(target)
    raise OutputError(
        f"cannot write {what}: MP4 needs imageio-ffmpeg, which is not installed; "
        "pip install imageio-ffmpeg, or write a .gif",
        setting,
    )


def mp4_writer_installed() -> bool:
    return importlib.util.find_spec("imageio_ffmpeg") is not None


def enlarge(pixels: np.ndarray, scale: int) -> np.ndarray:
    """Images (..., H, W, C) with every pixel repeated `scale` times each way."""
    return pixels.repeat(scale, axis=-3).repeat(scale, axis=-2) if scale > 1 else pixels


def save_samples(
    output: PathLike,
    samples: np.ndarray,
    names: Sequence[str],
    video: bool,
    ncols: int | None = None,
    fps: float = CLIP_FPS,
    describe: Describe | None = None,
) -> list[Path]:
    """Write generated images (N, H, W, C) or videos (N, T, H, W, C): one file each into a folder,
    or all of them as one grid into a file."""
    if not video:
        return save_images(output, samples, names, ncols=ncols, describe=describe)
    if is_directory_target(output):
        directory = _make_directory(output)
        named = enumerate(image_names(names, len(samples), ".mp4"))
        return [
            save_video(directory / name, samples[i], fps, recipe=_recipe(describe, [i]))
            for i, name in named
        ]
    recipe = _recipe(describe, list(range(len(samples))))
    return [save_video(output, samples, fps, ncols=ncols, recipe=recipe)]


def _recipe(describe: Describe | None, numbers: list[int]) -> str | None:
    return describe(numbers) if describe is not None else None


def save_images(
    output: PathLike,
    images: np.ndarray | Sequence[np.ndarray],
    names: Sequence[str] | None = None,
    *,
    ncols: int | None = None,
    pad: int = 2,
    describe: Describe | None = None,
) -> list[Path]:
    """Write generated images, one PNG each into a folder or as one grid into a file; return the
    paths written."""
    stack = [np.asarray(image) for image in images]
    if not stack:
        raise ValueError("no images to save")
    if is_directory_target(output):
        directory = _make_directory(output)
        named = enumerate(image_names(names, len(stack)))
        return [save_png(directory / name, stack[i], _recipe(describe, [i])) for i, name in named]
    target = check_writable(output, IMAGE_SUFFIXES)
    recipe = _recipe(describe, list(range(len(stack))))
    if len(stack) == 1:
        return [save_image(target, stack[0], recipe)]
    squeezed = np.stack([_as_image(image) for image in stack])
    return [save_image(target, make_grid(squeezed, ncols=ncols, pad=pad), recipe)]


def _pad_to_multiple(frames: np.ndarray, multiple: int) -> np.ndarray:
    """Pad (T, H, W, C) frames with black at the bottom and right to sides divisible by multiple."""
    height, width = frames.shape[1:3]
    extra_h, extra_w = -height % multiple, -width % multiple
    if not (extra_h or extra_w):
        return frames
    return np.pad(frames, ((0, 0), (0, extra_h), (0, extra_w), (0, 0)))


def _as_frames(frames: np.ndarray, ncols: int | None, pad: int) -> np.ndarray:
    """(T, H, W[, C]) or (N, T, H, W, C) uint8 -> (T, H', W', C) with C in 1, 3, 4."""
    array = np.asarray(frames)
    if array.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, not {array.dtype}")
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim == 5:  # several videos of equal length: tile each frame into a grid
        array = np.stack(
            [make_grid(array[:, t], ncols=ncols, pad=pad) for t in range(array.shape[1])]
        )
    if array.ndim != 4 or array.shape[0] == 0 or array.shape[3] not in (1, 3, 4):
        raise ValueError(
            f"expected (T, H, W, C) or (N, T, H, W, C) frames with T >= 1, C in 1, 3, 4; "
            f"got shape {np.asarray(frames).shape}"
        )
    return array


def save_video(
    path: PathLike,
    frames: np.ndarray,
    fps: float = CLIP_FPS,
    *,
    ncols: int | None = None,
    pad: int = 2,
    recipe: str | None = None,
) -> Path:
    """Write (T, H, W, C) frames, or N videos tiled into one grid per frame, as an MP4 or an
    animated GIF, atomically; MP4 frames are padded rather than resampled to macroblock sides."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise OutputError(
            f"cannot write {target}: unsupported video type {target.suffix or '(no suffix)'}; "
            f"use {' or '.join(VIDEO_SUFFIXES)}"
        )
    if not fps > 0:
        raise ValueError(f"fps must be positive, not {fps}")
    video = _as_frames(frames, ncols, pad)
    if video.shape[3] == 1:
        video = np.repeat(video, 3, axis=3)
    elif video.shape[3] == 4:
        video = video[..., :3]
    video = np.ascontiguousarray(video)

    if suffix == ".gif":
        from PIL import Image

        frames = [Image.fromarray(frame) for frame in video]

        def write_gif(tmp: Path) -> None:
            frames[0].save(
                tmp, format="GIF", save_all=True, append_images=frames[1:],
                duration=1000.0 / fps, loop=0,
            )  # fmt: skip

        return _write_sidecar(atomic_write(target, write_gif), recipe)

    check_mp4_writer(target)
    import imageio_ffmpeg

    video = np.ascontiguousarray(_pad_to_multiple(video, MACRO_BLOCK))
    height, width = video.shape[1:3]

    def write_mp4(tmp: Path) -> None:
        writer = imageio_ffmpeg.write_frames(
            str(tmp),
            (width, height),
            fps=fps,
            codec="libx264",
            pix_fmt_in="rgb24",
            pix_fmt_out="yuv420p",
            quality=8,
            macro_block_size=MACRO_BLOCK,
            ffmpeg_log_level="quiet",  # its failures are detected below and said in one line
        )
        writer.send(None)  # start ffmpeg
        try:
            for frame in video:
                writer.send(frame)
        finally:
            writer.close()
        # ffmpeg can fail to finish the file (a full disk) without the writer raising: count
        # the frames of what it wrote, so that a damaged video never gets the final name.
        try:
            frames, _ = imageio_ffmpeg.count_frames_and_secs(str(tmp))
        except (RuntimeError, OSError, ValueError):
            frames = -1
        if frames != len(video):
            full = _disk_full(tmp)
            why = "no space left on the device" if full else "its output is incomplete"
            raise OSError(errno.ENOSPC if full else errno.EIO, f"ffmpeg could not finish ({why})")

    return _write_sidecar(atomic_write(target, write_mp4), recipe)


def save_tokens(path: PathLike, tokens: np.ndarray) -> Path:
    """Write an integer token array as ``.npy``, atomically."""
    target = Path(path)
    if target.suffix.lower() != ".npy":
        raise OutputError(f"cannot write {target}: token files must end in .npy")
    array = np.asarray(tokens)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"tokens must be integers, not {array.dtype}")

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)

    return atomic_write(target, write)


def _disk_full(path: Path) -> bool:
    import shutil

    return shutil.disk_usage(path.parent).free < (1 << 20)
