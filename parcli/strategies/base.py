"""What every strategy shares: the protocol the pipeline calls, and what a strategy spent."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from parcli.model import Transformer
from parcli.plan import Pass, Plan
from parcli.sampling import SamplingConfig


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


class Strategy(Protocol):
    """Generates one token grid per label; see `parcli.strategies.par.Par` for the contract."""

    name: str
    window: int

    def generate(
        self,
        model: Transformer,
        plan: Plan,
        labels: torch.Tensor,
        sampling: SamplingConfig,
        seed: int,
        indices: Sequence[int],
        runner,
        on_pass: Callable[[Pass], None] | None = None,
    ) -> tuple[torch.Tensor, DecodeStats]: ...
