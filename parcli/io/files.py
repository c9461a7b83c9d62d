"""The one way `par` writes a file (a temporary file beside it, fsynced, renamed over it: never a
partial file under the final name), and the checks that find an unusable output path early."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from parcli.errors import UserError

PathLike = str | os.PathLike


class OutputError(UserError):
    """An output path the user has to change."""


# `.par-<name hash>-<random><suffix>`, and the `.<stem>.tmp-<random><suffix>` of earlier versions
# (still removed when a resumed run finds them).
_TEMP_NAME = re.compile(r"\.par-[0-9a-f]{8}-[0-9a-f]{8}(\.[^.]*)?|\..*\.tmp-[0-9a-f]{8}(\.[^.]*)?")


def _create_temp(path: Path) -> Path:
    """A new empty file beside `path`, named short so that any name the file system takes works."""
    name_hash = hashlib.sha256(os.fsencode(path.name)).hexdigest()[:8]
    tmp = path.with_name(f".par-{name_hash}-{secrets.token_hex(4)}{path.suffix}")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # never another's file
    return tmp


def remove_temporaries(folder: Path) -> list[Path]:
    """Remove what `atomic_path` left in `folder` (par's alone: they are known by name only)."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in Path(folder).iterdir():
            if _TEMP_NAME.fullmatch(entry.name) and entry.is_file() and not entry.is_symlink():
                with contextlib.suppress(OSError):
                    entry.unlink()
                    removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_path(path: PathLike, setting: str | None = None) -> Iterator[Path]:
    """A temporary path (same folder and suffix) renamed over ``path`` on success, else removed
    (Ctrl-C included), the target untouched; an OSError becomes an `OutputError` on `setting`."""
    target = Path(path)
    try:
        tmp = _create_temp(target)
    except OSError as exc:
        problem = _diagnose(target) or f"cannot write {target}: {_reason(exc)}"
        raise OutputError(problem, setting) from exc
    try:
        yield tmp
        with open(tmp, "rb+") as handle:  # make the content durable before it gets the name
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {target}: {_reason(exc)}", setting) from exc
        raise
    with contextlib.suppress(OSError):  # the rename itself made durable
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: PathLike, writer: Callable[[Path], object]) -> Path:
    """Call ``writer(tmp_path)`` and move the result to ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or None when it is missing, unreadable, nested past Python's
    recursion limit or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: PathLike, data: object, setting: str | None = None) -> None:
    with atomic_path(path, setting) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _reason(exc: OSError) -> str:
    text = exc.strerror or str(exc) or type(exc).__name__
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def file_sha256(path: PathLike) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def cached_sha256(path: PathLike) -> str:
    """`file_sha256` of weights, hashed once per process; size and modification time are part of
    the key, so a replaced file is hashed again."""
    status = Path(path).stat()
    return _remembered_sha256(Path(path).resolve(), status.st_size, status.st_mtime_ns)


@functools.cache
def _remembered_sha256(path: Path, size: int, modified_ns: int) -> str:
    return file_sha256(path)


def _diagnose(path: Path, folder: bool = False) -> str | None:
    """Why ``path`` cannot be created as a file (or as a `folder`), or None if it looks fine."""
    what = f"cannot {'create directory' if folder else 'write'} {path}"
    if path.is_dir():
        return _probe_directory(path, path) if folder else f"{what}: it is a directory"
    if folder and path.exists():
        return f"{what}: a file of that name exists"
    if not path.parent.exists():
        return f"{what}: directory {path.parent} does not exist; create it or choose another path"
    if not path.parent.is_dir():
        return f"{what}: {path.parent} is not a directory"
    return _probe_directory(path.parent, path)


def _probe_directory(directory: Path, shown: Path) -> str | None:
    """Why no file can be created in ``directory``, or None."""
    try:
        tmp = _create_temp(directory / ".parcli-probe")
        tmp.unlink()
    except PermissionError:
        return f"cannot write {shown}: directory {directory} is not writable; choose another path"
    except OSError as exc:
        return f"cannot write {shown}: {_reason(exc)}"
    return None


def is_directory_target(output: PathLike) -> bool:
    """Whether ``output`` ends with a separator or is an existing directory."""
    text = os.fspath(output)
    return text.endswith(("/", os.sep)) or Path(text).is_dir()


def check_writable(
    path: PathLike,
    suffixes: Sequence[str] | None = None,
    *,
    allow_directory: bool = False,
    setting: str | None = "output",
) -> Path:
    """Refuse, before any expensive work, a target that cannot be written or has a suffix not in
    ``suffixes``; with ``allow_directory``, it may also be a folder (existing or new)."""
    target, folder = Path(path), allow_directory and is_directory_target(path)
    if not folder and suffixes is not None and target.suffix.lower() not in suffixes:
        shown = target.suffix or "(no suffix)"
        # A new folder given without its trailing slash reads as a file without a suffix.
        folder_too = f", or {target}/ for a folder" if allow_directory and not target.suffix else ""
        problem = (
            f"cannot write {target}: unsupported file type {shown}; use {' or '.join(suffixes)}"
            f"{folder_too}"
        )
    else:
        problem = _diagnose(target, folder)
    if problem:
        raise OutputError(problem, setting)
    return target


def free_bytes(folder: PathLike) -> int:
    """Free bytes on the file system that holds `folder` (or would, once it is created)."""
    probe = Path(folder).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free
