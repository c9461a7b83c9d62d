"""How commands show downloads: what is fetched, how large, and a byte progress bar."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from parcli.commands.common import console
from parcli.io import hub
from parcli.io.catalogue import Entry
from parcli.io.locate import Fetch


def download_progress(target: Console) -> Progress:
    """A byte progress bar: size done / total, rate, time left."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=target,
    )


def fetch_with_progress(
    entry: Entry, target: Console, keep_original: bool = False, dtype: str = "keep"
) -> Path:
    """``hub.fetch`` with a Rich bar on ``target``."""
    with download_progress(target) as progress:
        task = progress.add_task(escape(entry.filename), total=entry.approx_size_bytes)

        def on_bytes(done: int, total: int | None) -> None:
            progress.update(task, completed=done, total=total or entry.approx_size_bytes)

        def on_status(text: str) -> None:
            progress.console.print(f"  {escape(text)} ...", style="dim", highlight=False)

        try:
            path = hub.fetch(
                entry,
                on_bytes=on_bytes,
                on_status=on_status,
                keep_original=keep_original,
                dtype=dtype,
            )
        except BaseException:
            progress.update(task, visible=False)
            progress.live.transient = True  # no empty line above the error
            raise
        done = progress.tasks[task].total or progress.tasks[task].completed
        progress.update(task, completed=done)
        return path


def announce(entry: Entry, target: Console) -> None:
    """Say, before the first byte, what is downloaded, about how large it is (the catalogue's
    size), from where, and where it is kept."""
    size = entry.approx_size_bytes
    about = f"about {hub.human_size(size)}" if size else "size unknown"
    source = f"{hub.download_host(entry)}/{entry.repo}"
    text = (
        f"Downloading {entry.name}: {entry.file} ({about}) from {source} into "
        f"{hub.converted_path(entry).parent} ..."
    )
    target.print(escape(text), highlight=False, soft_wrap=True)


def ensure_model_files(
    entries: list[Entry], offline: bool = False, console: Console | None = None
) -> dict[str, Path]:
    """``hub.ensure_files``, saying on ``console`` what is downloaded, how large, and how far."""

    def download(entry: Entry) -> Path:
        announce(entry, console)
        return fetch_with_progress(entry, console)

    return hub.ensure_files(entries, offline, download if console is not None else None)


def model_fetcher(offline: bool, quiet: bool) -> Fetch:
    """How a command fetches what it names: with a progress display, unless quiet."""
    return lambda entries: ensure_model_files(entries, offline, None if quiet else console)
