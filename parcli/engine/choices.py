"""Kernel choices timed once on a machine and remembered in `<cache>/kernels.json`: kernels that
compute the same product round differently, so a choice that moved with noise would move tokens."""

from __future__ import annotations

import contextlib
import json
import timeit
from collections.abc import Callable
from pathlib import Path

import torch

from parcli.engine.devices import cpu_name


def machine_key(what: str, threads: int) -> str:
    """`what` qualified by what decides which kernel is faster: CPU, torch and thread count."""
    return f"{cpu_name()} | torch {torch.__version__} | {threads} threads | {what}"


def best_seconds(run: Callable[[], object], rounds: int) -> float:
    """The fastest of `rounds` timed calls of `run`, after one untimed call to warm it."""
    run()
    return min(timeit.repeat(run, number=1, repeat=rounds))


def remembered(key: str) -> str | None:
    value = _read().get(key)
    return value if isinstance(value, str) else None


def remember(key: str, choice: str) -> None:
    from parcli.errors import UserError
    from parcli.io.files import atomic_write

    text = json.dumps({**_read(), key: choice}, indent=2, sort_keys=True) + "\n"
    with contextlib.suppress(OSError, UserError):  # atomic_write reports OSErrors as OutputError
        path().parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path(), lambda tmp: tmp.write_text(text, encoding="utf-8"))


def path() -> Path:
    from parcli.io.hub import cache_dir

    return cache_dir() / "kernels.json"


def _read() -> dict[str, str]:
    try:
        data = json.loads(path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
