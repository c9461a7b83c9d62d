"""The FID protocol: K images of every class, in shards that survive interruption, merged into
the `.npz` of OpenAI's ADM evaluator, byte for byte the same however the work was split: an
image's random numbers depend on (seed, its index) alone, and shards are decoded image by image
on one thread, since a batched or threaded decode rounds a few pixels differently."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from parcli.errors import SettingError, UserError, at_least_one
from parcli.io.files import (
    atomic_path,
    file_sha256,
    free_bytes,
    read_json,
    remove_temporaries,
    write_json,
)
from parcli.io.locate import ModelFiles
from parcli.io.media import save_image
from parcli.io.npz import UNREADABLE, Member, member_header, read_array, write_arrays, write_npz
from parcli.pipeline import Pipeline
from parcli.plan import Pass
from parcli.quality.ranks import Ranks
from parcli.sampling import SamplingConfig

FORMAT = 2  # 2: the run's options as `RunOptions.to_dict` writes them
# Bounds that refuse a typo before a shard list or a run.json is made for it.
MAX_IMAGES = 10_000_000
MAX_SIDE = 4096
RUN, SAMPLES, MANIFEST, SHARDS, PNGS = "run.json", "samples.npz", "manifest.json", "shards", "png"


class SampleError(UserError):
    """An output folder that holds something else, or shards that no longer check out."""


@dataclass(frozen=True)
class SampleSettings:
    """Which images a run makes, and how it cuts the work."""

    classes: tuple[int, ...]
    per_class: int
    seed: int = 0
    batch_size: int = 16
    shard_size: int = 1000
    image_size_eval: int | None = None  # resize to this side (bicubic), as reference samplers do
    png: bool = False  # also keep one PNG per image

    def __post_init__(self) -> None:
        if not self.classes:
            raise SettingError("classes", "no classes to sample")
        at_least_one(
            per_class=self.per_class, batch_size=self.batch_size, shard_size=self.shard_size
        )
        if self.image_size_eval is not None and not 1 <= self.image_size_eval <= MAX_SIDE:
            raise SettingError(
                "image_size_eval", f"must be between 1 and {MAX_SIDE}, not {self.image_size_eval}"
            )
        if self.count > MAX_IMAGES:
            raise SettingError(
                "per_class",
                f"{self.per_class} images of each of {len(self.classes)} classes are "
                f"{self.count} images, more than the {MAX_IMAGES} a run can hold; ask for fewer",
            )
        if self.seed < 0:
            raise SettingError("seed", f"must be >= 0, not {self.seed}")

    @property
    def count(self) -> int:
        return len(self.classes) * self.per_class


@dataclass(frozen=True)
class Shard:
    """Images [start, stop) of the run, in the order of `samples.npz`."""

    number: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


class SampleRun:
    """The shards of one run in one folder: which are done, making one, merging them."""

    def __init__(
        self,
        out: Path,
        pipe: Pipeline,
        settings: SampleSettings,
        sampling: SamplingConfig,
        run_identity: dict,
    ):
        self.out, self.pipe, self.settings, self.sampling = Path(out), pipe, settings, sampling
        self.identity = run_identity
        count, size = settings.count, settings.shard_size
        self.shards = [
            Shard(number, start, min(start + size, count))
            for number, start in enumerate(range(0, count, size))
        ]
        # The order of samples.npz, class by class; image k of class c is c * per_class + k.
        self._labels = np.repeat(np.asarray(settings.classes, dtype=np.int64), settings.per_class)
        within = np.tile(np.arange(settings.per_class), len(settings.classes))
        self._indices = self._labels * settings.per_class + within

    def prepare(self) -> bool:
        """Make the folder, or check that it holds this very run (never another); True when
        that run is complete already: `samples.npz` is the file its manifest vouches for."""
        run_file, samples, manifest = self.out / RUN, self.out / SAMPLES, self.out / MANIFEST
        fresh = not run_file.is_file()
        if fresh and self.out.exists() and (not self.out.is_dir() or any(self.out.iterdir())):
            raise SampleError(
                f"{self.out} exists and holds no par sample run; choose a new or empty folder",
                "output",
            )
        if not fresh:
            found = read_json(run_file)
            if not isinstance(found, dict):
                raise SampleError(
                    f"{run_file} is not a par sample run record; choose another folder, or "
                    "remove it to start afresh",
                    "output",
                )
            if found != self.identity:
                keys = {**found, **self.identity}
                differ = sorted(key for key in keys if found.get(key) != self.identity.get(key))
                raise SampleError(
                    f"{self.out} holds a run with other settings ({', '.join(differ)}); "
                    "choose another folder, or remove it to start afresh",
                    "output",
                )
            # A killed run leaves its half-written files under temporary names: ours to remove.
            for folder in (self.out, self.out / SHARDS, self.out / PNGS):
                remove_temporaries(folder)
            document = read_json(manifest) if samples.is_file() else None
            vouched = isinstance(document, dict) and document.get("settings") == self.identity
            if vouched and file_sha256(samples) == document.get("samples_sha256"):
                return True
        # Refuse, before any work, a run whose files cannot fit the disk: the shards, then
        # samples.npz beside them (and the PNGs), less the shards already made.
        copies = 3 if self.settings.png else 2
        needed = copies * self.settings.count * int(np.prod(self.image_shape()))
        shards = self.out / SHARDS
        made = sum(p.stat().st_size for p in shards.iterdir()) if shards.is_dir() else 0
        try:
            free = free_bytes(self.out)
        except OSError:
            free = needed  # unknown: never refuse
        if needed - made > free:
            raise SampleError(
                f"{self.settings.count} images need {(needed - made) / 1e9:.1f} GB more (shards, "
                f"samples.npz{', PNGs' if self.settings.png else ''}) but {self.out} has "
                f"{free / 1e9:.1f} GB free; ask for fewer images or another disk",
                "output",
            )
        if fresh:
            (self.out / SHARDS).mkdir(parents=True, exist_ok=True)
            write_json(run_file, self.identity, "output")
        return False

    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, 3): the shape of every image of the run."""
        if self.settings.image_size_eval is not None:
            return self.settings.image_size_eval, self.settings.image_size_eval, 3
        rows, cols = self.pipe.plan.grid[-2:]
        side = self.pipe.vq.config.downsample
        return rows * side, cols * side, 3

    def _paths(self, shard: Shard) -> tuple[Path, Path]:
        stem = self.out / SHARDS / f"{shard.number:05d}"
        return stem.with_suffix(".npz"), stem.with_suffix(".json")

    def is_done(self, shard: Shard) -> bool:
        """The shard is there, whole: its record exists and its data match the sha256 in it."""
        data, record = self._paths(shard)
        expected = read_json(record)
        if not isinstance(expected, dict) or not data.is_file():
            return False
        if (expected.get("images"), expected.get("first")) != (shard.size, shard.start):
            return False
        if file_sha256(data) != expected.get("sha256"):
            return False
        # A record can vouch for the wrong data: the arrays must be the ones merge expects.
        span = slice(shard.start, shard.stop)
        try:
            shape, dtype = member_header(data, "images")
            if shape != (shard.size, *self.image_shape()) or dtype != np.uint8:
                return False
            for name, wanted in (("labels", self._labels), ("indices", self._indices)):
                found = read_array(data, name)
                if found.dtype != np.int64 or not np.array_equal(found, wanted[span]):
                    return False
            return True
        except UNREADABLE:
            return False

    def todo(self, rank: int = 0, world: int = 1) -> list[Shard]:
        """The shards process `rank` of `world` makes that are not done yet."""
        return [s for s in self.shards[rank::world] if not self.is_done(s)]

    def write(self, shard: Shard, tokens: torch.Tensor) -> None:
        """Land a shard: its images (and PNGs), then the record that says it is whole."""
        images = self.pipe.decode(tokens, batch_size=1, size=self.settings.image_size_eval)
        images = np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images
        data, record = self._paths(shard)
        span = slice(shard.start, shard.stop)
        write_arrays(
            data, {"images": images, "labels": self._labels[span], "indices": self._indices[span]}
        )
        if self.settings.png:
            folder = self.out / PNGS
            folder.mkdir(exist_ok=True)
            for position, image in enumerate(images, start=shard.start):
                save_image(folder / f"{position:06d}.png", image)
        entry = {"images": shard.size, "first": shard.start, "sha256": file_sha256(data)}
        with atomic_path(record, "output") as tmp:
            tmp.write_text(json.dumps(entry) + "\n", encoding="utf-8")

    def run(
        self,
        shards: Sequence[Shard],
        on_pass: Callable[[Pass], None] | None = None,
        on_shard: Callable[[Shard, float], None] | None = None,
    ) -> None:
        """Make `shards`: each is decoded and written while the next one is generated."""
        pending: Future | None = None
        with ThreadPoolExecutor(
            max_workers=1, initializer=torch.set_num_threads, initargs=(1,)
        ) as writer:
            for shard in shards:
                started = time.perf_counter()
                span = slice(shard.start, shard.stop)
                labels, indices = self._labels[span].tolist(), self._indices[span].tolist()
                tokens = self.pipe.generate(
                    labels, self.sampling, self.settings.seed, self.settings.batch_size, on_pass,
                    indices,
                )  # fmt: skip
                if pending is not None:
                    pending.result()
                pending = writer.submit(self.write, shard, tokens)
                if on_shard is not None:
                    on_shard(shard, time.perf_counter() - started)
            if pending is not None:
                pending.result()

    def merge(self, command: str, processes: int, seconds: float) -> Path:
        """Stream every shard into `samples.npz`, shard by shard, and write the manifest."""
        from parcli import __version__
        from parcli.quality.bench import machine_info

        missing = [shard.number for shard in self.shards if not self.is_done(shard)]
        if missing:
            raise SampleError(
                f"{len(missing)} shard(s) of {self.out} are missing or damaged (first: "
                f"{missing[0]:05d}); run the same command again to make them"
            )
        shape = (self.settings.count, *self.image_shape())
        images = (read_array(self._paths(shard)[0], "images") for shard in self.shards)
        target = self.out / SAMPLES
        write_npz(
            target,
            {
                "arr_0": Member(shape, np.dtype(np.uint8), images),
                "labels": Member((self.settings.count,), np.dtype(np.int64), [self._labels]),
            },
            "output",
        )
        document = {
            "parcli": __version__,
            "command": command,
            "machine": machine_info(self.pipe.device),
            "processes": processes,
            "seconds": round(seconds, 1),
            "settings": self.identity,
            "images": self.settings.count,
            "shape": list(shape),
            "samples_sha256": file_sha256(target),
        }
        write_json(self.out / MANIFEST, document, "output")
        return target


def start_run(
    out: Path, pipe: Pipeline, settings: SampleSettings, files: ModelFiles, ranks: Ranks
) -> tuple[SampleRun, bool]:
    """The run in `out` for every process: the first hashes the files, makes or checks the folder
    and tells the others; True when the run is complete already."""
    run_identity = problem = None
    sampling = pipe.sampling()
    pipe.check_labels(settings.classes)
    if ranks.is_first:  # everything the bytes of samples.npz depend on, as run.json keeps it
        run_identity = {
            "format": FORMAT,
            "model": pipe.name,
            "checkpoint_sha256": file_sha256(files.checkpoint),
            "tokenizer_sha256": file_sha256(files.tokenizer),
            "regions": pipe.plan.regions,
            "grid": list(pipe.plan.grid),
            **pipe.run_options(sampling).to_dict(),
            **{key: value for key, value in asdict(settings).items() if key != "classes"},
            "classes": list(settings.classes),
        }
    run = SampleRun(out, pipe, settings, sampling, ranks.from_first(run_identity))
    complete = False
    if ranks.is_first:
        try:
            complete = run.prepare()
        except SampleError as exc:
            problem = (str(exc), exc.setting)
    problem, complete = ranks.from_first((problem, complete))
    if problem is not None:
        raise SampleError(*problem)
    return run, complete
