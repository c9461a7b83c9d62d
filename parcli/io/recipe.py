"""How a file was made: the recipe `par generate` writes into a PNG or a `<file>.json` beside
it, which `par info` shows and `--from` replays; read back, every field is checked before use."""

from __future__ import annotations

import json
import math
import typing
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cache
from pathlib import Path
from typing import Any

from parcli import __version__
from parcli.errors import SettingError, UserError
from parcli.options import SAMPLING_FIELDS, RunOptions

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
    """What a run made (the identity fields and `samples`) and how (`run`: its options, every
    sampling setting decided). Written flat: the run's settings beside the identity fields."""

    parcli: str  # version that wrote it
    model: str | None  # catalogue entry; None for files given with --checkpoint
    checkpoint: str  # file name
    # sha256 of the published file a converted checkpoint came from (its `source_sha256`), or of
    # the checkpoint file itself where it has none, so that a 12 GB file is never hashed per run
    checkpoint_sha256: str
    tokenizer: str
    regions: int
    seed: int
    scale: int  # pixels enlarged N times
    columns: int | None  # grid columns of a file holding several samples (None: as square)
    fps: float | None  # videos only
    run: RunOptions = RunOptions()  # its device is a kind: tokens repeat on the same kind
    samples: tuple[Sample, ...] = field(default_factory=tuple)

    @classmethod
    def of_run(cls, options: RunOptions, samples: list[Sample], **identity: Any) -> Recipe:
        """The recipe of a run: what it made (`identity`) and how (`options`)."""
        run = replace(options, device=options.device_kind, threads=None)
        return cls(parcli=__version__, **identity, run=run, samples=tuple(samples))

    def same_run(self, other: Recipe) -> bool:
        """Whether two recipes describe the same samples made the same way (any version)."""
        return {**self.to_dict(), "parcli": ""} == {**other.to_dict(), "parcli": ""}

    def to_dict(self) -> dict[str, Any]:
        identity = {f.name: getattr(self, f.name) for f in fields(self)[:-2]}  # not run, samples
        run = {_JSON_NAMES.get(k, k): v for k, v in self.run.to_dict().items()}
        return {**identity, **run, "samples": [asdict(s) for s in self.samples]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Recipe:
        """A recipe from parsed JSON, every field's type and range checked; a run setting newer
        than the recipe takes the value an older recipe means (`RunOptions`' default)."""
        if not isinstance(data, dict):
            raise RecipeError(f"{where}: the recipe is not a JSON object")
        if RECIPE_KEY not in data:
            raise RecipeError(f"{where} is not a parcli recipe")
        run_names = {name: _JSON_NAMES.get(name, name) for name in RunOptions().to_dict()}
        data = {**{run_names[k]: v for k, v in RunOptions().to_dict().items()}, **data}
        identity = {k: v for k, v in _kinds(Recipe).items() if k not in ("run", "samples")}
        kinds = {**identity, **{run_names[k]: _kinds(RunOptions)[k] for k in run_names}}
        missing = sorted({*kinds, "samples"} - set(data))
        if missing:
            raise RecipeError(f"{where}: the recipe lacks {', '.join(missing)}")
        for name, (types, optional) in kinds.items():
            value = data[name]
            # A bool is an int to isinstance: only a field of bools takes one.
            wrong = isinstance(value, bool) != (bool in types) or not isinstance(value, types)
            if wrong and not (value is None and optional):
                raise RecipeError(f"{where}: recipe field {name!r} has the wrong type")
        # The bounds the command line puts on the same settings, so a replay asks for nothing
        # the command line would refuse.
        bounds = {"regions": (1, 16), "scale": (1, 16), "columns": (1, _MAX_SAMPLES),
                  "fps": (0.1, 120), "top_k": (0, math.inf), "window": (1, math.inf)}  # fmt: skip
        for name, (low, high) in bounds.items():
            if data[name] is not None and not low <= data[name] <= high:
                span = f"lie in {low} to {high}" if high < math.inf else f"be at least {low}"
                value = data[name]
                raise RecipeError(f"{where}: recipe field {name!r} must {span}, not {value}")
        for name in SAMPLING_FIELDS:
            if data[name] is None or not math.isfinite(data[name]):
                raise RecipeError(f"{where}: recipe field {name!r} is not a finite number")
        samples = data["samples"]
        if not isinstance(samples, list) or not 0 < len(samples) <= _MAX_SAMPLES:
            raise RecipeError(f"{where}: recipe field 'samples' must list the samples")
        run = {name: data[json] for name, json in run_names.items()}
        for name in ("cfg_scale", "temperature", "top_p"):
            run[name] = float(run[name])
        return cls(
            **{name: data[name] for name in identity},
            run=RunOptions(**run),
            samples=tuple(_sample(item, where) for item in samples),
        )


_JSON_NAMES = {"compile": "compiled"}  # as the first recipes wrote it


@cache
def _kinds(cls: type) -> dict[str, tuple[tuple[type, ...], bool]]:
    """The types each field of a dataclass takes (an int where a float goes), and if null."""
    hints = typing.get_type_hints(cls)
    kinds = {}
    for f in fields(cls):
        args = typing.get_args(hints[f.name]) or (hints[f.name],)
        types = tuple(t for t in args if t is not type(None))
        kinds[f.name] = (types + (int,) if float in types else types, type(None) in args)
    return kinds


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


def checkpoint_sha256(path: Path) -> str:
    """The sha256 a recipe records for a checkpoint: a converted file's source's, else its own."""
    from safetensors import safe_open

    from parcli.io.files import cached_sha256

    with safe_open(str(path), framework="pt") as handle:
        source = (handle.metadata() or {}).get("source_sha256")
    return source or cached_sha256(path)


def sidecar_path(path: Path) -> Path:
    """Where the recipe of a file that cannot carry text goes: `clip.mp4` -> `clip.mp4.json`."""
    return path.with_name(path.name + SIDECAR_SUFFIX)


def read_recipe(path: Path) -> Recipe:
    """The recipe of a PNG (its chunk), of any output with a sidecar, or of a `--json` file."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path} does not exist")
    text, _ = _recipe_text(path)
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


def _recipe_text(path: Path) -> tuple[str | None, Path]:
    """The recipe text a file carries (None if none), and the file it was read from."""
    if path.suffix.lower() == ".png":
        from PIL import Image, UnidentifiedImageError

        try:
            with warnings.catch_warnings():  # PIL's bomb warning would be a second line of output
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as image:
                    return image.text.get(RECIPE_KEY), path  # type: ignore[attr-defined]
        except Image.DecompressionBombError:
            message = f"{path} is too large an image to open safely; not a parcli output"
            raise RecipeError(message) from None
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError, AttributeError):
            raise RecipeError(f"{path} is not a readable PNG") from None
    source = path if path.suffix.lower() == SIDECAR_SUFFIX else sidecar_path(path)
    if not source.is_file():
        return None, source
    try:
        return source.read_text(encoding="utf-8"), source
    except (OSError, UnicodeDecodeError) as exc:
        message = f"cannot read {source}: {getattr(exc, 'strerror', None) or exc}"
        raise RecipeError(message) from None


FILE_SHA256 = "file_sha256"  # in a sidecar: the file it describes, so that par can prove it


def earlier_outputs(folder: Path) -> dict[Path, Recipe]:
    """The files in `folder` par can prove it wrote, with their recipes: a PNG carrying a recipe, a
    file whose sidecar records its sha256, or a sidecar. Other files are never listed."""
    from parcli.io.files import file_sha256

    found = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.name.startswith(".") or not path.is_file():
            continue
        try:
            text, source = _recipe_text(path)
            if text is None:
                continue
            data = json.loads(text)
            sha256 = data.get(FILE_SHA256) if isinstance(data, dict) else None
            if source == path or sha256 is not None and sha256 == file_sha256(path):
                found[path] = Recipe.from_dict(data, str(source))
        except (RecipeError, OSError, ValueError, RecursionError):
            pass
    return found


def replay(
    path: Path, run: dict[str, Any], defaults: dict[str, Any], asked: dict[str, bool],
    checkpoint_given: bool,
) -> tuple[Recipe, dict[str, Any]]:  # fmt: skip
    """The recipe of `path` for `--from`, and the run options `run` with its settings in; refuses
    settings the recipe sets that the user gave too (run's not at `defaults`, or `asked`)."""
    recipe = read_recipe(path)
    replayed = [name for name in run if name not in ("device", "threads")]
    given = {name: run[name] != defaults[name] for name in replayed} | asked
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

    # All the recipe's settings but the device; compiling only on the same device kind (elsewhere
    # the tokens differ anyway, and a CUDA recipe would compile for minutes on a CPU).
    settings = {k: v for k, v in recipe.run.to_dict().items() if k != "device"}
    same_kind = resolve_device(run["device"]).type == recipe.run.device
    return recipe, {**run, **settings, "compile": recipe.run.compile if same_kind else None}


def check_replay(recipe: Recipe, checkpoint: Path, sha256: str, device_kind: str) -> str | None:
    """Refuses weights other than those `recipe` was made with; the note to print where the device
    kind differs, since another kind may change the tokens."""
    if sha256 != recipe.checkpoint_sha256:
        raise UserError(
            f"{checkpoint.name} is not the checkpoint the samples were made with (sha256 "
            f"{sha256[:12]}..., the recipe says {recipe.checkpoint_sha256[:12]}...)",
            "from_file",
        )
    if device_kind == recipe.run.device:
        return None
    return f"note: made on {recipe.run.device}, now run on {device_kind}: the tokens can differ"
