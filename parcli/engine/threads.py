"""How many CPU threads a run uses: one for a small model, whose passes are too short to repay a
barrier per operator and stall on a busy machine waiting for a core; else one per core."""

from __future__ import annotations

import os

import torch

from parcli.errors import SettingError

SMALL_MODEL = 20_000_000  # parameters below which one thread is as fast, and safer under load


def choose_threads(parameters: int, requested: int | None = None) -> int:
    """`requested` (--threads or PARCLI_THREADS) when given, else by the model's size."""
    if requested is not None:
        return check_threads(requested)
    return 1 if parameters < SMALL_MODEL else _default_threads()


def max_threads() -> int:
    """Past a few per core threads only contend; thousands crash the OpenMP runtime."""
    return 4 * _default_threads()


def check_threads(requested: int) -> int:
    most = max_threads()
    if not 1 <= requested <= most:
        raise SettingError(
            "threads", f"must be between 1 and {most} (4 per core here), not {requested}"
        )
    return requested


def _default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def use_threads(model: torch.nn.Module, requested: int | None = None) -> int:
    """Set torch's intra-op threads for running `model`; returns the count."""
    count = choose_threads(sum(p.numel() for p in model.parameters()), requested)
    torch.set_num_threads(count)
    return count
