"""LlamaGen's transformer, which PAR reuses unchanged; 2D/3D rotary tables; a static KV cache.

Parameter names match the published checkpoints, so their state dicts load as they are.
The forward pass keeps no state between calls beyond the KV cache it is handed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from parcli.config import GPTConfig
from parcli.plan import CLASS, TOKEN, Plan


def axis_pairs(head_dim: int, axes: int) -> list[int]:
    """How many rotary pairs of a head each grid axis gets (2D: half each, as LlamaGen)."""
    pairs = head_dim // 2
    if axes == 2:
        return [pairs // 2, pairs // 2]
    spatial = pairs // 3
    return [pairs - 2 * spatial, spatial, spatial]


def axis_frequencies(pairs: int, base: float) -> torch.Tensor:
    # Written as LlamaGen writes it so the float32 values agree bit for bit.
    span = 2 * pairs
    return 1.0 / (base ** (torch.arange(0, span, 2)[:pairs].float() / span))


def cell_angles(grid: tuple[int, ...], head_dim: int, base: float) -> torch.Tensor:
    """(cells, head_dim // 2) rotation angles of every raster cell of the grid."""
    coords = torch.cartesian_prod(*(torch.arange(size) for size in grid))
    if coords.dim() == 1:
        coords = coords[:, None]
    per_axis = [
        torch.outer(coords[:, axis], axis_frequencies(pairs, base))
        for axis, pairs in enumerate(axis_pairs(head_dim, len(grid)))
    ]
    return torch.cat(per_axis, dim=-1)


def rotary_table(plan: Plan, head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """(slots, head_dim // 2, 2) cos/sin per KV-cache slot.

    Class and transition slots get cos = sin = 0 (not the identity): the published models were
    trained that way, so their queries and keys are exactly zero.
    """
    angles = cell_angles(plan.grid, head_dim, base)
    table = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)
    cells = torch.from_numpy(plan.slot_cell)
    rows = table[cells.clamp(min=0)]
    rows[cells < 0] = 0.0
    return rows


def apply_rotary(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of x (batch, seq, ..., head_dim) in float32 by rope (seq, pairs, 2)."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    shape = (1, rope.shape[0], *([1] * (x.dim() - 3)), rope.shape[1])
    if torch.compiler.is_compiling():
        # Inductor handles real arithmetic better than complex; both round identically.
        cos, sin = rope[..., 0].view(shape), rope[..., 1].view(shape)
        even, odd = pairs[..., 0], pairs[..., 1]
        rotated = torch.stack([even * cos - odd * sin, odd * cos + even * sin], dim=-1)
    else:
        # One complex product instead of six real ops: the eager per-pass cost matters here.
        turn = torch.view_as_complex(rope).view(shape)
        rotated = torch.view_as_real(torch.view_as_complex(pairs) * turn)
    return rotated.flatten(-2).type_as(x)


class PackedLinear(nn.Module):
    """A bias-free projection with its weight pre-packed for `rows`-row inputs (CPU only).

    With `keep_plain`, MKL packs a second copy and inputs of any other row count take the plain
    product with the kept weight: the fastest products, at twice the memory. Without it, oneDNN
    repacks the weight in place of the original (3 to 10 % slower here, no extra memory).
    """

    def __init__(self, weight: torch.Tensor, rows: int, keep_plain: bool = True):
        super().__init__()
        weight = weight.detach()
        self.rows = rows
        self.nbytes = weight.numel() * weight.element_size()  # what a product reads
        self.weight = weight if keep_plain else None
        if keep_plain:
            self.packed = torch.ops.mkl._mkl_reorder_linear_weight(weight, rows)
        else:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is not None:
            return torch.ops.mkl._mkl_linear(x, self.packed, self.weight, None, self.rows)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(torch.mean(x32 * x32, dim=-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class KVCache:
    """Keys and values of every layer for one generation, allocated once."""

    def __init__(
        self,
        cfg: GPTConfig,
        batch: int,
        slots: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ):
        shape = (cfg.n_layer, batch, cfg.n_head, slots, cfg.head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)

    def write(
        self, layer: int, start: int | torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v from slot `start` on and return the keys and values to attend to.

        With an int start: the slots up to the end of the new ones (variable length, no mask
        needed). With a tensor of slot positions: every slot, so shapes never change (the caller
        masks); this is the form CUDA graphs and compiled code need.
        """
        if isinstance(start, torch.Tensor):
            self.keys[layer].index_copy_(2, start, k)
            self.values[layer].index_copy_(2, start, v)
            return self.keys[layer], self.values[layer]
        end = start + k.shape[2]
        self.keys[layer, :, :, start:end] = k
        self.values[layer, :, :, start:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.wqkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor,
        cache: KVCache | None,
        layer: int,
        start: int | torch.Tensor,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        batch, seq, dim = x.shape
        qkv = self.wqkv(x).view(batch, seq, 3, self.n_head, self.head_dim)
        q, k = apply_rotary(qkv[:, :, :2], rope).unbind(2)
        v = qkv[:, :, 2]
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if cache is not None:
            k, v = cache.write(layer, start, k, v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.wo(out.transpose(1, 2).reshape(batch, seq, dim))


class FeedForward(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w2 = nn.Linear(cfg.ffn_hidden, cfg.dim, bias=False)
        self.w13: nn.Module | None = None

    def fuse_gate_and_up(self, rows: int, keep_plain: bool) -> None:
        """Replace w1 and w3 by one packed product over both (inference only)."""
        both = torch.cat([self.w1.weight, self.w3.weight]).detach()
        self.w13 = PackedLinear(both, rows, keep_plain)
        del self.w1, self.w3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.w13 is not None:
            gate, up = self.w13(x).chunk(2, dim=-1)
        else:
            gate, up = self.w1(x), self.w3(x)
        return self.w2(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, rope, cache, layer, start, mask):
        attended = self.attention(self.attention_norm(x), rope, cache, layer, start, mask)
        h = x + self.dropout(attended)
        return h + self.dropout(self.feed_forward(self.ffn_norm(h)))


class ClassEmbedding(nn.Module):
    """Class labels plus one extra row (index num_classes) for the unconditional branch."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels)


class TransitionEmbedding(nn.Module):
    """PAR's learnable transition tokens M1 .. M(n-1)."""

    def __init__(self, count: int, dim: int):
        super().__init__()
        self.special_embeddings = nn.Embedding(count, dim)


class Transformer(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.cls_embedding = ClassEmbedding(cfg.num_classes, cfg.dim)
        if cfg.regions > 1:
            self.spe_tok_embeddings = TransitionEmbedding(cfg.regions - 1, cfg.dim)
        self.token_dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)

    @property
    def device(self) -> torch.device:
        return self.tok_embeddings.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.tok_embeddings.weight.dtype

    def init_weights(self, std: float = 0.02, zero_output: bool = True) -> None:
        """LlamaGen's initialisation; `zero_output=False` gives a random model worth sampling."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        if zero_output:
            nn.init.zeros_(self.output.weight)

    def pack_weights_for_cpu(self, rows: int, keep_plain: bool = True) -> bool:
        """Pre-pack every projection for `rows`-row inputs; fuse w1 and w3 into one product.

        The same products, 5 to 45 % faster on CPU than plain `F.linear` (most for the 2n-row
        inputs of parallel passes); `keep_plain` as in `PackedLinear`. Inference only; returns
        False (and changes nothing) where the model is not float32 on CPU or this torch build
        lacks the packing ops.
        """
        if self.device.type != "cpu" or self.dtype != torch.float32:
            return False
        mkl = torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")
        dnnl = torch.backends.mkldnn.is_available() and hasattr(
            torch.ops.mkldnn, "_linear_pointwise"
        )
        if not (mkl if keep_plain else dnnl):
            return False
        for block in self.layers:
            block.feed_forward.fuse_gate_and_up(rows, keep_plain)
        for module in list(self.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(module, name, PackedLinear(child.weight, rows, keep_plain))
        return True

    def projection_bytes(self) -> int:
        """Bytes of the projection weights a forward pass multiplies by, packed or not."""
        total = 0
        for m in self.modules():
            if isinstance(m, nn.Linear):
                total += m.weight.numel() * m.weight.element_size()
            elif isinstance(m, PackedLinear):
                total += m.nbytes
        return total

    def embed_slots(
        self,
        plan: Plan,
        labels: torch.Tensor,
        seq_tokens: torch.Tensor,
        start: int,
        end: int,
    ) -> torch.Tensor:
        """Input embeddings of cache slots [start, end): class, fed tokens, transition tokens.

        `seq_tokens` (batch, >= tokens needed) holds token ids in PAR sequence order.
        """
        pieces = []
        for kind, run_start, run_end, source in plan.slot_runs:
            a, b = max(start, run_start), min(end, run_end)
            if a >= b:
                continue
            first = source + a - run_start
            if kind == CLASS:
                pieces.append(self.cls_embedding(labels)[:, None])
            elif kind == TOKEN:
                pieces.append(self.tok_embeddings(seq_tokens[:, first : first + b - a]))
            else:
                rows = self.spe_tok_embeddings.special_embeddings.weight[first : first + b - a]
                pieces.append(rows.expand(labels.shape[0], -1, -1))
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)

    def forward(
        self,
        h: torch.Tensor,
        rope: torch.Tensor,
        cache: KVCache | None = None,
        start: int | torch.Tensor = 0,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Float32 logits for input embeddings h at slots [start, start + len).

        With a cache and an int start, queries attend to every cached slot before the end of this
        input: in a PAR plan that is exactly what each pass may see, so no mask is needed. With
        tensor positions, or without a cache (teacher forcing), `mask` says what each query sees.
        """
        h = self.token_dropout(h)
        for index, layer in enumerate(self.layers):
            h = layer(h, rope, cache, index, start, mask)
        return self.output(self.norm(h)).float()
