"""Where `par generate` puts a run: its targets checked before any work, then every file written
with the recipe of the samples it holds."""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from parcli.errors import SettingError, Terminated
from parcli.io.animate import FPS as ANIMATION_FPS
from parcli.io.animate import animation_frames
from parcli.io.classes import class_slug
from parcli.io.files import atomic_write, check_writable, is_directory_target
from parcli.io.media import (
    CLIP_FPS,
    IMAGE_SUFFIXES,
    TOKEN_SUFFIXES,
    VIDEO_SUFFIXES,
    check_mp4_writer,
    check_output_kind,
    enlarge,
    image_names,
    save_samples,
    save_tokens,
    save_video,
)
from parcli.io.recipe import Recipe, Sample, earlier_outputs
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

    def check(self) -> None:
        """Refuse, before any work, a target that cannot be written."""
        if self.output is not None:
            check_writable(self.output, IMAGE_SUFFIXES + VIDEO_SUFFIXES, allow_directory=True)
        if self.animate is not None:
            check_writable(self.animate, VIDEO_SUFFIXES, setting="animate")
            check_mp4_writer(self.animate, setting="animate")
        if self.tokens is not None:
            check_writable(self.tokens, TOKEN_SUFFIXES, setting="save_tokens")
        if self.manifest is not None:
            check_writable(self.manifest, (".json",), setting="manifest")

    def target(self, video: bool) -> str:
        return self.output or ("generated.mp4" if video else "generated.png")

    @property
    def folder(self) -> bool:
        return self.output is not None and is_directory_target(self.output)

    def check_for(self, video: bool, maker: str) -> list[Path]:
        """Refuse a target of the wrong kind for the model; returns the files of an earlier run
        that `--overwrite` will replace (a folder holding some is refused without it)."""
        target = self.target(video)
        check_output_kind(target, video, maker)
        if video:
            check_mp4_writer(target, folder=self.folder)
        old = earlier_outputs(Path(target)) if self.folder else []
        if old and not self.overwrite:
            shown = ", ".join(path.name for path in old[:2])
            more = ", ..." if len(old) > 2 else ""
            raise SettingError(
                "output",
                f"{target} holds {len(old)} files of an earlier run ({shown}{more}); choose an "
                "empty folder, or --overwrite to replace them",
            )
        return old

    def write(
        self,
        recipe: Recipe,
        tokens: np.ndarray,
        pixels: np.ndarray,
        plan: Plan,
        seconds: float,
        old: list[Path],
    ) -> tuple[list[Path], int]:
        """Write every file of the run; returns the sample files and the animation's frame
        count (0 without one)."""
        video = len(plan.grid) == 3
        samples = list(recipe.samples)

        def describe(numbers: list[int]) -> str:
            return recipe.for_samples([samples[i] for i in numbers]).to_json()

        if self.tokens is not None:
            save_tokens(self.tokens, tokens)
        pixels = enlarge(pixels, self.scale)
        stems = sample_stems(samples)
        for path in old:  # only with --overwrite; else the run was refused before it began
            path.unlink(missing_ok=True)
        target = self.target(video)
        with counted_on_interruption(target, stems, video):
            written = save_samples(
                target, pixels, stems, video, recipe.columns, self.fps or CLIP_FPS, describe
            )
        frames = 0
        if self.animate is not None:
            animation = animation_frames(pixels, plan, recipe.columns)
            save_video(self.animate, animation, self.fps or ANIMATION_FPS, recipe=recipe.to_json())
            frames = len(animation)
        if self.manifest is not None:
            document = {
                "recipe": recipe.to_dict(),
                "files": [str(p) for p in written],
                "passes_per_sample": plan.num_passes,
                "seconds": round(seconds, 4),
            }
            text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
            atomic_write(self.manifest, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        return written, frames


@contextlib.contextmanager
def counted_on_interruption(output: str, stems: list[str], video: bool):
    """Ctrl-C or SIGTERM while a folder fills: say how many files are complete, then stop."""
    try:
        yield
    except (KeyboardInterrupt, Terminated) as exc:
        if not is_directory_target(output):
            raise
        names = image_names(stems, len(stems), ".mp4" if video else ".png")
        done = sum((Path(output) / name).is_file() for name in names)
        word, code = ("terminated", 143) if isinstance(exc, Terminated) else ("interrupted", 130)
        print(f"{word}: {done} of {len(names)} files written to {output}", file=sys.stderr)
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
