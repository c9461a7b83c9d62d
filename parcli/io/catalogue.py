"""The checkpoints of ``weights.toml``, named by entry (``par-3b-16x``) or by family (``par-3b``:
one architecture's checkpoints, which differ only in their PAR regions; LlamaGen's is n = 1)."""

from __future__ import annotations

import difflib
import math
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from parcli.config import CHECKPOINT_KINDS, MAX_TOKENS, SUPPORTED_REGIONS
from parcli.errors import UserError
from parcli.io.classes import CLASS_SETS

PACKAGE_DIR = Path(__file__).resolve().parent.parent
DEFAULT_PATH = Path(__file__).parent.parent / "weights.toml"
HF_URL = "https://huggingface.co/{repo}/resolve/main/{file}"
MAX_CATALOGUE_BYTES = 1 << 20  # the packaged catalogue is about 10 KiB

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class CatalogueError(UserError):
    """A bad model name or a malformed catalogue; the message is one line meant for the user."""


@dataclass(frozen=True)
class Entry:
    """One checkpoint file of the catalogue."""

    name: str
    kind: str  # "gpt" or "vq"
    arch: str  # "GPT-B" .. "GPT-3B", or "VQ-16"
    licence: str
    repo: str | None = None  # Hugging Face repository id (downloaded entries)
    file: str | None = None  # file name in that repository
    url: str | None = None
    path: str | None = None  # file shipped inside the package, relative to the package directory
    grid: tuple[int, ...] | None = None  # gpt only
    regions: int | None = None  # gpt only
    family: str | None = None  # gpt only
    tokenizer: str | None = None  # gpt only: name of a "vq" entry
    cfg_scale: float | None = None  # gpt only
    temperature: float | None = None  # gpt only: the rest of its sampling settings
    top_k: int | None = None
    top_p: float | None = None
    fid: float | None = None
    approx_size_bytes: int | None = None
    sha256: str | None = None
    notes: str | None = None
    classes: str | None = None  # gpt only: the class set of its labels (default ImageNet-1k)

    @property
    def is_packaged(self) -> bool:
        """True when the file ships inside the package instead of being downloaded."""
        return self.path is not None

    @property
    def package_path(self) -> Path | None:
        """Absolute location of a packaged file, None for downloaded entries."""
        return PACKAGE_DIR / self.path if self.path is not None else None

    @property
    def filename(self) -> str:
        return PurePosixPath(self.path if self.path is not None else str(self.file)).name

    @property
    def source(self) -> str:
        """Where the file comes from: its URL, or its path inside the package."""
        return str(self.package_path if self.path is not None else self.url)


# Entry's annotations (less "| None") -> the TOML types accepted, and what to call them.
_TOML_TYPES = {
    "str": ((str,), "a string"),
    "int": ((int,), "an integer"),
    "float": ((int, float), "a number"),
    "tuple[int, ...]": ((list,), "a list of positive integers"),
}
_FIELD_TYPES = {f.name: _TOML_TYPES[f.type.removesuffix(" | None")] for f in fields(Entry)[1:]}


def _grid_ok(grid: list) -> bool:
    return 2 <= len(grid) <= 3 and all(
        isinstance(g, int) and not isinstance(g, bool) and g > 0 for g in grid
    )


# field -> (test of a value of the right type, what the value must be)
_VALUE_RULES: dict[str, tuple[Callable[[Any], Any], str]] = {
    "grid": (_grid_ok, "2 or 3 positive integers"),
    "regions": (SUPPORTED_REGIONS.__contains__, f"one of {', '.join(map(str, SUPPORTED_REGIONS))}"),
    "cfg_scale": (lambda v: v >= 0, "a number >= 0"),
    "temperature": (lambda v: v >= 0, "a number >= 0"),
    "top_k": (lambda v: v >= 0, "an integer >= 0"),
    "top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "sha256": (_SHA256_RE.match, "64 hexadecimal digits"),
    "classes": (CLASS_SETS.__contains__, f"one of {', '.join(CLASS_SETS)}"),
    "family": (_NAME_RE.match, "a lower-case name"),
}
# Sampling settings the [sampling] table gives every transformer that sets none of its own.
SAMPLING_FIELDS = ("temperature", "top_k", "top_p")
DEMO_FIELDS = ("cfg_scale", *SAMPLING_FIELDS)
_REQUIRED = {
    "gpt": ("kind", "arch", "licence", "grid", "regions", "family", "tokenizer", "cfg_scale"),
    "vq": ("kind", "arch", "licence"),
}


def _check_fields(table: dict[str, Any], where: str) -> None:
    """Each field of the right type and, where a rule says, value."""
    for key, value in table.items():
        types, what = _FIELD_TYPES[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise CatalogueError(f"{where}: field {key!r} must be {what}")
        accepted, rule = _VALUE_RULES.get(key, (None, ""))
        if accepted is not None and not accepted(value):
            raise CatalogueError(f"{where}: field {key!r} must be {rule}")


def _inside(path: str) -> bool:
    """A relative path that cannot lead out of the folder it is joined to."""
    pure = PurePosixPath(path)
    return (
        bool(pure.parts) and not pure.is_absolute() and ".." not in pure.parts and "\\" not in path
    )


def _entry_from_table(name: str, table: Any, label: str = "weights.toml") -> Entry:
    where = f"{label} entry {name!r}"
    if not _NAME_RE.match(name):
        raise CatalogueError(f"{where}: names must be lower-case letters, digits, '.', '_' or '-'")
    if not isinstance(table, dict):
        raise CatalogueError(f"{where} must be a table")
    unknown = sorted(set(table) - set(_FIELD_TYPES))
    if unknown:
        raise CatalogueError(f"{where}: unknown field {unknown[0]!r}")
    data = dict(table)
    if isinstance(data.get("sha256"), str):
        data["sha256"] = data["sha256"].lower()
    _check_fields(data, where)
    kind = data.get("kind")
    if kind is None:
        raise CatalogueError(f"{where}: missing field 'kind'")
    if kind not in CHECKPOINT_KINDS:
        expected = ", ".join(CHECKPOINT_KINDS)
        raise CatalogueError(f"{where}: unknown kind {kind!r} (expected one of {expected})")
    for key in _REQUIRED[kind]:
        if key not in data:
            raise CatalogueError(f"{where}: missing field {key!r}")
    if "path" in data:
        if any(k in data for k in ("repo", "file", "url")):
            raise CatalogueError(f"{where}: give either 'path' or 'repo'/'file', not both")
        if not _inside(data["path"]):
            raise CatalogueError(
                f"{where}: field 'path' must be relative to the package, without '..'"
            )
    else:
        for key in ("repo", "file"):
            if key not in data:
                raise CatalogueError(f"{where}: missing field {key!r} (or give a packaged 'path')")
        # Both become parts of paths in the download cache: nothing may lead out of it.
        if not _REPO_RE.match(data["repo"]) or ".." in data["repo"]:
            raise CatalogueError(f"{where}: field 'repo' must be owner/name, like the hub's")
        if not _inside(data["file"]):
            raise CatalogueError(f"{where}: field 'file' must be a path inside the repository")
        data.setdefault("url", HF_URL.format(repo=data["repo"], file=data["file"]))
        if not data["url"].startswith("https://"):
            raise CatalogueError(f"{where}: field 'url' must be an https:// address")
    if "grid" in data:
        if math.prod(data["grid"]) > MAX_TOKENS:
            raise CatalogueError(f"{where}: field 'grid' has more than {MAX_TOKENS} tokens")
        data["grid"] = tuple(data["grid"])
    for key in ("cfg_scale", "fid", "temperature", "top_p"):
        if key in data:
            data[key] = float(data[key])
    return Entry(name=name, **data)


class Catalogue:
    """All entries of a ``weights.toml``, with lookup by entry or family name."""

    def __init__(
        self,
        entries: Mapping[str, Entry],
        default_family: str,
        source: Path | None = None,
        demo: Mapping[str, float] | None = None,
    ) -> None:
        self._entries = dict(entries)
        self.default_family = default_family
        self.source = source
        # `par generate`'s sampling settings for published entries: the authors' demo script's.
        self.demo = dict(demo or {})
        families: dict[str, list[Entry]] = {}
        for entry in self._entries.values():
            if entry.family is not None:
                families.setdefault(entry.family, []).append(entry)
        self.families = {  # family name -> its members, fewest regions first
            fam: tuple(sorted(members, key=lambda e: e.regions or 0))
            for fam, members in sorted(families.items())
        }
        label = source.name if source is not None else "weights.toml"
        for entry in self.entries("gpt"):
            tok = self._entries.get(entry.tokenizer or "")
            if tok is None or tok.kind != "vq":
                raise CatalogueError(
                    f"{label} entry {entry.name!r}: field 'tokenizer' names "
                    f"{entry.tokenizer!r}, which is not a 'vq' entry"
                )
        for fam, members in self.families.items():
            if fam in self._entries:
                raise CatalogueError(f"{label}: {fam!r} is both a family and an entry name")
            for one, other in zip(members, members[1:], strict=False):
                if one.regions == other.regions:
                    raise CatalogueError(
                        f"{label}: family {fam!r} has two {one.regions}-region "
                        f"checkpoints ({one.name}, {other.name})"
                    )
        if default_family not in self.families:
            raise CatalogueError(f"{label}: default_family {default_family!r} is not a family")

    @classmethod
    def load(cls, path: str | Path | None = None) -> Catalogue:
        """Read and validate a catalogue file (default: the one shipped with the package)."""
        file = Path(path) if path is not None else DEFAULT_PATH
        try:
            # A FIFO, a device like /dev/zero or a folder: read forever, or failing obscurely.
            if file.exists() and not file.is_file():
                raise CatalogueError(
                    f"model catalogue {file} is not a regular file; give a .toml file"
                )
            with open(file, "rb") as stream:
                raw = stream.read(MAX_CATALOGUE_BYTES + 1)
        except OSError as exc:
            raise CatalogueError(f"cannot read model catalogue {file}: {exc.strerror}") from exc
        if len(raw) > MAX_CATALOGUE_BYTES:
            size = MAX_CATALOGUE_BYTES >> 20
            raise CatalogueError(f"model catalogue {file} is over {size} MiB; give a weights.toml")
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise CatalogueError(f"model catalogue {file} is not UTF-8 text") from None
        except tomllib.TOMLDecodeError as exc:
            raise CatalogueError(f"cannot parse model catalogue {file}: {exc}") from exc
        except RecursionError:
            raise CatalogueError(f"model catalogue {file} is nested too deeply") from None
        return cls.from_dict(data, source=file)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: Path | None = None) -> Catalogue:
        label = source.name if source is not None else "weights.toml"
        unknown = sorted(set(data) - {"default_family", "models", "sampling", "demo"})
        if unknown:
            raise CatalogueError(f"{label}: unknown top-level key {unknown[0]!r}")
        models = data.get("models")
        if not isinstance(models, dict) or not models:
            raise CatalogueError(f"{label}: no [models.NAME] tables")
        default_family = data.get("default_family")
        if not isinstance(default_family, str):
            raise CatalogueError(f"{label}: missing top-level string 'default_family'")
        sampling = data.get("sampling", {})
        if not isinstance(sampling, dict) or set(sampling) - set(SAMPLING_FIELDS):
            fields = ", ".join(SAMPLING_FIELDS)
            raise CatalogueError(f"{label}: [sampling] may only set {fields}")
        entries = {}
        for name, table in models.items():
            if isinstance(table, dict) and table.get("kind") == "gpt":
                table = {**sampling, **table}
            entries[name] = _entry_from_table(name, table, label)
        demo = data.get("demo", {})  # the sampling settings `par generate` gives published entries
        if not isinstance(demo, dict) or set(demo) - set(DEMO_FIELDS):
            raise CatalogueError(f"{label}: [demo] may only set {', '.join(DEMO_FIELDS)}")
        _check_fields(demo, f"{label}: [demo]")
        return cls(entries, default_family, source, demo)

    def entries(self, kind: str | None = None) -> list[Entry]:
        return [e for e in self._entries.values() if kind is None or e.kind == kind]

    def get(self, name: str) -> Entry:
        key = name.strip().lower()
        if key not in self._entries:
            raise CatalogueError(self._unknown("model", name, list(self._entries)))
        return self._entries[key]

    def resolve(self, model: str | None, regions: int | None = None) -> Entry:
        """The transformer entry meant by a name (None: the default family) and a region count;
        a family without ``regions`` gives its member with the most regions (the fastest)."""
        model = model or self.default_family
        key = model.strip().lower()
        if key in self.families:
            members = self.families[key]
            found = [member for member in members if regions in (None, member.regions)]
            if found:
                return found[-1]
            available = ", ".join(str(m.regions) for m in members)
            raise CatalogueError(
                f"{key} has no {regions}-region checkpoint; available: {available}", "regions"
            )
        if key in self._entries:
            entry = self._entries[key]
            if entry.kind != "gpt":
                raise CatalogueError(
                    f"{entry.name} is a {entry.kind} tokenizer, not a generation model; "
                    f"choose one of: {', '.join(self.families)}"
                )
            if regions is not None and regions != entry.regions:
                hint = (
                    f", or use family {entry.family!r} to pick by regions" if entry.family else ""
                )
                raise CatalogueError(
                    f"{entry.name} is a {entry.regions}-region checkpoint, not {regions}; "
                    f"give no region count{hint}",
                    "regions",
                )
            return entry
        candidates = list(self.families) + [e.name for e in self.entries("gpt")]
        raise CatalogueError(self._unknown("model", model, candidates))

    def tokenizer_for(self, entry: Entry) -> Entry:
        """The "vq" entry that decodes a transformer entry's tokens."""
        if entry.kind == "vq":
            return entry
        return self.get(str(entry.tokenizer))

    @staticmethod
    def _unknown(what: str, name: str, candidates: list[str]) -> str:
        close = difflib.get_close_matches(name.strip().lower(), candidates, n=3, cutoff=0.6)
        if close:
            return f"unknown {what} {name!r}; did you mean {', '.join(close)}?"
        return f"unknown {what} {name!r}; known: {', '.join(candidates)}"


_chosen: list[Path] = []  # the --catalogue of this run, if one was given


def use_catalogue(path: str | Path | None) -> None:
    """Make `path` (--catalogue; None: the packaged one) what later `load_catalogue()`s read."""
    _chosen[:] = [Path(path)] if path is not None else []


_read_once = lru_cache(maxsize=8)(Catalogue.load)


def load_catalogue() -> Catalogue:
    """The catalogue chosen with `use_catalogue`, else the packaged one, read once and cached."""
    return _read_once(_chosen[0] if _chosen else DEFAULT_PATH)
