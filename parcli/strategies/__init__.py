"""How a plan is walked: one module per strategy (`make_strategy`), each with a `name`, a
`window` (plan passes per step) and `generate(...)` -> (token grids, DecodeStats), as `Par` has."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from parcli.errors import SettingError

if TYPE_CHECKING:
    from parcli.options import RunOptions
    from parcli.strategies.par import Par
    from parcli.strategies.sjd import Sjd


@dataclass
class DecodeStats:
    """What a strategy spent, summed over the images it made."""

    images: int = 0
    passes: int = 0  # forward passes, counted once per image that took part in them
    query_tokens: int = 0  # tokens fed to the transformer, per image summed
    iterations: int = 0  # strategy steps (one forward pass each), per image summed
    committed_passes: int = 0  # plan passes made final, per image summed

    def add(self, other: DecodeStats) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def per_image(self) -> dict[str, float]:
        images = max(self.images, 1)
        return {
            "passes_per_image": self.passes / images,
            "query_tokens_per_image": self.query_tokens / images,
            "passes_per_iteration": self.committed_passes / max(self.iterations, 1),
        }


def make_strategy(options: RunOptions) -> Par | Sjd:
    """The strategy `options` name, built from the settings of theirs it takes."""
    from parcli.strategies.par import Par
    from parcli.strategies.sjd import Sjd

    registry = {"par": Par, "sjd": Sjd}
    if options.strategy not in registry:
        names = " or ".join(registry)
        raise SettingError("strategy", f"must be {names}, not {options.strategy!r}")
    return registry[options.strategy](options)
