"""How a plan is walked: one module per decoding strategy, each named once in `_registry`.

A strategy turns labels into token grids with a model, a plan and a runner; the pipeline takes
one (diffusers' pipelines take a scheduler the same way), so a new strategy gets `generate`,
`sample`, `eval`, `bench` and the recipe without touching them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from parcli.errors import SettingError
from parcli.strategies.base import DecodeStats, Strategy

if TYPE_CHECKING:
    from parcli.options import RunOptions

__all__ = ["DecodeStats", "Strategy", "make_strategy"]


def make_strategy(options: RunOptions) -> Strategy:
    """The strategy `options` name, built from the settings of theirs it takes."""
    registry = _registry()
    if options.strategy not in registry:
        names = " or ".join(registry)
        raise SettingError("strategy", f"must be {names}, not {options.strategy!r}")
    return registry[options.strategy](options)


def _registry() -> dict[str, Callable[[RunOptions], Strategy]]:
    from parcli.strategies.par import Par
    from parcli.strategies.sjd import Sjd

    return {"par": Par, "sjd": Sjd}
