"""The catalogue of known checkpoints, read from ``weights.toml``.

A model is named either by an entry (``par-3b-16x``) or by a family (``par-3b``): the checkpoints of
one architecture that differ only in their number of PAR regions (LlamaGen's file is n = 1).
"""

from __future__ import annotations

import difflib
import math
import os
import re
import stat
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from parcli.config import CHECKPOINT_KINDS, MAX_TOKENS, SUPPORTED_REGIONS
from parcli.errors import UserError
from parcli.io.classes import CLASS_SETS, IMAGENET

PACKAGE_DIR = Path(__file__).resolve().parent.parent
DEFAULT_PATH = Path(__file__).parent.parent / "weights.toml"
HF_URL = "https://huggingface.co/{repo}/resolve/main/{file}"

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


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
        """Base name of the checkpoint file."""
        return PurePosixPath(self.path if self.path is not None else str(self.file)).name

    @property
    def source(self) -> str:
        """Where the file comes from: its URL, or its path inside the package."""
        if self.path is not None:
            return str(self.package_path)
        return str(self.url)


# field name -> (accepted types, description for error messages)
_FIELD_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "kind": ((str,), "a string"),
    "arch": ((str,), "a string"),
    "licence": ((str,), "a string"),
    "repo": ((str,), "a string"),
    "file": ((str,), "a string"),
    "url": ((str,), "a string"),
    "path": ((str,), "a string"),
    "grid": ((list,), "a list of positive integers"),
    "regions": ((int,), "an integer"),
    "family": ((str,), "a string"),
    "tokenizer": ((str,), "a string"),
    "cfg_scale": ((int, float), "a number"),
    "temperature": ((int, float), "a number"),
    "top_k": ((int,), "an integer"),
    "top_p": ((int, float), "a number"),
    "fid": ((int, float), "a number"),
    "approx_size_bytes": ((int,), "an integer"),
    "sha256": ((str,), "a string"),
    "notes": ((str,), "a string"),
    "classes": ((str,), "a string"),
}
# Sampling settings the [sampling] table gives every transformer that sets none of its own.
SAMPLING_FIELDS = ("temperature", "top_k", "top_p")
_REQUIRED = {
    "gpt": ("kind", "arch", "licence", "grid", "regions", "family", "tokenizer", "cfg_scale"),
    "vq": ("kind", "arch", "licence"),
}


_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def _entry_from_table(name: str, table: Any, label: str = "weights.toml") -> Entry:
    where = f"{label} entry {name!r}"
    if not _NAME_RE.match(name):
        raise CatalogueError(f"{where}: names must be lower-case letters, digits, '.', '_' or '-'")
    if not isinstance(table, dict):
        raise CatalogueError(f"{where} must be a table")
    unknown = sorted(set(table) - set(_FIELD_TYPES))
    if unknown:
        raise CatalogueError(f"{where}: unknown field {unknown[0]!r}")
    for key, value in table.items():
        types, what = _FIELD_TYPES[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise CatalogueError(f"{where}: field {key!r} must be {what}")
    kind = table.get("kind")
    if kind is None:
        raise CatalogueError(f"{where}: missing field 'kind'")
    if kind not in CHECKPOINT_KINDS:
        expected = ", ".join(CHECKPOINT_KINDS)
        raise CatalogueError(f"{where}: unknown kind {kind!r} (expected one of {expected})")
    for key in _REQUIRED[kind]:
        if key not in table:
            raise CatalogueError(f"{where}: missing field {key!r}")

    data = dict(table)
    path = data.get("path")
    if path is not None:
        if any(k in data for k in ("repo", "file", "url")):
            raise CatalogueError(f"{where}: give either 'path' or 'repo'/'file', not both")
        pure = PurePosixPath(path)
        if pure.is_absolute() or ".." in pure.parts or "\\" in path or not pure.parts:
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
        file = PurePosixPath(data["file"])
        if file.is_absolute() or ".." in file.parts or "\\" in data["file"] or not file.parts:
            raise CatalogueError(f"{where}: field 'file' must be a path inside the repository")
        if "url" not in data:
            data["url"] = HF_URL.format(repo=data["repo"], file=data["file"])
        elif not data["url"].startswith("https://"):
            raise CatalogueError(f"{where}: field 'url' must be an https:// address")

    if "grid" in data:
        grid = data["grid"]
        if not (2 <= len(grid) <= 3) or not all(
            isinstance(g, int) and not isinstance(g, bool) and g > 0 for g in grid
        ):
            raise CatalogueError(f"{where}: field 'grid' must be 2 or 3 positive integers")
        if math.prod(grid) > MAX_TOKENS:
            raise CatalogueError(f"{where}: field 'grid' has more than {MAX_TOKENS} tokens")
        data["grid"] = tuple(grid)
    if "regions" in data and data["regions"] not in SUPPORTED_REGIONS:
        allowed = ", ".join(map(str, SUPPORTED_REGIONS))
        raise CatalogueError(f"{where}: field 'regions' must be one of {allowed}")
    for key in ("cfg_scale", "fid", "temperature", "top_p"):
        if key in data:
            data[key] = float(data[key])
    if data.get("cfg_scale", 0) < 0 or data.get("temperature", 0) < 0 or data.get("top_k", 0) < 0:
        raise CatalogueError(f"{where}: cfg_scale, temperature and top_k must be >= 0")
    if not 0 < data.get("top_p", 1) <= 1:
        raise CatalogueError(f"{where}: field 'top_p' must be in (0, 1]")
    if "sha256" in data:
        data["sha256"] = data["sha256"].lower()
        if not _SHA256_RE.match(data["sha256"]):
            raise CatalogueError(f"{where}: field 'sha256' must be 64 hexadecimal digits")
    if data.get("classes", IMAGENET) not in CLASS_SETS:
        raise CatalogueError(f"{where}: field 'classes' must be one of {', '.join(CLASS_SETS)}")
    if "family" in data and not _NAME_RE.match(data["family"]):
        raise CatalogueError(f"{where}: field 'family' must be a lower-case name")
    return Entry(name=name, **data)


DEMO_FIELDS = ("cfg_scale", *SAMPLING_FIELDS)


def _demo_settings(table: Any, label: str = "weights.toml") -> dict[str, float]:
    """The [demo] table: sampling settings `par generate` uses for published checkpoints."""
    where = f"{label}: [demo]"
    if not isinstance(table, dict) or set(table) - set(DEMO_FIELDS):
        raise CatalogueError(f"{where} may only set {', '.join(DEMO_FIELDS)}")
    for key, value in table.items():
        integral = key == "top_k"
        kinds = (int,) if integral else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not value >= 0:
            what = "an integer" if integral else "a number"
            raise CatalogueError(f"{where}: {key!r} must be {what} >= 0")
    if not 0 < table.get("top_p", 1) <= 1:
        raise CatalogueError(f"{where}: 'top_p' must be in (0, 1]")
    return dict(table)


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
        self._families = {
            fam: tuple(sorted(members, key=lambda e: e.regions or 0))
            for fam, members in sorted(families.items())
        }
        self._validate()

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, path: str | Path | None = None) -> Catalogue:
        """Read and validate a catalogue file (default: the one shipped with the package)."""
        file = Path(path) if path is not None else DEFAULT_PATH
        try:
            text = _read_small_file(file).decode("utf-8")
        except OSError as exc:
            raise CatalogueError(f"cannot read model catalogue {file}: {exc.strerror}") from exc
        except UnicodeDecodeError:
            raise CatalogueError(f"model catalogue {file} is not UTF-8 text") from None
        try:
            data = tomllib.loads(text)
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
        return cls(entries, default_family, source, _demo_settings(data.get("demo", {}), label))

    def _validate(self) -> None:
        label = self.source.name if self.source is not None else "weights.toml"
        for entry in self._entries.values():
            if entry.kind != "gpt":
                continue
            tok = self._entries.get(entry.tokenizer or "")
            if tok is None or tok.kind != "vq":
                raise CatalogueError(
                    f"{label} entry {entry.name!r}: field 'tokenizer' names "
                    f"{entry.tokenizer!r}, which is not a 'vq' entry"
                )
        for fam, members in self._families.items():
            if fam in self._entries:
                raise CatalogueError(f"{label}: {fam!r} is both a family and an entry name")
            seen: dict[int | None, str] = {}
            for member in members:
                if member.regions in seen:
                    raise CatalogueError(
                        f"{label}: family {fam!r} has two {member.regions}-region "
                        f"checkpoints ({seen[member.regions]}, {member.name})"
                    )
                seen[member.regions] = member.name
        if self.default_family not in self._families:
            raise CatalogueError(f"{label}: default_family {self.default_family!r} is not a family")

    # ------------------------------------------------------------------ lookup

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.strip().lower() in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def entries(self, kind: str | None = None) -> list[Entry]:
        return [e for e in self._entries.values() if kind is None or e.kind == kind]

    def families(self) -> dict[str, tuple[Entry, ...]]:
        """Family name -> its members, fewest regions first."""
        return dict(self._families)

    def family(self, name: str) -> tuple[Entry, ...]:
        key = name.strip().lower()
        if key not in self._families:
            raise CatalogueError(self._unknown("family", name, list(self._families)))
        return self._families[key]

    def get(self, name: str) -> Entry:
        key = name.strip().lower()
        if key not in self._entries:
            raise CatalogueError(self._unknown("model", name, list(self._entries)))
        return self._entries[key]

    def resolve(self, model: str, regions: int | None = None) -> Entry:
        """The transformer checkpoint meant by an entry or family name and a region count; a
        family without ``regions`` gives its member with the most regions (the fastest)."""
        key = model.strip().lower()
        if key in self._families:
            members = self._families[key]
            if regions is None:
                return members[-1]
            for member in members:
                if member.regions == regions:
                    return member
            available = ", ".join(str(m.regions) for m in members)
            raise CatalogueError(
                f"{key} has no {regions}-region checkpoint; available: {available}", "regions"
            )
        if key in self._entries:
            entry = self._entries[key]
            if entry.kind != "gpt":
                raise CatalogueError(
                    f"{entry.name} is a {entry.kind} tokenizer, not a generation model; "
                    f"choose one of: {', '.join(self._families)}"
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
        candidates = list(self._families) + [e.name for e in self.entries("gpt")]
        raise CatalogueError(self._unknown("model", model, candidates))

    def tokenizer_for(self, entry: Entry | str) -> Entry:
        """The "vq" entry that decodes a transformer entry's tokens."""
        if isinstance(entry, str):
            entry = self.get(entry)
        if entry.kind == "vq":
            return entry
        return self.get(str(entry.tokenizer))

    def default(self, regions: int | None = None) -> Entry:
        """The checkpoint used when no model is named."""
        return self.resolve(self.default_family, regions)

    @staticmethod
    def _unknown(what: str, name: str, candidates: list[str]) -> str:
        close = difflib.get_close_matches(name.strip().lower(), candidates, n=3, cutoff=0.6)
        if close:
            return f"unknown {what} {name!r}; did you mean {', '.join(close)}?"
        return f"unknown {what} {name!r}; known: {', '.join(candidates)}"


MAX_CATALOGUE_BYTES = 1 << 20  # the packaged catalogue is about 10 KiB


def _read_small_file(file: Path) -> bytes:
    """The bytes of a regular file of at most MAX_CATALOGUE_BYTES: a FIFO, a device such as
    /dev/zero or a folder would be read forever, or fail obscurely."""
    # Non-blocking, so that opening a FIFO with no writer returns at once, to be refused.
    handle = os.open(file, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(handle, "rb") as stream:
        if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
            raise CatalogueError(f"model catalogue {file} is not a regular file; give a .toml file")
        data = stream.read(MAX_CATALOGUE_BYTES + 1)
    if len(data) > MAX_CATALOGUE_BYTES:
        raise CatalogueError(
            f"model catalogue {file} is over {MAX_CATALOGUE_BYTES >> 20} MiB; give a weights.toml"
        )
    return data


_chosen: list[Path] = []  # the --catalogue of this run, if one was given


def use_catalogue(path: str | Path | None) -> None:
    """Make `path` (the command line's --catalogue) the catalogue every later `load_catalogue()`
    of this process reads; None: the packaged one."""
    _chosen[:] = [Path(path)] if path is not None else []


@lru_cache(maxsize=8)
def _read_once(path: Path) -> Catalogue:
    return Catalogue.load(path)


def load_catalogue(path: str | Path | None = None) -> Catalogue:
    """The catalogue at ``path``; without one, the one chosen with `use_catalogue` or else the
    packaged one, read once and cached."""
    if path is not None:
        return Catalogue.load(path)
    return _read_once(_chosen[0] if _chosen else DEFAULT_PATH)
