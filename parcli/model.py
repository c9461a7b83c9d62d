"""LlamaGen's transformer, which PAR reuses unchanged, with the published checkpoints' parameter
names; 2D/3D rotary tables; a static KV cache. `parcli.engine` swaps modules from the outside."""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from parcli.config import GPTConfig


def cell_angles(grid: tuple[int, ...], head_dim: int, base: float) -> torch.Tensor:
    """(cells, head_dim // 2) rotation angles of every raster cell of the grid; in 2D each axis
    gets half a head's pairs, as in LlamaGen, in 3D time gets what the two sides leave."""
    pairs = head_dim // 2
    if len(grid) == 2:
        axis_pairs = [pairs // 2, pairs // 2]
    else:
        axis_pairs = [pairs - 2 * (pairs // 3), pairs // 3, pairs // 3]
    coords = torch.cartesian_prod(*(torch.arange(size) for size in grid))
    if coords.dim() == 1:
        coords = coords[:, None]
    per_axis = []
    for axis, n in enumerate(axis_pairs):
        # Written as LlamaGen writes it so the float32 values agree bit for bit.
        frequencies = 1.0 / (base ** (torch.arange(0, 2 * n, 2)[:n].float() / (2 * n)))
        per_axis.append(torch.outer(coords[:, axis], frequencies))
    return torch.cat(per_axis, dim=-1)


def rotary_rows(
    grid: tuple[int, ...], cells: np.ndarray, head_dim: int, base: float = 10000.0
) -> torch.Tensor:
    """(len(cells), head_dim // 2, 2) cos/sin of the raster cell of each sequence position; a
    cell of -1 gets zeros, not the identity, as LlamaGen's class and PAR's transition tokens did."""
    angles = cell_angles(grid, head_dim, base)
    table = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)
    cells = torch.as_tensor(cells, dtype=torch.long)
    rows = table[cells.clamp(min=0)]
    rows[cells < 0] = 0.0
    return rows


def apply_rotary(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of x (batch, seq, ..., head_dim) in float32 by rope (seq, pairs, 2),
    in real operations as LlamaGen: a complex product may round otherwise (fused multiply-adds)."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    shape = (1, rope.shape[0], *([1] * (x.dim() - 3)), rope.shape[1])
    cos, sin = rope[..., 0].view(shape), rope[..., 1].view(shape)
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([even * cos - odd * sin, odd * cos + even * sin], dim=-1)
    return rotated.flatten(-2).type_as(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(torch.mean(x32 * x32, dim=-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


# SDPA's fused CUDA kernels take half-precision heads only in multiples of 8 wide; zero columns add
# nothing to a dot product, so a CUDA cache pads other widths and attention runs at that width.
HEAD_ALIGNMENT = 8


def cache_head_dim(head_dim: int, device: torch.device | str) -> int:
    """The width a KV cache on `device` stores each head at."""
    if torch.device(device).type != "cuda":
        return head_dim
    return -(-head_dim // HEAD_ALIGNMENT) * HEAD_ALIGNMENT


def cache_dtype(dtype: torch.dtype, device: torch.device | str, widest_pass: int) -> torch.dtype:
    """The dtype of a KV cache for a `dtype` model: float32 on the CPU when every pass has one
    query, where SDPA's half-precision kernel is slower than its float32 one (widening is exact)."""
    one_query_cpu = torch.device(device).type == "cpu" and widest_pass == 1
    return torch.float32 if one_query_cpu else dtype


class KVCache:
    """Keys and values of every layer for one generation, allocated once: one tensor per layer,
    so that a compiled pass writes each in place rather than through a view of a shared one."""

    def __init__(
        self,
        cfg: GPTConfig,
        batch: int,
        slots: int,
        device: torch.device | str,
        dtype: torch.dtype,
        head_dim: int | None = None,
    ):
        self.head_dim = head_dim or cache_head_dim(cfg.head_dim, device)
        shape = (batch, cfg.n_head, slots, self.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]

    def write(self, layer: int, k, v, start: int, positions: torch.Tensor | None):
        """Store k, v at slots [start, start + new) and return every slot before their end; with
        `positions`, store them there and return all slots, shapes fixed for CUDA graphs."""
        keys, values = self.keys[layer], self.values[layer]
        if positions is not None:
            keys.index_copy_(2, positions, k.to(keys.dtype))
            values.index_copy_(2, positions, v.to(values.dtype))
            return keys, values
        end = start + k.shape[2]
        keys[:, :, start:end] = k
        values[:, :, start:end] = v
        return keys[:, :, :end], values[:, :, :end]


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
        start: int,
        positions: torch.Tensor | None,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        batch, seq, dim = x.shape
        qkv = self.wqkv(x).view(batch, seq, 3, self.n_head, self.head_dim)
        q, k = apply_rotary(qkv[:, :, :2], rope).unbind(2)
        v = qkv[:, :, 2]
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        padding = 0 if cache is None else cache.head_dim - self.head_dim
        if padding:
            q, k, v = (F.pad(t, (0, padding)) for t in (q, k, v))
        if cache is not None:
            k, v = cache.write(layer, k, v, start, positions)
        # The padded width must not change the scale; unpadded, SDPA's own default keeps the
        # reference's rounding.
        scale = 1 / math.sqrt(self.head_dim) if padding else None
        # A cache wider than the model (`cache_dtype`) takes the queries to its dtype.
        out = F.scaled_dot_product_attention(q.to(k.dtype), k, v, attn_mask=mask, scale=scale)
        if padding:
            out = out[..., : self.head_dim]
        return self.wo(out.transpose(1, 2).reshape(batch, seq, dim).to(x.dtype))


class FeedForward(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w2 = nn.Linear(cfg.ffn_hidden, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, rope, cache, layer, start, positions, mask):
        normed = self.attention_norm(x)
        attended = self.attention(normed, rope, cache, layer, start, positions, mask)
        h = x + self.dropout(attended)
        return h + self.dropout(self.feed_forward(self.ffn_norm(h)))


class Transformer(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        # The containers give the checkpoint's key names. The class table has one more row (index
        # num_classes) for the unconditional branch; PAR's transition tokens are M1 .. M(n-1).
        classes = nn.Embedding(cfg.num_classes + 1, cfg.dim)
        self.cls_embedding = nn.Sequential(OrderedDict(embedding_table=classes))
        if cfg.regions > 1:
            transitions = nn.Embedding(cfg.regions - 1, cfg.dim)
            self.spe_tok_embeddings = nn.ModuleDict({"special_embeddings": transitions})
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

    def forward(
        self,
        h: torch.Tensor,
        rope: torch.Tensor,
        cache: KVCache | None = None,
        start: int = 0,
        positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Float32 logits of embeddings h (batch, width, dim): with a cache, h fills the slots from
        `start` and sees every slot before their end; with `positions`, all of them under `mask`."""
        h = self.token_dropout(h)
        for index, layer in enumerate(self.layers):
            h = layer(h, rope, cache, index, start, positions, mask)
        return self.output(self.norm(h)).float()
