"""The decode loop: walk a plan pass by pass, sample, and return token grids in raster order."""

from __future__ import annotations

from collections.abc import Callable

import torch

from parcli.model import KVCache, Transformer, rotary_table
from parcli.plan import Pass, Plan
from parcli.sampling import SamplingConfig, mix_guidance, sample


def guided_labels(labels: torch.Tensor, num_classes: int, guided: bool) -> torch.Tensor:
    """Conditional rows first, then the same number of rows with the null class."""
    if not guided:
        return labels
    return torch.cat([labels, torch.full_like(labels, num_classes)])


@torch.inference_mode()
def generate_tokens(
    model: Transformer,
    plan: Plan,
    labels: torch.Tensor,
    sampling: SamplingConfig,
    generator: torch.Generator | None = None,
    on_pass: Callable[[Pass], None] | None = None,
) -> torch.Tensor:
    """Generate one token grid per label: (batch, *plan.grid) int64 in raster order."""
    cfg = model.cfg
    device = labels.device
    rows = guided_labels(labels, cfg.num_classes, sampling.guided)
    cache = KVCache(cfg, rows.shape[0], plan.num_slots, device, model.output.weight.dtype)
    rope = rotary_table(plan, cfg.head_dim, cfg.rope_base).to(device)
    seq = torch.zeros(rows.shape[0], plan.num_tokens, dtype=torch.long, device=device)
    for step in plan.passes:
        h = model.embed_slots(plan, rows, seq, step.start, step.end)
        logits = model(h, rope[step.start : step.end], cache, step.start)
        if sampling.guided:
            logits = mix_guidance(logits, sampling.cfg_scale)
        tokens = sample(logits, sampling, generator)
        seq[:, step.start : step.end] = tokens.repeat(rows.shape[0] // tokens.shape[0], 1)
        if on_pass is not None:
            on_pass(step)
    inverse = torch.from_numpy(plan.inverse).to(device)
    return seq[: labels.shape[0], inverse].reshape(labels.shape[0], *plan.grid)
