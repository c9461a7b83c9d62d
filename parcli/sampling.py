"""Logits into tokens: guidance, temperature, top-k / top-p, and draws made before decoding from a
generator per (run seed, image index): an image is the same whatever shares its batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from parcli.errors import SettingError

# Beyond these a setting is a typo, not a choice: the logits it makes are all one token or inf.
LIMITS = {"cfg_scale": ("0", 100), "temperature": ("0", 100), "top_k": ("0 (off)", 2**24)}


@dataclass(frozen=True)
class SamplingConfig:
    cfg_scale: float = 1.0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        for name, (low, high) in LIMITS.items():
            value = getattr(self, name)
            # Written as `not a <= x <= b` so that NaN, which compares false, is refused too.
            if not 0 <= value <= high:
                raise SettingError(name, f"must be between {low} and {high}, not {value}")
        if not 0.0 < self.top_p <= 1.0:
            raise SettingError("top_p", f"must be in (0, 1], not {self.top_p}")

    @property
    def guided(self) -> bool:
        # As in the reference: guidance runs only for scales above 1.
        return self.cfg_scale > 1.0


def mix_guidance(logits: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """Conditional sequences first, unconditional second -> guided logits (LlamaGen's op order)."""
    cond, uncond = logits.chunk(2, dim=0)
    return uncond + (cond - uncond) * cfg_scale


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k and outside the top-p nucleus to -inf."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, sorted_index = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token once the mass before it already exceeds top_p; the first always stays.
        drop_sorted = torch.zeros_like(cumulative, dtype=torch.bool)
        drop_sorted[..., 1:] = cumulative[..., :-1] > top_p
        drop = drop_sorted.scatter(-1, sorted_index, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def image_seed(seed: int, index: int, *stream: int) -> int:
    """The seed of image `index`, or of its other `stream`, in a run seeded with `seed` >= 0."""
    if seed < 0:
        raise SettingError("seed", f"must be >= 0, not {seed}")
    return int(np.random.SeedSequence([seed, index, *stream]).generate_state(1, np.uint64)[0])


def image_uniforms(
    seed: int, indices: Sequence[int], count: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(len(indices), count) numbers uniform in [0, 1): row k from image indices[k]'s own
    generator, made on the CPU so that every device gets the same numbers."""
    rows = [
        torch.rand(count, generator=torch.Generator().manual_seed(image_seed(seed, index)))
        for index in indices
    ]
    return torch.stack(rows).to(device)


def sample(logits: torch.Tensor, config: SamplingConfig, uniforms: torch.Tensor) -> torch.Tensor:
    """Draw one token per row of (..., vocab) logits, with one uniform number (...) per row."""
    return draw(warp(logits, config), uniforms)


def warp(logits: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """Guided logits -> the distribution a token is drawn from: temperature, top-k / top-p."""
    logits = logits / max(config.temperature, 1e-5)
    return filter_logits(logits, config.top_k, config.top_p).softmax(dim=-1)


def draw(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw from (unnormalised) probs (..., V), one uniform (...) per row. u lies in
    (0, 1], so the first index whose cumulative mass reaches u * total has non-zero mass."""
    cumulative = probs.cumsum(dim=-1)
    u = (1.0 - uniforms.to(probs.dtype)).unsqueeze(-1)
    index = torch.searchsorted(cumulative, u * cumulative[..., -1:])
    return index.squeeze(-1).clamp_(max=probs.shape[-1] - 1)
