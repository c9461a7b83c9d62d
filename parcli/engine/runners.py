"""Runners: how each pass of a plan runs the transformer over the KV cache they hold."""

from __future__ import annotations

import contextlib
import weakref

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from parcli.model import KVCache, Transformer, cache_dtype, cache_head_dim
from parcli.plan import Pass, Plan
from parcli.slots import slot_rotary

# Dynamo keeps a few compiled versions of one function, then runs it uncompiled; every runner and
# pass width is a version of `_forward`, and a bench needs more than the default.
COMPILED_VERSIONS = 64

# Caches by shape, so pipelines of one weight set at several n hold one cache between them; a
# generation writes every slot before it reads it, so what another run left never reaches tokens.
_caches: weakref.WeakValueDictionary[tuple, KVCache] = weakref.WeakValueDictionary()


def shared_cache(
    model: Transformer, sequences: int, plan: Plan, as_the_model: bool = False
) -> KVCache:
    """A KV cache of `plan`'s slots shared by the runners of its shapes; `as_the_model`: in the
    model's dtype and head width, as the reference keeps it, not those that run fastest here."""
    cfg, device, slots = model.cfg, model.device, plan.num_slots
    if as_the_model:
        dtype, head_dim = model.dtype, cfg.head_dim
    else:
        dtype = cache_dtype(model.dtype, device, plan.widest_pass)
        head_dim = cache_head_dim(cfg.head_dim, device)
    key = (cfg.n_layer, cfg.n_head, head_dim, sequences, slots, str(device), dtype)
    cache = _caches.get(key)
    if cache is None:
        cache = _caches[key] = KVCache(cfg, sequences, slots, device, dtype, head_dim)
    return cache


class PrefixRunner:
    """Runs each pass over the cache prefix it may see."""

    def __init__(self, model: Transformer, plan: Plan, sequences: int):
        self.model, self.sequences = model, sequences
        self.cache = shared_cache(model, sequences, plan)
        self.rope = slot_rotary(model, plan)

    def __call__(self, step: Pass, h: torch.Tensor) -> torch.Tensor:
        return self.model(h, self.rope[step.start : step.end], self.cache, start=step.start)


class FixedShapeRunner:
    """Runs every pass over the whole cache under a mask, so that passes of one width share one
    compiled step and CUDA graph; `reference_kernels` runs as LlamaGen does (its bf16 tokens)."""

    def __init__(
        self,
        model: Transformer,
        plan: Plan,
        sequences: int,
        cuda_graphs: bool = False,
        compiled: bool = False,
        reference_kernels: bool = False,
    ):
        device = model.device
        self.model, self.sequences = model, sequences
        self.reference_kernels = reference_kernels
        self.cache = shared_cache(model, sequences, plan, as_the_model=reference_kernels)
        self.rope = slot_rotary(model, plan)
        self.mask = torch.from_numpy(plan.attention_mask()).to(device)
        self.start = torch.zeros((), dtype=torch.long, device=device)
        self.offsets = {
            width: torch.arange(width, device=device) for width in {p.width for p in plan.passes}
        }
        self.forward = self._forward
        if compiled:
            config = torch._dynamo.config
            name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
            setattr(config, name, max(getattr(config, name), COMPILED_VERSIONS))
            self.forward = torch.compile(self._forward, dynamic=False)
        self.cuda_graphs = cuda_graphs
        self.graphs: dict[tuple[int, bool], tuple] = {}  # by pass width and math kernel or not
        self.pool = torch.cuda.graph_pool_handle() if cuda_graphs else None

    def _forward(self, h: torch.Tensor) -> torch.Tensor:
        positions = self.start + self.offsets[h.shape[1]]
        rope = self.rope.index_select(0, positions)
        mask = self.mask.index_select(0, positions)
        return self.model(h, rope, self.cache, positions=positions, mask=mask)

    def _capture(self, h: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        # Streams and graphs belong to the current CUDA device: make it the model's, so that
        # `--device cuda:1` captures on cuda:1 whichever device is current.
        with torch.cuda.device(h.device):
            static_in = h.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            # Warm-up runs do this pass's real work (same input, same slots): harmless.
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
        math = self.reference_kernels and step.index > 0
        key = (h.shape[1], math)
        if not self.cuda_graphs or key not in self.graphs:
            with sdpa_kernel(SDPBackend.MATH) if math else contextlib.nullcontext():
                if not self.cuda_graphs:
                    return self.forward(h)
                self.graphs[key] = self._capture(h)  # replayed with the kernels chosen here
        graph, static_in, static_out = self.graphs[key]
        with torch.cuda.device(h.device):
            static_in.copy_(h)
            graph.replay()
        return static_out


Runner = PrefixRunner | FixedShapeRunner
