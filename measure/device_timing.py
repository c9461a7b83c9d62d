"""The timing the GPU check's scripts share: the best of a few rounds, each the mean of `calls`
calls, by CUDA events on a GPU (what the device spent, not the host's queueing) and by the clock
on a CPU (so that the scripts also run, and are tested, without one)."""

import time
from collections.abc import Callable

import torch


def best_ms(run: Callable[[], object], device: torch.device, rounds: int, calls: int = 1) -> float:
    """The best of `rounds` rounds of `calls` calls of `run`, in ms per call, after one call to
    warm it."""
    run()
    best = float("inf")
    for _ in range(rounds):
        if device.type == "cuda":
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(calls):
                run()
            end.record()
            torch.cuda.synchronize()
            took = start.elapsed_time(end)
        else:
            started = time.perf_counter()
            for _ in range(calls):
                run()
            took = 1e3 * (time.perf_counter() - started)
        best = min(best, took / calls)
    return best
