"""The files a command names: a catalogue entry or family (fetched on first use by the caller's
``fetch``, which shows downloads or not), or paths."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from parcli.errors import SettingError
from parcli.io import hub
from parcli.io.catalogue import DEMO_FIELDS, CatalogueError, Entry, load_catalogue
from parcli.io.classes import IMAGENET, ClassSet, class_set
from parcli.io.files import cached_sha256

if TYPE_CHECKING:  # sampling imports torch: not needed to list classes or parse options
    from parcli.sampling import SamplingConfig

Fetch = Callable[[list[Entry]], dict[str, Path]]


@dataclass(frozen=True)
class ModelFiles:
    name: str
    checkpoint: Path
    tokenizer: Path
    defaults: SamplingConfig | None  # the catalogue's; None: the checkpoint metadata's scale
    regions: int | None = None  # the catalogue entry's, checked against the file when loaded


def model_files(
    model: str | None,
    regions: int | None,
    checkpoint: Path | None = None,
    tokenizer: Path | None = None,
    fetch: Fetch | None = None,
    on_status: Callable[[str], None] | None = None,
    demo: bool = False,
) -> ModelFiles:
    """The files meant by a model name (None: the default family) and region count, or by paths;
    `demo` (`par generate`) samples published entries with the authors' [demo] settings."""
    fetch = fetch or hub.ensure_files
    checkpoint, tokenizer = (
        None if path is None else as_safetensors(path, on_status)
        for path in (checkpoint, tokenizer)
    )
    if checkpoint is not None:
        if tokenizer is None and model is None:
            raise SettingError(
                "tokenizer",
                "a checkpoint file needs its tokenizer: give the tokenizer file, or a model "
                "whose tokenizer it shares",
            )
        if tokenizer is None:
            catalogue = load_catalogue()
            entry = catalogue.tokenizer_for(catalogue.resolve(str(model)))
            tokenizer = fetch([entry])[entry.name]
        return ModelFiles(checkpoint.name, checkpoint, tokenizer, None)
    catalogue = load_catalogue()
    entry = catalogue.resolve(model, regions)
    wanted = [entry] if tokenizer is not None else [entry, catalogue.tokenizer_for(entry)]
    paths = fetch(wanted)
    for each in wanted:
        check_packaged(each, paths[each.name])
    tokenizer = tokenizer or paths[catalogue.tokenizer_for(entry).name]
    from parcli.sampling import SamplingConfig

    # The entry's settings, the tool's defaults for any it lacks; or the [demo] table's.
    settings = {key: getattr(entry, key) for key in DEMO_FIELDS}
    if demo and not entry.is_packaged and catalogue.demo:
        settings = catalogue.demo
    defaults = SamplingConfig(**{k: v for k, v in settings.items() if v is not None})
    return ModelFiles(entry.name, paths[entry.name], tokenizer, defaults, entry.regions)


def check_packaged(entry: Entry, path: Path) -> None:
    """Refuse a packaged file whose sha256 is not the one its catalogue entry gives (downloads
    are checked as they arrive, by `parcli.io.hub`)."""
    if not entry.is_packaged or entry.sha256 is None:
        return
    found = cached_sha256(path)
    if found != entry.sha256:
        raise CatalogueError(
            f"{entry.name}: {path} has sha256 {found}, but the catalogue expects {entry.sha256}; "
            "reinstall parcli, or correct the entry's sha256"
        )


def as_safetensors(path: Path, on_status: Callable[[str], None] | None = None) -> Path:
    """A checkpoint given by path, as a parcli safetensors file: a published `.pt` is converted
    into the cache once (`parcli.io.hub.convert_local`); anything else is used as it is."""
    from parcli.io.checkpoints import sniff_format
    from parcli.io.convert import HeadsUnknown
    from parcli.io.tensors import WeightsError

    path = Path(path)
    if path.is_file() and path.stat().st_size > 0 and sniff_format(path) in ("zip", "pickle"):
        try:
            return hub.convert_local(path, on_status)
        except HeadsUnknown as exc:
            # The commands that convert on the fly take no --heads: convert-weights does.
            command = shlex.join(["par", "convert-weights", str(path), f"{path.stem}.safetensors"])
            raise WeightsError(
                f"{path}: {exc.what}; convert it first with `{command} --heads N`"
            ) from None
    return path


def catalogue_class_set(model: str | None, regions: int | None) -> ClassSet:
    """The class names of a catalogue model, from the catalogue alone: nothing is downloaded."""
    return class_set(load_catalogue().resolve(model, regions).classes or IMAGENET)
