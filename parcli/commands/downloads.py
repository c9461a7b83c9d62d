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


def fetch_with_progress(
    entry: Entry, target: Console, keep_original: bool = False, dtype: str = "keep"
) -> Path:
    """``hub.fetch`` with a Rich byte bar on ``target``, saying first, before the first byte,
    what is downloaded, about how large (the catalogue's size), from where, and where it is kept."""
    size = entry.approx_size_bytes
    about = f"about {hub.human_size(size)}" if size else "size unknown"
    text = (
        f"Downloading {entry.name}: {entry.file} ({about}) from {hub.download_host(entry)}/"
        f"{entry.repo} into {hub.converted_path(entry).parent} ..."
    )
    target.print(escape(text), highlight=False, soft_wrap=True)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn())
    with Progress(*columns, TransferSpeedColumn(), TimeRemainingColumn(), console=target) as bar:
        task = bar.add_task(escape(entry.filename), total=size)

        def on_bytes(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total or size)

        def on_status(text: str) -> None:
            bar.console.print(f"  {escape(text)} ...", style="dim", highlight=False)

        try:
            path = hub.fetch(
                entry,
                on_bytes=on_bytes,
                on_status=on_status,
                keep_original=keep_original,
                dtype=dtype,
            )
        except BaseException:
            bar.update(task, visible=False)
            bar.live.transient = True  # no empty line above the error
            raise
        bar.update(task, completed=bar.tasks[task].total or bar.tasks[task].completed)
        return path


def model_fetcher(offline: bool, quiet: bool) -> Fetch:
    """``hub.ensure_files``, saying what is downloaded, how large and how far, unless quiet."""
    download = None if quiet else lambda entry: fetch_with_progress(entry, console)
    return lambda entries: hub.ensure_files(entries, offline, download)
