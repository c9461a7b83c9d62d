"""Published checkpoints downloaded (a ``.part`` resumed across runs, which ``hf_hub_download``
cannot), checked and converted into one cache under a lock; "present" means "the file exists"."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from parcli.config import GPT_PRESETS
from parcli.errors import UserError
from parcli.io.catalogue import Entry
from parcli.io.files import atomic_path, file_sha256, free_bytes, read_json, write_json

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no inter-process lock
    fcntl = None  # type: ignore[assignment]

BytesCallback = Callable[[int, "int | None"], None]
StatusCallback = Callable[[str], None]

REVISION = "main"
_TRUE = {"1", "true", "yes", "on"}


class FetchError(UserError):
    """A model file could not be made available; the message is one line meant for the user."""


def cache_dir() -> Path:
    """Where converted weights live: $PARCLI_HOME, else $XDG_CACHE_HOME/parcli, else ~/.cache."""
    if os.environ.get("PARCLI_HOME"):
        return Path(os.environ["PARCLI_HOME"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "parcli"


def _in_weights(entry: Entry, suffix: str) -> Path:
    return cache_dir() / "weights" / f"{entry.name}{suffix}"


def converted_path(entry: Entry) -> Path:
    """The file generation reads for ``entry``: its package path, or its converted cache file."""
    return (
        Path(str(entry.package_path)) if entry.is_packaged else _in_weights(entry, ".safetensors")
    )


def raw_download_path(entry: Entry) -> Path:
    """Where the published file of ``entry`` is downloaded to in our cache (when complete)."""
    repo = str(entry.repo).replace("/", "--")
    return cache_dir() / "downloads" / repo / REVISION / str(entry.file)


def _part_paths(entry: Entry) -> tuple[Path, Path]:
    """The partial download of ``entry`` and the JSON saying which remote file it is part of."""
    final = raw_download_path(entry)
    return final.with_name(final.name + ".part"), final.with_name(final.name + ".part.json")


def is_present(entry: Entry) -> bool:
    """True when ``entry`` needs no download: packaged, or converted into the cache."""
    return entry.is_packaged or converted_path(entry).is_file()


def read_record(entry: Entry) -> dict[str, Any] | None:
    """The sidecar of a converted entry (source URL, sha256, size), or None when unreadable."""
    return read_json(_in_weights(entry, ".json"))


def offline_requested(flag: bool = False) -> bool:
    """``--offline``, or PARCLI_OFFLINE / HF_HUB_OFFLINE set to a true value."""
    names = ("PARCLI_OFFLINE", "HF_HUB_OFFLINE")
    return flag or any(os.environ.get(name, "").strip().lower() in _TRUE for name in names)


def download_url(entry: Entry) -> str:
    """The URL huggingface_hub asks for this entry (honours HF_ENDPOINT)."""
    from huggingface_hub import hf_hub_url

    endpoint = os.environ.get("HF_ENDPOINT") or None
    return hf_hub_url(str(entry.repo), str(entry.file), revision=REVISION, endpoint=endpoint)


def download_host(entry: Entry) -> str:
    """The host a download of ``entry`` comes from (huggingface.co, or HF_ENDPOINT's)."""
    url = download_url(entry)
    return urlsplit(url).netloc or url


def check_reachable(entry: Entry, timeout: float = 5.0) -> None:
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
    from rich.filesize import decimal

    return "unknown size" if size is None else decimal(size)


def check_free_space(what: str, download: int, converted: int) -> None:
    """Refuse, before writing anything, a fetch or conversion that would not fit on the disk."""
    needed, free = download + converted, free_bytes(cache_dir())
    if needed > free:
        parts = f"{human_size(download)} to download, " if download else ""
        raise FetchError(
            f"{what} needs {human_size(needed)} free in {cache_dir()} ({parts}"
            f"{human_size(converted)} for the converted copy), but that disk has "
            f"{human_size(free)} free; make room, or set PARCLI_HOME to a folder on a larger disk"
        )


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
        yield  # closing the file releases the lock


class _ByteBar:
    """What huggingface_hub makes through its ``tqdm_class`` hook (a subclass naming
    ``on_bytes``): byte counts go to that callback instead of a bar of its own."""

    on_bytes: BytesCallback | None = None

    def __init__(self, *args: Any, total: int | None = None, initial: int = 0, **kwargs: Any):
        self.n, self.total = int(initial or 0), total
        self.update(0)

    def update(self, n: int | float = 1) -> None:
        self.n += int(n)
        if self.on_bytes is not None:
            self.on_bytes(max(self.n, 0), self.total)

    def close(self, *args: Any, **kwargs: Any) -> None:
        pass

    refresh = set_postfix_str = set_description = __exit__ = close

    def __enter__(self) -> _ByteBar:
        return self


def _download_error(entry: Entry, exc: BaseException, resumable: bool = False) -> FetchError:
    """One line saying why ``entry`` could not be downloaded."""
    from parcli.io.tensors import one_line  # torch: not for --help

    name, file, url, host = entry.name, entry.file, download_url(entry), download_host(entry)
    again = f"run `par weights fetch {name}` again to resume" if resumable else ""
    later = "try again later" + (f" ({again})" if again else "")
    chain = [exc]  # the error and the ones it was raised from or while handling
    while (cause := chain[-1].__cause__ or chain[-1].__context__) and cause not in chain:
        chain.append(cause)
    for err in chain:  # an HTTP status says the most
        status = getattr(getattr(err, "response", None), "status_code", None)
        kind = type(err).__name__
        if kind == "GatedRepoError":
            return FetchError(
                f"{entry.repo} is gated: accept its terms on the Hub, then log in with "
                f"`hf auth login` (or set HF_TOKEN) and fetch {name} again"
            )
        if status == 404 or kind in ("RepositoryNotFoundError", "RemoteEntryNotFoundError"):
            return FetchError(f"{name}: {file} not found at {url}")
        if status in (401, 403):
            return FetchError(
                f"{name}: access to {url} was refused (HTTP {status}); "
                "log in with `hf auth login` or set HF_TOKEN"
            )
        if isinstance(status, int) and status >= 500:
            return FetchError(
                f"{name}: server error (HTTP {status}) from {host} while fetching {file}; {later}"
            )
        if isinstance(status, int):
            return FetchError(f"{name}: HTTP {status} from {url}")
    for err in chain:
        kind = type(err).__name__
        if kind in ("ConnectError", "ConnectionError", "ConnectTimeout", "ProxyError") or (
            isinstance(err, ConnectionRefusedError | socket.gaierror)
        ):
            return FetchError(
                f"{name}: cannot connect to {host} ({one_line(err, 120)}); check the network, "
                "or set HF_ENDPOINT to a mirror" + (f", then {again}" if again else "")
            )
        if "Timeout" in kind or isinstance(err, TimeoutError):
            return FetchError(
                f"{name}: {host} did not answer in time while fetching {file}; {later}"
            )
        if isinstance(err, OSError) and err.errno == 28:
            return FetchError(
                f"{name}: no space left to download {file} "
                f"(about {human_size(entry.approx_size_bytes)}); free some disk space"
            )
        if kind in ("RemoteProtocolError", "ReadError", "ChunkedEncodingError") or (
            "Consistency check failed" in str(err)
        ):
            return FetchError(
                f"{name}: the download of {file} was interrupted ({one_line(err, 120)}); "
                f"run `par weights fetch {name}` again" + (" to resume" if again else "")
            )
    return FetchError(f"{name}: cannot download {file} from {host}: {one_line(exc, 120)}")


def cached_download(entry: Entry) -> Path | None:
    """The published file in the HF cache, found without any network access."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(str(entry.repo), str(entry.file), revision=REVISION)
    return Path(found) if isinstance(found, str) and os.path.isfile(found) else None


def local_download(entry: Entry) -> Path | None:
    """The complete published file, in the HF cache or our downloads folder (no network)."""
    ours = raw_download_path(entry)
    return cached_download(entry) or (ours if ours.is_file() else None)


def _download(entry: Entry, on_bytes: BytesCallback | None) -> Path:
    """Download ``entry`` into our downloads folder, resuming a part file left by an earlier run."""
    from huggingface_hub import get_hf_file_metadata
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    url = download_url(entry)
    check_reachable(entry)
    try:
        endpoint = os.environ.get("HF_ENDPOINT") or None
        remote = get_hf_file_metadata(url, endpoint=endpoint, retry_on_errors=True)
    except Exception as exc:
        raise _download_error(entry, exc) from None
    final, (part, info) = raw_download_path(entry), _part_paths(entry)
    final.parent.mkdir(parents=True, exist_ok=True)
    stored = read_json(info) or {}
    have = part.stat().st_size if part.is_file() else 0
    # Resume only the very file the part came from, as far as its etag and size tell.
    resumable = remote.etag is not None and remote.size is not None and have <= remote.size
    resumable = resumable and (stored.get("etag"), stored.get("size")) == (remote.etag, remote.size)
    if remote.size is not None:  # the converted copy is at most the size of the download
        check_free_space(entry.name, remote.size - (have if resumable else 0), remote.size)
    if not resumable:
        part.unlink(missing_ok=True)
        have = 0
        expected = {"url": url, "etag": remote.etag, "size": remote.size}
        write_json(info, {**expected, "commit": remote.commit_hash})
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
                tqdm_class=type("_Bar", (_ByteBar,), {"on_bytes": staticmethod(on_bytes)}),
            )
            handle.flush()
            os.fsync(handle.fileno())
    except Exception as exc:
        kept = part.is_file() and part.stat().st_size > 0
        raise _download_error(entry, exc, resumable=kept) from None
    os.replace(part, final)
    info.unlink(missing_ok=True)
    return final


def _discard_download(path: Path) -> None:
    """Delete a downloaded file: in the HF cache the blob and the snapshot link to it."""
    for item in (path, Path(os.path.realpath(path))):
        item.unlink(missing_ok=True)


def _convert(entry: Entry, source: Path, on_status, dtype: str) -> str:
    """Convert ``source`` into the cache, checked against the catalogue; returns its sha256."""
    from parcli.io.checkpoints import read_checkpoint
    from parcli.io.convert import convert
    from parcli.io.tensors import WeightsError

    target = converted_path(entry)  # in the folder of the lock fetch holds
    on_status(f"converting {entry.filename} to safetensors")
    extra = {"catalogue_name": entry.name, "source_url": download_url(entry)}
    if entry.kind == "gpt" and entry.cfg_scale is not None:
        extra["cfg_scale"] = str(entry.cfg_scale)
    try:
        with atomic_path(target) as tmp:
            args = {"grid": entry.grid} if entry.kind == "gpt" else {}
            meta = convert(source, tmp, extra_metadata=extra, dtype=dtype, **args)
            on_status(f"verifying {target.name}")
            read_checkpoint(tmp)
            gpt = entry.kind == "gpt"
            problems = [
                f"{what} {meta.get(key)} (expected {want})"
                for key, want, what, check in (
                    ("kind", entry.kind, "kind", True),
                    ("regions", entry.regions, "regions", gpt and entry.regions is not None),
                    ("arch", entry.arch, "architecture", gpt and entry.arch in GPT_PRESETS),
                )
                if check and meta.get(key) != str(want)
            ]
            if problems:
                raise FetchError(
                    f"{entry.name}: the downloaded {entry.file} holds {', '.join(problems)}; "
                    "weights.toml disagrees with the published file"
                )
    except WeightsError as exc:
        raise FetchError(
            f"{entry.name}: cannot convert the downloaded {entry.file}: {exc} "
            f"(if it is damaged: `par weights remove {entry.name} --download`, then fetch again)"
        ) from None
    return meta["source_sha256"]


def convert_local(source: Path, on_status: StatusCallback | None = None) -> Path:
    """The safetensors copy of a `.pt` given by path, converted into the cache on first use
    under a name keyed by its path, size and time, so that a changed file converts again."""
    from parcli.io.convert import HeadsUnknown, convert
    from parcli.io.tensors import WeightsError

    status = source.stat()
    key = f"{source.resolve()}|{status.st_size}|{status.st_mtime_ns}"
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    target = cache_dir() / "converted" / f"{source.stem}-{digest}.safetensors"
    if target.is_file():
        return target
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
    on_status: StatusCallback | None = None,
    keep_original: bool = False,
    dtype: str = "keep",
) -> Path:
    """The converted file of ``entry``, downloaded and converted if need be; our download is then
    deleted unless kept (one copy stays), and a file in the user's HF cache is never touched."""
    target = converted_path(entry)
    if entry.is_packaged and not target.is_file():
        raise FetchError(
            f"{entry.name} ships with parcli but {target} is missing; reinstall parcli"
        )
    if target.is_file():
        return target
    say = on_status or (lambda text: None)
    with _locked(_in_weights(entry, ".lock"), on_status, entry.name):
        if target.is_file():  # another process finished it while we waited
            return target
        source = local_download(entry)
        if source is None and not offline_requested(offline):
            source = _download(entry, on_bytes)
        if source is None:
            raise FetchError(
                f"{entry.name} is not downloaded ({entry.filename}); run `par weights fetch "
                f"{entry.name}`, or use the model `digits`, which ships with parcli"
            )
        if entry.sha256 is not None:
            say(f"checking the sha256 of {entry.filename}")
            sha256 = file_sha256(source)
            if sha256 != entry.sha256:
                _discard_download(source)
                raise FetchError(
                    f"{entry.name}: sha256 of the downloaded {entry.file} is {sha256}, but "
                    f"weights.toml expects {entry.sha256}; the download was discarded"
                )
        check_free_space(entry.name, 0, source.stat().st_size)
        # convert() hashes the source too and records it as the file's `source_sha256`.
        sha256 = _convert(entry, source, say, dtype)
        keep = os.environ.get("PARCLI_KEEP_ORIGINAL", "").strip().lower() in _TRUE
        kept = source != raw_download_path(entry) or keep_original or keep
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
            "converted": str(target),
            "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        write_json(_in_weights(entry, ".json"), record)
        if not kept:
            source.unlink()
        return target


def ensure_files(
    entries: Iterable[Entry], offline: bool = False, download: Callable[[Entry], Path] | None = None
) -> dict[str, Path]:
    """Local paths of ``entries`` by name, fetching what is missing (offline: only converting)."""
    get = (lambda e: fetch(e, offline=True)) if offline_requested(offline) else download or fetch
    return {e.name: converted_path(e) if is_present(e) else get(e) for e in entries}


def remove(entry: Entry, *, download: bool = False) -> int:
    """Delete ``entry``'s converted file (``download``: its downloads too); returns bytes freed."""
    if entry.is_packaged:
        raise FetchError(f"{entry.name} ships with parcli; there is nothing to remove")
    freed = 0
    paths = [converted_path(entry), _in_weights(entry, ".json")]
    if download:
        paths += [raw_download_path(entry), *_part_paths(entry)]
    with _locked(_in_weights(entry, ".lock"), None, entry.name):
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                size = path.stat().st_size
                path.unlink()
                freed += size
        source = cached_download(entry) if download else None
        if source is not None:
            freed += source.stat().st_size
            _discard_download(source)
    return freed
