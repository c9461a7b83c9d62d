"""How a file was made: the recipe `par generate` writes into (or beside) every output.

A PNG carries the recipe as an iTXt chunk named "parcli"; MP4, GIF, JPEG and WebP files get it in
a `<file>.json` beside them; `--json` writes the whole run's. `par info` reads any of these back,
and `par generate --from FILE` makes the same samples again (the same tokens on the same kind of
device). A recipe read from a file is untrusted text, so every field is checked before use.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any

from parcli import __version__
from parcli.errors import SettingError, UserError
from parcli.options import RunOptions

RECIPE_KEY = "parcli"  # the PNG chunk's keyword
SIDECAR_SUFFIX = ".json"
_MAX_SAMPLES = 100_000


class RecipeError(UserError):
    """A file that carries no recipe, or one that is not a parcli recipe."""


@dataclass(frozen=True)
class Sample:
    class_id: int
    class_name: str | None
    index: int  # the image's number in its run: its random numbers come from (seed, index)


@dataclass(frozen=True)
class Recipe:
    parcli: str  # version that wrote it
    model: str | None  # catalogue entry; None for files given with --checkpoint
    checkpoint: str  # file name
    # sha256 of the published file a converted checkpoint came from (its `source_sha256`), or of
    # the checkpoint file itself where it has none, so that a 12 GB file is never hashed per run
    checkpoint_sha256: str
    tokenizer: str
    regions: int
    seed: int
    cfg_scale: float
    temperature: float
    top_k: int
    top_p: float
    dtype: str  # of the transformer: fp32, bf16 or fp16
    device: str  # kind: cpu, cuda or mps; tokens are reproducible on the same kind
    scale: int  # pixels enlarged N times
    columns: int | None  # grid columns of a file holding several samples (None: as square)
    fps: float | None  # videos only
    quantize: str | None = None  # "int8": weight-only int8 projections
    samples: tuple[Sample, ...] = field(default_factory=tuple)
    reference_kernels: bool = False  # run with the reference's kernels (--reference-kernels)
    # Whether the step was compiled, which moves bf16 tokens; None in recipes older than it (the
    # device's default then).
    compiled: bool | None = None
    strategy: str = "par"
    window: int = 1

    @classmethod
    def of_run(cls, options: RunOptions, samples: list[Sample], **identity: Any) -> Recipe:
        """The recipe of a run: what it made (`identity`) and how (`options.to_dict()`, every
        sampling setting decided)."""
        run = options.to_dict()
        run["compiled"] = run.pop("compile")
        run["device"] = options.device_kind
        return cls(parcli=__version__, **identity, **run, samples=tuple(samples))

    def same_run(self, other: Recipe) -> bool:
        """Whether two recipes describe the same samples made the same way (any version)."""
        return {**self.to_dict(), "parcli": ""} == {**other.to_dict(), "parcli": ""}

    def run_settings(self, device_kind: str) -> dict[str, Any]:
        """The run options that make these samples again on a device of `device_kind`: the
        compiled setting only on the same kind (elsewhere the tokens differ anyway, and a CUDA
        recipe would compile for minutes on a CPU)."""
        settings = {name: getattr(self, name) for name in REPLAYED}
        settings["compile"] = self.compiled if device_kind == self.device else None
        return settings

    def for_samples(self, samples: list[Sample]) -> Recipe:
        return Recipe(**{**self._fields(), "samples": tuple(samples)})

    def _fields(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Recipe:
        """A recipe from parsed JSON, every field's type and range checked."""
        if not isinstance(data, dict):
            raise RecipeError(f"{where}: the recipe is not a JSON object")
        if RECIPE_KEY not in data:
            raise RecipeError(f"{where} is not a parcli recipe")
        names = {f.name for f in fields(cls)}
        data = {**_ADDED_LATER, **data}
        missing = sorted(names - set(data))
        if missing:
            raise RecipeError(f"{where}: the recipe lacks {', '.join(missing)}")
        values = {name: data[name] for name in names}
        for name, (kinds, optional) in _FIELD_KINDS.items():
            value = values[name]
            if value is None and optional:
                continue
            # A bool is an int to isinstance: only a field of bools takes one.
            if isinstance(value, bool) != (bool in kinds) or not isinstance(value, kinds):
                raise RecipeError(f"{where}: recipe field {name!r} has the wrong type")
        for name in ("regions", "scale", "top_k", "window"):
            if values[name] < 0 or (name != "top_k" and values[name] == 0):
                raise RecipeError(f"{where}: recipe field {name!r} is out of range")
        # The bounds the command line puts on the same settings, so a replay asks for nothing
        # the command line would refuse.
        bounds = {"scale": (1, 16), "columns": (1, _MAX_SAMPLES), "fps": (0.1, 120)}
        for name, (low, high) in bounds.items():
            if values[name] is not None and not low <= values[name] <= high:
                raise RecipeError(
                    f"{where}: recipe field {name!r} must lie in {low} to {high}, "
                    f"not {values[name]}"
                )
        for name in ("cfg_scale", "temperature", "top_p"):
            if not math.isfinite(values[name]):
                raise RecipeError(f"{where}: recipe field {name!r} is not a finite number")
        samples = values["samples"]
        if not isinstance(samples, list) or not 0 < len(samples) <= _MAX_SAMPLES:
            raise RecipeError(f"{where}: recipe field 'samples' must list the samples")
        values["samples"] = tuple(_sample(item, where) for item in samples)
        for name in ("cfg_scale", "temperature", "top_p"):
            values[name] = float(values[name])
        return cls(**values)


# Fields newer than the first recipes, with the value an older recipe means.
_ADDED_LATER = {
    "quantize": None,
    "reference_kernels": False,
    "compiled": None,
    "strategy": "par",
    "window": 1,
}
# What a recipe sets of a run's options when it is made again (the device is the user's).
REPLAYED = ("dtype", "quantize", "reference_kernels", "strategy", "window", "cfg_scale",
            "temperature", "top_k", "top_p")  # fmt: skip

_FIELD_KINDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "parcli": ((str,), False),
    "model": ((str,), True),
    "checkpoint": ((str,), False),
    "checkpoint_sha256": ((str,), False),
    "tokenizer": ((str,), False),
    "regions": ((int,), False),
    "seed": ((int,), False),
    "cfg_scale": ((int, float), False),
    "temperature": ((int, float), False),
    "top_k": ((int,), False),
    "top_p": ((int, float), False),
    "dtype": ((str,), False),
    "device": ((str,), False),
    "scale": ((int,), False),
    "columns": ((int,), True),
    "fps": ((int, float), True),
    "quantize": ((str,), True),
    "reference_kernels": ((bool,), False),
    "compiled": ((bool,), True),
    "strategy": ((str,), False),
    "window": ((int,), False),
}


def _sample(item: Any, where: str) -> Sample:
    if not isinstance(item, dict):
        raise RecipeError(f"{where}: a recipe sample is not a JSON object")
    class_id, index, name = item.get("class_id"), item.get("index"), item.get("class_name")
    for value in (class_id, index):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise RecipeError(f"{where}: a recipe sample needs a class_id and an index >= 0")
    if name is not None and not isinstance(name, str):
        raise RecipeError(f"{where}: a recipe sample's class_name must be text")
    return Sample(class_id, name, index)


@cache
def weights_sha256(path: Path, size: int, modified_ns: int) -> str:
    """The sha256 a recipe records for a checkpoint file (see Recipe.checkpoint_sha256);
    size and modification time key the cache, so a changed file is hashed again."""
    from safetensors import safe_open

    from parcli.io.files import file_sha256

    with safe_open(str(path), framework="pt") as handle:
        source = (handle.metadata() or {}).get("source_sha256")
    return source or file_sha256(path)


def checkpoint_sha256(path: Path) -> str:
    status = Path(path).stat()
    return weights_sha256(Path(path).resolve(), status.st_size, status.st_mtime_ns)


def sidecar_path(path: Path) -> Path:
    """Where the recipe of a file that cannot carry text goes: `clip.mp4` -> `clip.mp4.json`."""
    return path.with_name(path.name + SIDECAR_SUFFIX)


def read_recipe(path: Path) -> Recipe:
    """The recipe of a PNG (its chunk), of any output with a sidecar, or of a `--json` file."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path} does not exist")
    text = None
    if path.suffix.lower() == ".png":
        text = _png_text(path)
    elif path.suffix.lower() == SIDECAR_SUFFIX:
        text = _read_text(path)
    elif sidecar_path(path).is_file():
        text = _read_text(sidecar_path(path))
    if text is None:
        raise RecipeError(
            f"{path} carries no parcli recipe (PNGs made by `par generate` carry one; other "
            f"files have it in {sidecar_path(path).name})"
        )
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise RecipeError(f"{path}: the recipe is not valid JSON") from None
    if isinstance(data, dict) and "recipe" in data:  # a --json manifest
        data = data["recipe"]
    return Recipe.from_dict(data, str(path))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None


def _png_text(path: Path) -> str | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():  # PIL's bomb warning would be a second line of output
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return image.text.get(RECIPE_KEY)  # type: ignore[attr-defined]
    except Image.DecompressionBombError:
        raise RecipeError(
            f"{path} is too large an image to open safely; not a parcli output"
        ) from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, AttributeError):
        raise RecipeError(f"{path} is not a readable PNG") from None


FILE_SHA256 = "file_sha256"  # in a sidecar: the file it describes, so that par can prove it


def written_by_par(path: Path) -> Recipe | None:
    """The recipe of a file par can prove it wrote, else None: a PNG carrying a recipe, a file
    whose sidecar's recipe records its sha256, or a sidecar holding a recipe."""
    from parcli.io.files import file_sha256

    path = Path(path)
    try:
        if not path.is_file():
            return None
        if path.suffix.lower() == ".png":
            text = _png_text(path)
            return None if text is None else Recipe.from_dict(json.loads(text), str(path))
        if path.name.endswith(SIDECAR_SUFFIX):
            return Recipe.from_dict(json.loads(_read_text(path)), str(path))
        sidecar = sidecar_path(path)
        if not sidecar.is_file():
            return None
        data = json.loads(_read_text(sidecar))
        if not isinstance(data, dict) or data.get(FILE_SHA256) != file_sha256(path):
            return None
        return Recipe.from_dict(data, str(sidecar))
    except (RecipeError, OSError, ValueError, RecursionError):
        return None


def earlier_outputs(folder: Path) -> list[Path]:
    """The files in `folder` (not below) that par can prove it wrote (`written_by_par`). Other
    files are not ours and are never listed."""
    if not folder.is_dir():
        return []
    return sorted(
        path
        for path in folder.iterdir()
        if not path.name.startswith(".") and written_by_par(path) is not None
    )


def replay(
    path: Path, run: dict[str, Any], defaults: dict[str, Any], asked: dict[str, bool],
    checkpoint_given: bool,
) -> tuple[Recipe, dict[str, Any]]:  # fmt: skip
    """The recipe of `path` for `par generate --from`, and the run options (`run`, as the
    command line gave them) with the recipe's settings in; refuses options the recipe sets
    (given otherwise than `defaults`, or `asked`: other settings -> whether the user gave them)."""
    recipe = read_recipe(path)
    given = {name: run[name] != defaults[name] for name in (*REPLAYED, "compile")} | asked
    clash = next((name for name, was_given in given.items() if was_given), None)
    if clash is not None:
        raise SettingError(clash, f"comes from {path} with --from; leave it out")
    if recipe.model is None and not checkpoint_given:
        raise SettingError(
            "from_file",
            f"{path} was made from the file {recipe.checkpoint}: give it again with --checkpoint "
            "(and --tokenizer)",
        )
    from parcli.engine.devices import resolve_device

    device_kind = resolve_device(run["device"]).type
    return recipe, {**run, **recipe.run_settings(device_kind)}
