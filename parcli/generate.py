"""The decode loop: walk a plan pass by pass, sample, and return token grids in raster order.

How each pass runs the transformer is up to a `Steps` object, which owns the KV cache:
`EagerSteps` attends over the visible prefix of the cache (variable shapes, nothing to mask);
`StaticSteps` attends over the whole cache with precomputed mask rows, so every pass of one width
has the same shapes and can be replayed from a CUDA graph. Both give the same tokens.
"""

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


class EagerSteps:
    """Runs each pass over the cache prefix it may see; the default off CUDA."""

    def __init__(self, model: Transformer, plan: Plan, rows: int):
        cfg = model.cfg
        device, dtype = model.device, model.dtype
        self.model, self.rows = model, rows
        self.cache = KVCache(cfg, rows, plan.num_slots, device, dtype)
        self.rope = rotary_table(plan, cfg.head_dim, cfg.rope_base).to(device)

    def __call__(self, step: Pass, h: torch.Tensor) -> torch.Tensor:
        return self.model(h, self.rope[step.start : step.end], self.cache, step.start)


class StaticSteps:
    """Runs every pass with fixed shapes over the whole cache; optionally replays CUDA graphs.

    The pass's first slot lives in a device tensor, so positions, rotary rows and mask rows are
    gathered on the device and one captured graph per pass width serves every pass.
    """

    def __init__(
        self,
        model: Transformer,
        plan: Plan,
        rows: int,
        cuda_graphs: bool = False,
        compile_model: bool = False,
    ):
        cfg = model.cfg
        device, dtype = model.device, model.dtype
        self.model, self.rows = model, rows
        self.cache = KVCache(cfg, rows, plan.num_slots, device, dtype)
        self.rope = rotary_table(plan, cfg.head_dim, cfg.rope_base).to(device)
        self.mask = torch.from_numpy(plan.attention_mask()).to(device)
        self.start = torch.zeros((), dtype=torch.long, device=device)
        self.offsets = {
            width: torch.arange(width, device=device) for width in {p.width for p in plan.passes}
        }
        self.forward = (
            torch.compile(self._forward, dynamic=False) if compile_model else self._forward
        )
        self.cuda_graphs = cuda_graphs
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self.pool = torch.cuda.graph_pool_handle() if cuda_graphs else None

    def _forward(self, h: torch.Tensor) -> torch.Tensor:
        positions = self.start + self.offsets[h.shape[1]]
        rope = self.rope.index_select(0, positions)
        mask = self.mask.index_select(0, positions)
        return self.model(h, rope, self.cache, positions, mask)

    def _capture(self, h: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        static_in = h.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        # Warm-up runs do this pass's real work (same input, same slots), so they are harmless.
        with torch.cuda.stream(side):
            for _ in range(2):
                self.forward(static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            static_out = self.forward(static_in)
        return graph, static_in, static_out

    def __call__(self, step: Pass, h: torch.Tensor) -> torch.Tensor:
        self.start.fill_(step.start)
        if not self.cuda_graphs:
            return self.forward(h)
        width = h.shape[1]
        if width not in self.graphs:
            self.graphs[width] = self._capture(h)
        graph, static_in, static_out = self.graphs[width]
        static_in.copy_(h)
        graph.replay()
        return static_out


Steps = EagerSteps | StaticSteps


@torch.inference_mode()
def generate_tokens(
    model: Transformer,
    plan: Plan,
    labels: torch.Tensor,
    sampling: SamplingConfig,
    generator: torch.Generator | None = None,
    on_pass: Callable[[Pass], None] | None = None,
    steps: Steps | None = None,
) -> torch.Tensor:
    """Generate one token grid per label: (batch, *plan.grid) int64 in raster order.

    Nothing here waits for the device: sampling, guidance and scattering stay on it.
    """
    cfg = model.cfg
    device = labels.device
    rows = guided_labels(labels, cfg.num_classes, sampling.guided)
    if steps is None:
        steps = EagerSteps(model, plan, rows.shape[0])
    if steps.rows != rows.shape[0]:
        raise ValueError(f"steps were built for {steps.rows} rows, not {rows.shape[0]}")
    seq = torch.zeros(rows.shape[0], plan.num_tokens, dtype=torch.long, device=device)
    for step in plan.passes:
        h = model.embed_slots(plan, rows, seq, step.start, step.end)
        logits = steps(step, h)
        if sampling.guided:
            logits = mix_guidance(logits, sampling.cfg_scale)
        tokens = sample(logits, sampling, generator)
        seq[:, step.start : step.end] = tokens.repeat(rows.shape[0] // tokens.shape[0], 1)
        if on_pass is not None:
            on_pass(step)
    inverse = torch.from_numpy(plan.inverse).to(device)
    return seq[: labels.shape[0], inverse].reshape(labels.shape[0], *plan.grid)
