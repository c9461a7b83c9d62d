"""Published LlamaGen / PAR pickles into our safetensors format, read only with
``torch.load(weights_only=True)`` (``argparse.Namespace`` allowed), never with code execution;
the architecture is inferred from the shapes and every tensor checked before anything is written."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import pickle
import re
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from parcli.config import GPT_PRESETS, SUPPORTED_REGIONS, GPTConfig, ffn_hidden_dim, preset_name
from parcli.engine.dtypes import storage_dtype
from parcli.io.checkpoints import (
    Shape,
    check_readable,
    describe,
    expected_shapes,
    listing,
    save_checkpoint,
    shape_of,
    sniff_format,
    validate,
)
from parcli.io.files import file_sha256
from parcli.io.tensors import WeightsError, one_line, read_safetensors
from parcli.vq import VQConfig

DEFAULT_GRID = (24, 24)

# Classes the weights-only unpickler may rebuild beyond torch's own allow-list.
SAFE_GLOBALS = [argparse.Namespace]

# Keys of a state dict that are not weights: rotary tables, caches, masks, usage statistics.
_NOT_WEIGHTS = re.compile(
    r"(^|\.)(freqs_cis|causal_mask|k_cache|v_cache)$|(^|\.)kv_cache(\.|$)|^quantize\.codebook_used$"
)
_WRAPPERS = ("model", "module", "state_dict")
_PREFIXES = re.compile(r"^(?:_orig_mod\.|module\.)+")  # of torch.compile and DataParallel


class HeadsUnknown(WeightsError):
    """A custom transformer whose head count only its maker knows: a command that converts on
    the fly says how to convert it with `--heads` instead."""

    def __init__(self, what: str):
        super().__init__(f"{what}; give their number", "heads")
        self.what = what


def _torch_load(path: Path) -> Any:
    kind = sniff_format(path)
    if kind == "lfs":
        raise WeightsError(
            f"{path} is a Git LFS pointer, not the weights; download the file itself"
        )
    if kind == "safetensors":
        return read_safetensors(path)[0]
    if kind == "zip":
        if not zipfile.is_zipfile(path):
            raise WeightsError(
                f"{path} is truncated or corrupt (incomplete zip); download it again"
            )
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("data.pkl") for name in archive.namelist()):
                raise WeightsError(
                    f"{path} is a zip archive but not a PyTorch checkpoint (it holds no data.pkl)"
                )
    elif kind != "pickle":
        raise WeightsError(
            f"{path} is not a PyTorch checkpoint (unrecognised contents); check the file"
        )
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            if kind == "zip":  # memory-mapped
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            # A handle, not the path: torch reads a path by its suffix, and a legacy pickle may
            # be misnamed `.safetensors`.
            with open(path, "rb") as handle:
                return torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        names = re.findall(r"GLOBAL ([\w.]+)", message)
        if names:
            # A zip checkpoint's pickle can be scanned statically, without unpickling, so the
            # list is complete and certain; in a legacy file a truncated name can also be damage.
            static = []
            if kind == "zip":
                allowed = {f"{g.__module__}.{g.__qualname__}" for g in SAFE_GLOBALS}
                with contextlib.suppress(Exception):
                    found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
                    static = [name for name in found if name not in allowed]
            damaged = "" if static else " (or the file is damaged)"
            raise WeightsError(
                f"{path} contains {listing('disallowed global(s)', static or names)}, which need "
                f"arbitrary-code unpickling{damaged}; it will not be loaded (re-save its state "
                "dict with plain tensors in a trusted environment)"
            ) from None
        raise WeightsError(
            f"{path} is truncated or corrupt ({_torch_reason(message)}); download it again"
        ) from None
    except Exception as exc:  # torch.load on a damaged file fails in many ways
        raise WeightsError(
            f"{path} is truncated or corrupt ({type(exc).__name__}: {one_line(exc, 80)}); "
            "download it again"
        ) from None


def _torch_reason(message: str) -> str:
    # torch wraps the unpickler's error in advice about weights_only=False: keep only the error.
    for line in message.splitlines():
        line = line.strip().removeprefix("WeightsUnpickler error:").strip()
        boilerplate = ("Weights only load failed", "Check the documentation", "(1)", "(2)")
        if line and not line.startswith(boilerplate) and "weights_only" not in line:
            return one_line(line, 80)
    return "unreadable pickle"


def _is_tensor_map(obj: Any) -> bool:
    return isinstance(obj, Mapping) and any(isinstance(v, torch.Tensor) for v in obj.values())


def _select_state(obj: Any, path: Path, use_ema: bool) -> tuple[Mapping, str]:
    """The state dict inside a loaded checkpoint, and the layout it was found in."""
    if not isinstance(obj, Mapping):
        raise WeightsError(
            f"{path} holds a {type(obj).__name__}, not a state dict; save model.state_dict()"
        )
    if use_ema:
        ema = obj.get("ema")
        if not isinstance(ema, Mapping):
            raise WeightsError(f"{path} has no 'ema' weights; convert its model weights", "ema")
        return ema, "ema"
    layout: list[str] = []
    for _ in range(3):  # e.g. {"model": {"module": {...}}}
        if _is_tensor_map(obj):
            break
        wrapper = next((k for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if wrapper is None:
            break
        layout.append(wrapper)
        obj = obj[wrapper]
    if not _is_tensor_map(obj):
        keys = ", ".join(map(str, list(obj)[:5])) or "nothing"
        raise WeightsError(
            f"{path} has no weights: found {keys}, expected 'model', 'module', 'state_dict', "
            "'ema' or tensors"
        )
    return obj, "/".join(layout) or "flat"


def clean_state(state: Mapping[str, Any], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Strip ``_orig_mod.`` / ``module.`` prefixes and drop caches, rotary tables and masks."""
    cleaned: dict[str, torch.Tensor] = {}
    for raw, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        key = _PREFIXES.sub("", str(raw)).replace("._orig_mod.", ".")
        if _NOT_WEIGHTS.search(key):
            continue
        if key in cleaned:
            raise WeightsError(f"{source} holds {key!r} twice (with and without a prefix)")
        cleaned[key] = value.detach()
    if not cleaned:
        raise WeightsError(f"{source} holds no weight tensors")
    return cleaned


def _need(state: Mapping[str, Any], key: str, what: str) -> Shape:
    if key not in state:
        raise WeightsError(f"not a {what} checkpoint: {key!r} is missing")
    return shape_of(state[key])


def detect_kind(state: Mapping[str, Any]) -> str:
    """Tell a LlamaGen/PAR transformer ("gpt") from a LlamaGen VQ tokenizer ("vq")."""
    if "tok_embeddings.weight" in state:
        return "gpt"
    if "quantize.embedding.weight" in state and any(k.startswith("decoder.") for k in state):
        return "vq"
    seen = ", ".join(list(state)[:4])
    raise WeightsError(f"neither a LlamaGen/PAR transformer nor a VQ tokenizer (keys: {seen}, ...)")


def _layer_count(state: Mapping[str, Any], prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.")
    indices = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0


def infer_gpt_config(
    state: Mapping[str, Any], heads: int | None = None, grid: int | Iterable[int] | None = None
) -> GPTConfig:
    """The transformer architecture a state dict (tensors or shapes) was made for."""
    what = "LlamaGen/PAR transformer"
    vocab, dim = _need(state, "tok_embeddings.weight", what)
    out_rows, out_cols = _need(state, "output.weight", what)
    if (out_rows, out_cols) != (vocab, dim):
        raise WeightsError(
            f"output.weight is {out_rows}x{out_cols} but tok_embeddings.weight is {vocab}x{dim}; "
            "the checkpoint is inconsistent"
        )
    cls_rows = _need(state, "cls_embedding.embedding_table.weight", what)[0]
    n_layer = _layer_count(state, "layers.")
    if n_layer == 0:
        raise WeightsError(f"not a {what} checkpoint: no layers.N.* weights")
    qkv_rows, qkv_cols = _need(state, "layers.0.attention.wqkv.weight", what)
    if qkv_rows != 3 * dim or qkv_cols != dim:
        raise WeightsError(
            f"wqkv is {qkv_rows}x{qkv_cols}, not {3 * dim}x{dim}: grouped-query attention is not "
            "supported (no released checkpoint uses it)"
        )
    special = "spe_tok_embeddings.special_embeddings.weight"
    regions = shape_of(state[special])[0] + 1 if special in state else 1
    if regions not in SUPPORTED_REGIONS:
        raise WeightsError(
            f"{special} has {regions - 1} rows; only 3 (4 regions) or 15 (16 regions) are known"
        )
    preset = preset_name(n_layer, dim)
    n_head = heads or (GPT_PRESETS[preset][1] if preset else None)
    if not n_head:
        raise HeadsUnknown(
            f"cannot tell the attention heads of a custom {n_layer}-layer, {dim}-wide transformer"
        )
    hidden = _need(state, "layers.0.feed_forward.w1.weight", what)[0]
    multiple_of = 256
    if hidden != ffn_hidden_dim(dim, multiple_of):
        if hidden < int(2 * 4 * dim / 3):
            raise WeightsError(
                f"feed-forward width {hidden} is below LlamaGen's {ffn_hidden_dim(dim)} for dim "
                f"{dim}; not a LlamaGen-family transformer"
            )
        multiple_of = hidden
    # The grid is given as sides, or one side of a square; LlamaGen's 24x24 by default.
    grid_shape = (grid, grid) if isinstance(grid, int) else tuple(map(int, grid or DEFAULT_GRID))
    side = math.isqrt(regions)
    if len(grid_shape) not in (2, 3) or any(g < 1 or g % side for g in grid_shape[-2:]):
        raise WeightsError(
            f"{'x'.join(map(str, grid_shape))} tokens cannot be split into {regions} regions; "
            "give the grid the model was trained for, e.g. 24",
            "grid",
        )
    try:
        return GPTConfig(
            n_layer=n_layer,
            n_head=int(n_head),
            dim=dim,
            vocab_size=vocab,
            num_classes=cls_rows - 1,
            grid=grid_shape,
            regions=regions,
            ffn_multiple_of=multiple_of,
        )
    except ValueError as exc:
        raise WeightsError(f"{one_line(exc)}; give another number of heads", "heads") from None


def infer_vq_config(state: Mapping[str, Any]) -> VQConfig:
    """The tokenizer architecture of a LlamaGen-layout VQ state dict (tensors or shapes); the
    GroupNorm group count is not in the weights, and LlamaGen always uses 32."""
    what = "LlamaGen VQ"
    codebook_size, codebook_dim = _need(state, "quantize.embedding.weight", what)
    quant = _need(state, "quant_conv.weight", what)
    ch, in_channels = _need(state, "encoder.conv_in.weight", what)[:2]
    out_channels = _need(state, "decoder.conv_out.weight", what)[0]
    levels = _layer_count(state, "encoder.conv_blocks.")
    num_res_blocks = _layer_count(state, "encoder.conv_blocks.0.res.")
    if levels == 0 or num_res_blocks == 0:
        raise WeightsError(f"not a {what} checkpoint: no encoder.conv_blocks.N.res.M weights")
    widths = [
        _need(state, f"encoder.conv_blocks.{i}.res.0.conv1.weight", what)[0] for i in range(levels)
    ]
    try:
        return VQConfig(
            codebook_size=codebook_size,
            codebook_dim=codebook_dim,
            z_channels=quant[1],
            ch=ch,
            ch_mult=tuple(w // ch for w in widths),
            num_res_blocks=num_res_blocks,
            in_channels=in_channels,
            out_channels=out_channels,
            norm_groups=32,
        )
    except ValueError as exc:
        raise WeightsError(f"unsupported VQ architecture: {one_line(exc)}") from None


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    use_ema: bool = False,
    heads: int | None = None,
    grid: int | Iterable[int] | None = None,
    dtype: str | torch.dtype | None = "keep",
    extra_metadata: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """A published checkpoint as a parcli safetensors file; returns its metadata (sha256 too)."""
    src, dst = Path(src), Path(dst)
    check_readable(src)
    if src.resolve() == dst.resolve() or (dst.exists() and os.path.samefile(src, dst)):
        raise WeightsError(f"refusing to overwrite the source {src}; choose another output path")
    target = storage_dtype(dtype)
    state, layout = _select_state(_torch_load(src), src, use_ema)
    state = clean_state(state, str(src))
    try:
        kind = detect_kind(state)
    except WeightsError as exc:
        raise WeightsError(f"{src}: {exc}") from None
    config = infer_gpt_config(state, heads, grid) if kind == "gpt" else infer_vq_config(state)
    validate(state, expected_shapes(kind, config), what=f"{src} ({describe(kind, config)})")
    try:  # what par's loader will read back: a file it would refuse is never written
        type(config).from_dict(config.to_dict())
    except ValueError as exc:
        raise WeightsError(f"{src} converts to a model par cannot load: {one_line(exc)}") from None
    extras = dict(extra_metadata or {})
    extras.update(source_file=src.name, source_sha256=file_sha256(src), source_layout=layout)
    return save_checkpoint(dst, state, kind, config, extras, dtype=target)
