"""Downloading published checkpoints and keeping their converted copies in one cache.

A fetch finds or downloads the published file (resuming a ``.part`` file across runs, which
``hf_hub_download`` cannot), checks its sha256, converts it to safetensors under a temporary name
and renames it once it loads, all under an inter-process lock. A converted file exists under its
final name only when complete, so "present" means "the file exists".
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from parcli.config import GPT_PRESETS
from parcli.errors import UserError
from parcli.io.catalogue import Entry
from parcli.io.files import atomic_path, file_sha256, free_bytes

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no inter-process lock
    fcntl = None  # type: ignore[assignment]

BytesCallback = Callable[[int, "int | None"], None]
StatusCallback = Callable[[str], None]

REVISION = "main"
OFFLINE_ENV = ("PARCLI_OFFLINE", "HF_HUB_OFFLINE")
_TRUE = {"1", "true", "yes", "on"}


class FetchError(UserError):
    """A model file could not be made available; the message is one line meant for the user."""


# ------------------------------------------------------------------------------ locations


def cache_dir() -> Path:
    """Where converted weights live: $PARCLI_HOME, else $XDG_CACHE_HOME/parcli, else ~/.cache."""
    home = os.environ.get("PARCLI_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "parcli"


def _weights_dir() -> Path:
    return cache_dir() / "weights"


def converted_path(entry: Entry) -> Path:
    """The file generation reads for ``entry``: its package path, or its converted cache file."""
    if entry.is_packaged:
        return Path(str(entry.package_path))
    return _weights_dir() / f"{entry.name}.safetensors"


def record_path(entry: Entry) -> Path:
    """The JSON sidecar of a converted entry: source URL, sha256 and size of the download."""
    return _weights_dir() / f"{entry.name}.json"


def _lock_path(entry: Entry) -> Path:
    return _weights_dir() / f"{entry.name}.lock"


def raw_download_path(entry: Entry) -> Path:
    """Where the published file of ``entry`` is downloaded to in our cache (when complete)."""
    repo = str(entry.repo).replace("/", "--")
    return cache_dir() / "downloads" / repo / REVISION / str(entry.file)


def _part_path(entry: Entry) -> Path:
    final = raw_download_path(entry)
    return final.with_name(final.name + ".part")


def _part_info_path(entry: Entry) -> Path:
    final = raw_download_path(entry)
    return final.with_name(final.name + ".part.json")


def is_present(entry: Entry) -> bool:
    """True when ``entry`` needs no download: packaged, or converted into the cache."""
    return entry.is_packaged or converted_path(entry).is_file()


def missing_files(entries: Iterable[Entry]) -> list[Entry]:
    """The entries (each once, in order) that would have to be downloaded."""
    seen: set[str] = set()
    missing = []
    for entry in entries:
        if entry.name not in seen and not is_present(entry):
            missing.append(entry)
        seen.add(entry.name)
    return missing


def read_record(entry: Entry) -> dict[str, Any] | None:
    """The sidecar of a converted entry, or None when absent or unreadable."""
    return _read_json(record_path(entry))


# ------------------------------------------------------------------------------ offline


def offline_requested(flag: bool = False) -> bool:
    """``--offline``, or PARCLI_OFFLINE / HF_HUB_OFFLINE set to a true value."""
    return flag or any(os.environ.get(name, "").strip().lower() in _TRUE for name in OFFLINE_ENV)


def offline_message(entry: Entry) -> str:
    return (
        f"{entry.name} is not downloaded ({entry.filename}); run `par weights fetch {entry.name}`,"
        " or use the model `digits`, which ships with parcli"
    )


# ------------------------------------------------------------------------------ helpers


def _hf_cache_dir() -> str | None:
    """The HF cache named by the environment now (None: huggingface_hub's own default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def _endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def download_url(entry: Entry) -> str:
    """The URL huggingface_hub asks for this entry (honours HF_ENDPOINT)."""
    from huggingface_hub import hf_hub_url

    return hf_hub_url(str(entry.repo), str(entry.file), revision=REVISION, endpoint=_endpoint())


REACH_TIMEOUT = 5.0  # seconds to open a connection to the Hub before calling it unreachable


def download_host(entry: Entry) -> str:
    """The host a download of ``entry`` comes from (huggingface.co, or HF_ENDPOINT's)."""
    url = download_url(entry)
    return urlsplit(url).netloc or url


def check_reachable(entry: Entry, timeout: float = REACH_TIMEOUT) -> None:
    """Fail at once, in one line, where the Hub cannot be reached at all (no network, no such
    host): huggingface_hub would retry five times over about 20 s, logging every retry."""
    if urllib.request.getproxies():  # a proxy may reach what a direct connection cannot
        return
    parts = urlsplit(download_url(entry))
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as exc:
        raise _download_error(entry, exc) from None


def human_size(size: int | None) -> str:
    if size is None:
        return "unknown size"
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def check_free_space(what: str, download: int, converted: int) -> None:
    """Refuse, before writing anything, a fetch or conversion whose download and converted copy
    would not fit on the cache's disk."""
    needed = download + converted
    free = free_bytes(cache_dir())
    if needed > free:
        parts = f"{human_size(download)} to download, " if download else ""
        raise FetchError(
            f"{what} needs {human_size(needed)} free in {cache_dir()} ({parts}"
            f"{human_size(converted)} for the converted copy), but that disk has "
            f"{human_size(free)} free; make room, or set PARCLI_HOME to a folder on a larger disk"
        )


def keep_original_requested(flag: bool = False) -> bool:
    """--keep-original, or PARCLI_KEEP_ORIGINAL=1: keep our raw download after conversion."""
    return flag or os.environ.get("PARCLI_KEEP_ORIGINAL", "").strip().lower() in _TRUE


@contextlib.contextmanager
def _locked(path: Path, on_status: StatusCallback | None, what: str) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created if needed, never deleted)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_status is not None:
                    on_status(f"waiting for another process fetching {what}")
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class _ByteBar:
    """Stands in for tqdm inside huggingface_hub (its ``tqdm_class`` hook) and forwards byte
    counts to ``callback``, so its own bars stay off."""

    callback: BytesCallback | None = None

    def __init__(self, *args: Any, total: int | None = None, initial: int = 0, **kwargs: Any):
        self.n = int(initial or 0)
        self.total = total
        self._report()

    def _report(self) -> None:
        if self.callback is not None:
            type(self).callback(max(self.n, 0), self.total)  # type: ignore[misc]

    def update(self, n: int | float = 1) -> None:
        self.n += int(n)
        self._report()

    def refresh(self, *args: Any, **kwargs: Any) -> None:
        self._report()

    def close(self, *args: Any, **kwargs: Any) -> None:
        pass

    update_transfer = set_postfix_str = set_transfer_postfix_str = set_description = close

    def __enter__(self) -> _ByteBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _bar_class(on_bytes: BytesCallback | None) -> type[_ByteBar]:
    return type("_EntryByteBar", (_ByteBar,), {"callback": staticmethod(on_bytes)})


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _download_error(entry: Entry, exc: BaseException, resumable: bool = False) -> FetchError:
    """One line saying why huggingface_hub could not download ``entry``."""
    url = download_url(entry)
    host = urlsplit(url).netloc or url
    again = f"run `par weights fetch {entry.name}` again to resume" if resumable else ""
    for err in _chain(exc):
        response = getattr(err, "response", None)
        status = getattr(response, "status_code", None)
        if isinstance(status, int):
            name = type(err).__name__
            if name == "GatedRepoError":
                return FetchError(
                    f"{entry.repo} is gated: accept its terms on the Hub, then log in with "
                    f"`hf auth login` (or set HF_TOKEN) and fetch {entry.name} again"
                )
            if status == 404 or name in ("RepositoryNotFoundError", "RemoteEntryNotFoundError"):
                return FetchError(f"{entry.name}: {entry.file} not found at {url}")
            if status in (401, 403):
                return FetchError(
                    f"{entry.name}: access to {url} was refused (HTTP {status}); "
                    "log in with `hf auth login` or set HF_TOKEN"
                )
            if status >= 500:
                return FetchError(
                    f"{entry.name}: server error (HTTP {status}) from {host} while fetching "
                    f"{entry.file}; try again later" + (f" ({again})" if again else "")
                )
            return FetchError(f"{entry.name}: HTTP {status} from {url}")
    for err in _chain(exc):
        name = type(err).__name__
        if name in ("ConnectError", "ConnectionError", "ConnectTimeout", "ProxyError") or (
            isinstance(err, ConnectionRefusedError | socket.gaierror)
        ):
            return FetchError(
                f"{entry.name}: cannot connect to {host} ({_short(err)}); check the network, "
                "or set HF_ENDPOINT to a mirror" + (f", then {again}" if again else "")
            )
        if "Timeout" in name or isinstance(err, TimeoutError):
            return FetchError(
                f"{entry.name}: {host} did not answer in time while fetching {entry.file}; "
                "try again later" + (f" ({again})" if again else "")
            )
        if isinstance(err, OSError) and err.errno == 28:
            return FetchError(
                f"{entry.name}: no space left to download {entry.file} "
                f"(about {human_size(entry.approx_size_bytes)}); free some disk space"
            )
        if name in ("RemoteProtocolError", "ReadError", "ChunkedEncodingError") or (
            "Consistency check failed" in str(err)
        ):
            return FetchError(
                f"{entry.name}: the download of {entry.file} was interrupted ({_short(err)}); "
                f"run `par weights fetch {entry.name}` again" + (" to resume" if again else "")
            )
    return FetchError(f"{entry.name}: cannot download {entry.file} from {host}: {_short(exc)}")


def cached_download(entry: Entry) -> Path | None:
    """The published file in the HF cache, found without any network access."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(
        str(entry.repo), str(entry.file), cache_dir=_hf_cache_dir(), revision=REVISION
    )
    return Path(found) if isinstance(found, str) and os.path.isfile(found) else None


def local_download(entry: Entry) -> Path | None:
    """The complete published file, in the HF cache or our downloads folder (no network)."""
    found = cached_download(entry)
    if found is not None:
        return found
    ours = raw_download_path(entry)
    return ours if ours.is_file() else None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _download(entry: Entry, on_bytes: BytesCallback | None) -> Path:
    """Download ``entry`` into our downloads folder, resuming a part file left by an earlier run."""
    from huggingface_hub import get_hf_file_metadata
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    url = download_url(entry)
    check_reachable(entry)
    try:
        remote = get_hf_file_metadata(url, endpoint=_endpoint(), retry_on_errors=True)
    except Exception as exc:
        raise _download_error(entry, exc) from None
    final, part, info = raw_download_path(entry), _part_path(entry), _part_info_path(entry)
    final.parent.mkdir(parents=True, exist_ok=True)
    expected = {"url": url, "etag": remote.etag, "size": remote.size, "commit": remote.commit_hash}
    stored = _read_json(info) or {}
    have = part.stat().st_size if part.is_file() else 0
    same = stored.get("etag") == remote.etag and stored.get("size") == remote.size
    resumable = same and remote.etag is not None and remote.size is not None
    resumable = resumable and have <= remote.size
    if remote.size is not None:  # the converted copy is at most the size of the download
        check_free_space(entry.name, remote.size - (have if resumable else 0), remote.size)
    if not resumable:
        # Another version of the file, or no way to tell: start over.
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
        have = 0
        with atomic_path(info) as tmp:
            tmp.write_text(json.dumps(expected, indent=2) + "\n", encoding="utf-8")
    headers = build_hf_headers()
    headers["Accept-Encoding"] = "identity"  # byte offsets must be those of the file itself
    try:
        with open(part, "ab") as handle:
            http_get(
                remote.location,
                handle,
                resume_size=have,
                headers=headers,
                expected_size=remote.size,
                displayed_filename=entry.filename,
                tqdm_class=_bar_class(on_bytes),  # type: ignore[arg-type]
            )
            handle.flush()
            os.fsync(handle.fileno())
    except Exception as exc:
        kept = part.is_file() and part.stat().st_size > 0
        raise _download_error(entry, exc, resumable=kept) from None
    os.replace(part, final)
    with contextlib.suppress(FileNotFoundError):
        info.unlink()
    return final


def _discard_download(path: Path) -> None:
    """Delete a downloaded file: in the HF cache the blob and the snapshot link to it."""
    blob = Path(os.path.realpath(path))
    for item in (path, blob):
        with contextlib.suppress(FileNotFoundError):
            item.unlink()


def conversion_args(entry: Entry, heads: int | None = None) -> dict[str, Any]:
    """What ``convert`` must be told for ``entry`` beyond the file itself."""
    if entry.kind != "gpt":
        return {}
    return {"heads": heads, "grid": entry.grid}


def _check_matches(entry: Entry, meta: dict[str, str]) -> None:
    """The converted file holds what the catalogue says it does."""
    problems = []
    if meta.get("kind") != entry.kind:
        problems.append(f"kind {meta.get('kind')} (expected {entry.kind})")
    if entry.kind == "gpt":
        if entry.regions is not None and meta.get("regions") != str(entry.regions):
            problems.append(f"{meta.get('regions')} regions (expected {entry.regions})")
        if entry.arch in GPT_PRESETS and meta.get("arch") != entry.arch:
            problems.append(f"architecture {meta.get('arch')} (expected {entry.arch})")
    if problems:
        raise FetchError(
            f"{entry.name}: the downloaded {entry.file} holds {', '.join(problems)}; "
            "weights.toml disagrees with the published file"
        )


def _convert(
    entry: Entry,
    source: Path,
    sha256: str | None,
    heads: int | None,
    on_status: StatusCallback | None,
    dtype: str = "keep",
) -> str:
    """Convert ``source`` into the cache under the final name; returns the source sha256."""
    from parcli.io.checkpoints import read_checkpoint
    from parcli.io.convert import convert
    from parcli.io.tensors import WeightsError

    target = converted_path(entry)
    target.parent.mkdir(parents=True, exist_ok=True)
    if on_status is not None:
        on_status(f"converting {entry.filename} to safetensors")
    extra = {"catalogue_name": entry.name, "source_url": download_url(entry)}
    if entry.kind == "gpt" and entry.cfg_scale is not None:
        extra["cfg_scale"] = str(entry.cfg_scale)
    try:
        with atomic_path(target) as tmp:
            args = conversion_args(entry, heads)
            meta = convert(source, tmp, extra_metadata=extra, dtype=dtype, **args)
            if sha256 is not None and meta.get("source_sha256") != sha256:
                raise FetchError(f"{entry.name}: {source} changed while it was converted")
            if on_status is not None:
                on_status(f"verifying {target.name}")
            state, *_ = read_checkpoint(tmp)
            del state
            _check_matches(entry, meta)
    except WeightsError as exc:
        raise FetchError(
            f"{entry.name}: cannot convert the downloaded {entry.file}: {exc} "
            f"(if it is damaged: `par weights remove {entry.name} --download`, then fetch again)"
        ) from None
    return meta.get("source_sha256") or sha256 or ""


def _write_record(entry: Entry, source: Path, sha256: str, kept: bool) -> None:
    record = {
        "name": entry.name,
        "repo": entry.repo,
        "file": entry.file,
        "revision": REVISION,
        "url": download_url(entry),
        "downloaded_to": str(source),
        "download_kept": kept,
        "size_bytes": source.stat().st_size,
        "sha256": sha256,
        "sha256_expected": entry.sha256,
        "converted": str(converted_path(entry)),
        "fetched_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    path = record_path(entry)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------ public


def local_converted_path(source: Path) -> Path:
    """Where the converted copy of a file given by path lives, keyed so a changed file converts
    again."""
    import hashlib

    status = source.stat()
    key = f"{source.resolve()}|{status.st_size}|{status.st_mtime_ns}"
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return cache_dir() / "converted" / f"{source.stem}-{digest}.safetensors"


def convert_local(source: Path, on_status: StatusCallback | None = None) -> Path:
    """The safetensors copy of a `.pt` given by path, converted into the cache on first use."""
    from parcli.io.convert import HeadsUnknown, convert
    from parcli.io.tensors import WeightsError

    target = local_converted_path(source)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.with_suffix(".lock"), on_status, source.name):
        if target.is_file():
            return target
        check_free_space(source.name, 0, source.stat().st_size)
        if on_status is not None:
            on_status(f"converting {source.name} to safetensors (once; kept in {target.parent})")
        try:
            convert(source, target)
        except HeadsUnknown:
            raise  # models.as_safetensors names the command that takes --heads
        except WeightsError as exc:
            raise FetchError(str(exc)) from None
    return target


def fetch(
    entry: Entry,
    *,
    offline: bool = False,
    on_bytes: BytesCallback | None = None,
    heads: int | None = None,
    on_status: StatusCallback | None = None,
    keep_original: bool = False,
    dtype: str = "keep",
) -> Path:
    """Make ``entry`` available locally and return the path of its converted file.

    Our raw download is deleted once converted unless ``keep_original``, so one copy stays; a
    file in the user's Hugging Face cache is never touched.
    """
    target = converted_path(entry)
    if entry.is_packaged:
        if not target.is_file():
            raise FetchError(
                f"{entry.name} ships with parcli but {target} is missing; reinstall parcli"
            )
        return target
    if target.is_file():
        return target
    offline = offline_requested(offline)
    with _locked(_lock_path(entry), on_status, entry.name):
        if target.is_file():  # another process finished it while we waited
            return target
        source = local_download(entry)
        if source is None and not offline:
            source = _download(entry, on_bytes)
        if source is None:
            raise FetchError(offline_message(entry))
        sha256 = None
        if entry.sha256 is not None:
            if on_status is not None:
                on_status(f"checking the sha256 of {entry.filename}")
            sha256 = file_sha256(source)
            if sha256 != entry.sha256:
                _discard_download(source)
                raise FetchError(
                    f"{entry.name}: sha256 of the downloaded {entry.file} is {sha256}, but "
                    f"weights.toml expects {entry.sha256}; the download was discarded"
                )
        check_free_space(entry.name, 0, source.stat().st_size)
        # convert() hashes the source too and records it as the file's `source_sha256`.
        sha256 = _convert(entry, source, sha256, heads, on_status, dtype)
        ours = source == raw_download_path(entry)
        kept = not ours or keep_original_requested(keep_original)
        _write_record(entry, source, sha256, kept)
        if not kept:
            source.unlink()
        return target


def ensure_files(
    entries: Iterable[Entry],
    offline: bool = False,
    download: Callable[[Entry], Path] | None = None,
) -> dict[str, Path]:
    """Local paths of ``entries`` by name, fetching what is missing first (each once).

    Offline, a complete download already on disk is still converted, and anything else missing
    fails before any work.
    """
    entries = list(entries)
    missing = missing_files(entries)
    if missing and offline_requested(offline):
        for entry in missing:
            fetch(entry, offline=True)
        missing = []
    paths: dict[str, Path] = {}
    for entry in entries:
        if entry.name not in paths:
            wanted = entry in missing
            paths[entry.name] = (download or fetch)(entry) if wanted else converted_path(entry)
    return paths


def remove(entry: Entry, *, download: bool = False) -> int:
    """Delete the converted file of ``entry`` (with ``download`` also the downloaded original,
    ours and the HF-cache copy); returns the number of bytes freed."""
    if entry.is_packaged:
        raise FetchError(f"{entry.name} ships with parcli; there is nothing to remove")
    freed = 0
    paths = [converted_path(entry), record_path(entry)]
    if download:
        paths += [raw_download_path(entry), _part_path(entry), _part_info_path(entry)]
    with _locked(_lock_path(entry), None, entry.name):
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                size = path.stat().st_size
                path.unlink()
                freed += size
        if download:
            source = cached_download(entry)
            if source is not None:
                freed += source.stat().st_size
                _discard_download(source)
    return freed
