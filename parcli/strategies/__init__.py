"""How a plan is walked: one module per strategy (`make_strategy`), each with a `name`, a
`window` (plan passes per step) and `generate(...)` -> (token grids, DecodeStats), as `Par` has."""

from __future__ import annotations

from typing import TYPE_CHECKING

from parcli.errors import SettingError

if TYPE_CHECKING:
    from parcli.options import RunOptions
    from parcli.strategies.par import Par
    from parcli.strategies.sjd import Sjd


def make_strategy(options: RunOptions) -> Par | Sjd:
    """The strategy `options` name, built from the settings of theirs it takes."""
    from parcli.strategies.par import Par
    from parcli.strategies.sjd import Sjd

    registry = {"par": Par, "sjd": Sjd}
    if options.strategy not in registry:
        names = " or ".join(registry)
        raise SettingError("strategy", f"must be {names}, not {options.strategy!r}")
    return registry[options.strategy](options)
