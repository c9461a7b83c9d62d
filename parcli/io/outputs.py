"""Where `par generate` puts a run: its targets checked first, each file with its recipe."""

from __future__ import annotations

import contextlib
import json
import stat
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from parcli.config import ANIMATION_FPS, CLIP_FPS
from parcli.errors import SettingError, Terminated
from parcli.io.classes import class_slug
from parcli.io.files import (
    OutputError,
    atomic_write,
    check_writable,
    free_bytes,
    is_directory_target,
)
from parcli.io.media import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    check_mp4_writer,
    image_names,
    make_grid,
    save_samples,
    save_tokens,
    save_video,
)
from parcli.io.recipe import Recipe, Sample, earlier_outputs, sidecar_path
from parcli.plan import Plan


@dataclass(frozen=True)
class Outputs:
    """The files one run writes: `output` (a file, or a folder when it ends in '/'), and
    optionally an animation of the passes, the token ids and a manifest of the whole run."""

    output: str | None = None  # None: generated.png / generated.mp4
    animate: Path | None = None
    tokens: Path | None = None
    manifest: Path | None = None
    overwrite: bool = False
    scale: int = 1
    fps: float | None = None

    def __post_init__(self) -> None:
        """Refuse, before any work, a target that cannot be written."""
        if self.output is not None:
            check_writable(self.output, IMAGE_SUFFIXES + VIDEO_SUFFIXES, allow_directory=True)
        if self.animate is not None:
            check_writable(self.animate, VIDEO_SUFFIXES, setting="animate")
            check_mp4_writer(self.animate, setting="animate")
        if self.tokens is not None:
            check_writable(self.tokens, (".npy",), setting="save_tokens")
        if self.manifest is not None:
            check_writable(self.manifest, (".json",), setting="manifest")

    def target(self, video: bool) -> str:
        return self.output or ("generated.mp4" if video else "generated.png")

    @property
    def folder(self) -> bool:
        return self.output is not None and is_directory_target(self.output)

    def prepare(self, recipe: Recipe, video: bool, maker: str, sample_bytes: int = 0) -> list[int]:
        """Check the target before any work, delete the files `--overwrite` replaces, and return
        the samples to make (into a folder, those not written yet: the same command finishes a run
        cut short). A file par cannot prove it wrote is never replaced."""
        target, samples = self.target(video), list(recipe.samples)
        old, todo, folder = [], list(range(len(samples))), Path(target)
        if video:
            check_mp4_writer(target, folder=self.folder)
        suffixes = VIDEO_SUFFIXES if video else IMAGE_SUFFIXES
        if not self.folder and folder.suffix.lower() not in suffixes:
            hint = ""
            if not video and folder.suffix.lower() in VIDEO_SUFFIXES:
                hint = f" (--animate {folder.name} animates how they are generated)"
            raise OutputError(
                f"{maker} makes {'videos' if video else 'images'}; write them to a "
                f"{' or '.join(suffixes)} file or a folder, not {target}{hint}",
                "output",
            )
        if not self.folder and folder.exists() and not folder.stat().st_mode & stat.S_IWUSR:
            raise SettingError("output", f"{target} is read-only; choose another name")
        if self.folder:
            names = image_names(sample_stems(samples), ".mp4" if video else ".png")
            done, ours = [], earlier_outputs(folder)
            for number, name in enumerate(names):
                path = folder / name
                for each in (path, sidecar_path(path)) if video else (path,):
                    if each.exists() and each not in ours:
                        raise SettingError(
                            "output",
                            f"{each} is there and par cannot tell it wrote it; choose another "
                            "folder, or move that file",
                        )
                made = ours.get(path)  # each file read once, above
                if made is not None and made.same_run(replace(recipe, samples=(samples[number],))):
                    done.append(number)
            kept = {folder / names[n] for n in done}
            old = sorted(set(ours) - kept - {sidecar_path(path) for path in kept})
            if old and not self.overwrite:
                shown = ", ".join(path.name for path in old[:2]) + (", ..." if len(old) > 2 else "")
                raise SettingError(
                    "output",
                    f"{target} holds {len(old)} files of an earlier run ({shown}); choose an "
                    "empty folder, or --overwrite to replace them",
                )
            if self.animate is None and self.tokens is None:  # else every sample is made again
                todo = [n for n in todo if n not in set(done)]
        # Refused before any work: files whose uncompressed pixels would not fit the disk.
        needed = len(todo) * sample_bytes * self.scale**2
        free = free_bytes(target if self.folder else folder.parent)
        if needed > free:
            raise SettingError(
                "output",
                f"the samples need up to {needed / 1e9:.2f} GB but {target} has "
                f"{free / 1e9:.2f} GB free; make fewer or smaller samples, or write elsewhere",
            )
        for path in old:  # only with --overwrite: the run was refused otherwise
            path.unlink(missing_ok=True)
        return todo

    def _enlarged(self, pixels: np.ndarray) -> np.ndarray:
        """Images (..., H, W, C) with every pixel repeated `scale` times each way."""
        if self.scale == 1:
            return pixels
        return pixels.repeat(self.scale, axis=-3).repeat(self.scale, axis=-2)

    def write_batch(
        self, recipe: Recipe, stems: list[str], numbers: list[int], pixels: np.ndarray
    ) -> list[Path]:
        """Into a folder: the files of samples `numbers`, as their batch ends."""
        recipes = [replace(recipe, samples=(recipe.samples[n],)).to_json() for n in numbers]
        return save_samples(
            self.output, self._enlarged(pixels), [stems[n] for n in numbers], pixels.ndim == 5,
            None, self.fps or CLIP_FPS, recipes,
        )  # fmt: skip

    def finish(
        self,
        recipe: Recipe,
        tokens: np.ndarray | None,
        pixels: np.ndarray | None,
        plan: Plan,
        seconds: float,
    ) -> int:
        """Every file but a folder's samples; returns the animation's frame count."""
        video, target = len(plan.grid) == 3, self.target(len(plan.grid) == 3)
        if self.tokens is not None:
            save_tokens(self.tokens, tokens)
        if pixels is not None:
            pixels = self._enlarged(pixels)
        if not self.folder:
            fps = self.fps or CLIP_FPS
            save_samples(target, pixels, None, video, recipe.columns, fps, [recipe.to_json()])
        animation = []
        if self.animate is not None:
            animation = animation_frames(pixels, plan, recipe.columns)
            save_video(self.animate, animation, self.fps or ANIMATION_FPS, recipe=recipe.to_json())
        if self.manifest is not None:
            names = image_names(sample_stems(list(recipe.samples)), ".mp4" if video else ".png")
            files = [str(Path(target) / name) for name in names] if self.folder else [target]
            document = {
                "recipe": recipe.to_dict(),
                "files": files,
                "passes_per_sample": plan.num_passes,
                "seconds": round(seconds, 4),
            }
            text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
            atomic_write(self.manifest, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        return len(animation)


@contextlib.contextmanager
def counted_on_interruption(output: str, stems: list[str], video: bool):
    """Ctrl-C or SIGTERM while a folder fills: say how many files are complete, then stop."""
    try:
        yield
    except (KeyboardInterrupt, Terminated) as exc:
        if not is_directory_target(output):
            raise
        names = image_names(stems, ".mp4" if video else ".png")
        done = sum((Path(output) / name).is_file() for name in names)
        word, code = ("terminated", 143) if isinstance(exc, Terminated) else ("interrupted", 130)
        more = "; the same command makes the rest" if done < len(names) else ""
        print(f"{word}: {done} of {len(names)} files written to {output}{more}", file=sys.stderr)
        raise SystemExit(code) from None


def sample_stems(samples: list[Sample]) -> list[str]:
    """File names of a run's samples: class id, class name, and the sample's number within its
    class over the whole run ("207-golden-retriever-s0000"), so repeated classes never collide."""
    seen: dict[int, int] = {}
    stems = []
    for sample in samples:
        label = sample.class_id
        number = seen[label] = seen.get(label, -1) + 1
        slug = class_slug(sample.class_name, label)
        stems.append("-".join([str(label), *([slug] if slug else []), f"s{number:04d}"]))
    return stems


# `--animate`: one frame per forward pass. A token never changes once drawn, so the frames are
# masks of the final pixels built from the plan alone: the decode loop is untouched and the
# tokens cannot differ from a run without `--animate`.
MAX_FRAMES = 120
GRAY = 128


def revealed_cells(plan: Plan, passes: np.ndarray) -> np.ndarray:
    """(len(passes), *grid) bool: the raster cells whose token exists after each pass."""
    ends = np.array([plan.passes[index].end for index in passes])
    sequence_index = plan.inverse.reshape(plan.grid)
    return sequence_index[None] < ends.reshape(-1, *[1] * len(plan.grid))


def reveal(pixels: np.ndarray, plan: Plan, passes: np.ndarray) -> np.ndarray:
    """Frames (len(passes), *pixels.shape) of the final pixels, gray where no token is drawn yet."""
    rows, cols = plan.grid[-2:]
    height, width = pixels.shape[-3:-1]
    if height % rows or width % cols:
        raise ValueError(f"{height}x{width} pixels do not tile a {rows}x{cols} token grid")
    cells = revealed_cells(plan, passes)  # (K, [T,] rows, cols)
    mask = cells.repeat(height // rows, axis=-2).repeat(width // cols, axis=-1)
    mask = mask[:, None, ..., None]  # (K, 1, [T,] H, W, 1) against (N, [T,] H, W, C)
    return np.where(mask, pixels[None], np.uint8(GRAY))


def animation_frames(
    pixels: np.ndarray, plan: Plan, ncols: int | None = None, max_frames: int = MAX_FRAMES
) -> np.ndarray:
    """A frame after every pass, or after `max_frames` evenly spaced ones, the last the final
    picture: images tiled as the still output, or clips, a film strip per row."""
    count = min(plan.num_passes, max_frames)
    passes = np.rint(np.linspace(0, plan.num_passes - 1, count)).astype(np.int64)
    frames = []
    for n in passes:  # one at a time: all frames of full-size images could take hundreds of MB
        samples = reveal(pixels, plan, [n])[0]
        if len(plan.grid) == 3:
            samples, ncols = np.stack([make_grid(clip, ncols=len(clip)) for clip in samples]), 1
        frames.append(make_grid(samples, ncols=ncols))
    return np.stack(frames)
