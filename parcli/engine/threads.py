"""How many CPU threads a run uses: chosen from the work, unless the user says.

A small model's pass is microseconds of arithmetic per layer; a second thread adds a barrier per
operator and, on a busy machine, waits for a core it cannot get (the digits demo took 12.8 s
with PyTorch's two threads beside one busy process, 0.33 s with one). Large models keep
PyTorch's default, one thread per core.
"""

from __future__ import annotations

import os

import torch

from parcli.errors import SettingError

THREADS_ENV = "PARCLI_THREADS"
SMALL_MODEL = 20_000_000  # parameters below which one thread is as fast, and safer under load


def choose_threads(parameters: int, requested: int | None = None) -> int:
    """The thread count for a model of `parameters` weights: `requested` (--threads or
    PARCLI_THREADS) when given, else 1 for small models and PyTorch's default otherwise."""
    if requested is not None:
        return check_threads(requested)
    if parameters < SMALL_MODEL:
        return 1
    return _default_threads()


def max_threads() -> int:
    """The most threads a run may ask for: past a few per core they only contend, and a count
    in the thousands crashes the OpenMP runtime outright."""
    return 4 * _default_threads()


def check_threads(requested: int) -> int:
    """`requested` (--threads or PARCLI_THREADS) when it is a usable count; else refused."""
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
