"""Checkpoint files in and out, safely.

Two formats:

* The published PyTorch pickles (LlamaGen / PAR ``.pt`` files). They are read only with
  ``torch.load(weights_only=True)``; the one non-tensor class they carry, ``argparse.Namespace``
  under ``"args"``, is allow-listed, and a file that needs anything else is refused, never loaded
  with code execution.
* Our own: a safetensors file whose header metadata (all strings) says what it holds::

      format="parcli", format_version="1", kind="gpt"|"vq", config=<JSON of the config>,
      arch, regions, grid ("24x24"), num_classes, vocab_size, dtype,
      source_file, source_sha256, plus any extras the writer adds.

``convert`` turns the first into the second; ``load_transformer`` / ``load_vq`` build modules
from the second. Every failure a user can cause raises ``WeightsError`` with a one-line message.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn
from torch.overrides import TorchFunctionMode

from parcli.config import (
    CHECKPOINT_KINDS,
    SUPPORTED_REGIONS,
    GPTConfig,
    ffn_hidden_dim,
    preset_heads,
)
from parcli.dtypes import dtype_name, storage_dtype
from parcli.io.files import file_sha256
from parcli.io.tensors import (
    Progress,
    WeightsError,
    one_line,
    read_safetensors,
    stored_dtype,
    write_safetensors,
)
from parcli.model import Transformer
from parcli.vq import VQConfig, VQModel

FORMAT = "parcli"
FORMAT_VERSION = "1"
DEFAULT_GRID = (24, 24)

# Classes the weights-only unpickler may rebuild beyond torch's own allow-list.
SAFE_GLOBALS = [argparse.Namespace]

# Keys of a state dict that are not weights: rotary tables, caches, masks, usage statistics.
_NOT_WEIGHTS = re.compile(
    r"(^|\.)(freqs_cis|causal_mask|k_cache|v_cache)$|(^|\.)kv_cache(\.|$)|^quantize\.codebook_used$"
)
_WRAPPERS = ("model", "module", "state_dict")
_PREFIXES = ("_orig_mod.", "module.")

Shape = tuple[int, ...]


def _float_dtype_name(dtypes: Iterable[torch.dtype]) -> str:
    names = {dtype_name(d) for d in dtypes if d.is_floating_point}
    if not names:
        return "none"
    return names.pop() if len(names) == 1 else "mixed"


# --------------------------------------------------------------------------------------------
# files


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise WeightsError(f"{path} does not exist; check the path or download it again")
    if not path.is_file():
        raise WeightsError(f"{path} is not a file; pass the checkpoint file itself")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path} is empty (0 bytes); the download failed, fetch it again")


def _sniff(path: Path) -> str:
    """The file's format from its first bytes: zip, pickle, safetensors, lfs or unknown."""
    with open(path, "rb") as handle:
        head = handle.read(64)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(b"version https://git-lfs"):
        return "lfs"
    if len(head) >= 9 and head[8:9] == b"{":
        (header_len,) = struct.unpack("<Q", head[:8])
        if header_len <= path.stat().st_size - 8:
            return "safetensors"
    if head[:1] == b"\x80":  # pickle protocol opcode: the legacy torch.save format
        return "pickle"
    return "unknown"


# --------------------------------------------------------------------------------------------
# official pickles


def _unsafe_globals(path: Path) -> list[str]:
    # Statically lists the classes/functions the pickle names, without unpickling anything.
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:
        return []
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in SAFE_GLOBALS}
    return [name for name in found if name not in allowed]


def _torch_load(path: Path) -> Any:
    kind = _sniff(path)
    if kind == "lfs":
        raise WeightsError(
            f"{path} is a Git LFS pointer, not the weights; download the file itself"
        )
    if kind == "safetensors":
        return read_safetensors(path)[0]
    if kind == "zip" and not zipfile.is_zipfile(path):
        raise WeightsError(f"{path} is truncated or corrupt (incomplete zip); download it again")
    if kind not in ("zip", "pickle"):
        raise WeightsError(
            f"{path} is not a PyTorch checkpoint (unrecognised contents); check the file"
        )
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=kind == "zip")
    except pickle.UnpicklingError as exc:
        message = str(exc)
        names = re.findall(r"GLOBAL ([\w.]+)", message)
        if names:
            # A zip checkpoint's pickle can be scanned statically, so the list is complete and
            # certain; in a legacy file a truncated name can also come from damage.
            static = _unsafe_globals(path) if kind == "zip" else []
            damaged = "" if static else " (or the file is damaged)"
            raise WeightsError(
                f"{path} contains {_listing('disallowed global(s)', static or names)}, which need "
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


def _strip_key(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key.replace("._orig_mod.", ".")


def clean_state(state: Mapping[str, Any], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Strip ``_orig_mod.`` / ``module.`` prefixes and drop caches, rotary tables and masks."""
    cleaned: dict[str, torch.Tensor] = {}
    for raw, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        key = _strip_key(str(raw))
        if _NOT_WEIGHTS.search(key):
            continue
        if key in cleaned:
            raise WeightsError(f"{source} holds {key!r} twice (with and without a prefix)")
        cleaned[key] = value.detach()
    if not cleaned:
        raise WeightsError(f"{source} holds no weight tensors")
    return cleaned


def _read_official(path: str | os.PathLike, use_ema: bool) -> tuple[dict[str, torch.Tensor], str]:
    path = Path(path)
    _check_readable(path)
    obj = _torch_load(path)
    state, layout = _select_state(obj, path, use_ema)
    return clean_state(state, str(path)), layout


def read_official(path: str | os.PathLike, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """Weights of a published checkpoint (any layout of PAR_SPEC section 6), on CPU.

    Zip-format files are memory-mapped, so this costs little memory until tensors are touched.
    """
    return _read_official(path, use_ema)[0]


# --------------------------------------------------------------------------------------------
# architecture from shapes


def _shape(value: Any) -> Shape:
    return tuple(int(d) for d in (value.shape if hasattr(value, "shape") else value))


def _need(state: Mapping[str, Any], key: str, what: str) -> Shape:
    if key not in state:
        raise WeightsError(f"not a {what} checkpoint: {key!r} is missing")
    return _shape(state[key])


def detect_kind(state: Mapping[str, Any]) -> str:
    """Tell a LlamaGen/PAR transformer ("gpt") from a LlamaGen VQ tokenizer ("vq")."""
    if "tok_embeddings.weight" in state:
        return "gpt"
    if "quantize.embedding.weight" in state and any(k.startswith("decoder.") for k in state):
        return "vq"
    seen = ", ".join(list(state)[:4])
    raise WeightsError(f"neither a LlamaGen/PAR transformer nor a VQ tokenizer (keys: {seen}, ...)")


def _grid(grid: int | Iterable[int] | None) -> tuple[int, ...]:
    """A token grid given as sides, or one side of a square; LlamaGen's 24x24 by default."""
    if grid is None:
        return DEFAULT_GRID
    if isinstance(grid, int):
        return (grid, grid)
    return tuple(int(g) for g in grid)


def _layer_count(state: Mapping[str, Any], prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.")
    indices = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(indices) + 1 if indices else 0


def infer_gpt_config(
    state: Mapping[str, Any],
    heads: int | None = None,
    grid: int | Iterable[int] | None = None,
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
    regions = _shape(state[special])[0] + 1 if special in state else 1
    if regions not in SUPPORTED_REGIONS:
        raise WeightsError(
            f"{special} has {regions - 1} rows; only 3 (4 regions) or 15 (16 regions) are known"
        )
    n_head = heads or preset_heads(n_layer, dim)
    if not n_head:
        raise WeightsError(
            f"cannot tell the attention heads of a custom {n_layer}-layer, {dim}-wide "
            "transformer; give their number",
            "heads",
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
    grid_shape = _grid(grid)
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


def infer_vq_config(state: Mapping[str, Any], norm_groups: int | None = None) -> VQConfig:
    """The tokenizer architecture of a LlamaGen-layout VQ state dict (tensors or shapes).

    GroupNorm's group count is not stored in the weights: LlamaGen always uses 32.
    """
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
    if any(w % ch for w in widths):
        raise WeightsError(f"VQ level widths {widths} are not multiples of conv_in's {ch}")
    groups = norm_groups or 32
    if any(w % groups for w in widths):
        raise WeightsError(
            f"VQ widths {widths} are not divisible by {groups} GroupNorm groups; "
            "pass the group count the tokenizer was trained with"
        )
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
            norm_groups=groups,
        )
    except ValueError as exc:
        raise WeightsError(f"unsupported VQ architecture: {one_line(exc)}") from None


# --------------------------------------------------------------------------------------------
# modules and validation


class _SkipMetaInit(TorchFunctionMode):
    """Skip weight initialisation on meta tensors, which hold no values to initialise.

    Some init ops (``normal_``, ``F.normalize``) have only Python meta kernels whose first use
    imports torch._dynamo: seconds of start-up for nothing.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        target = args[0] if args else kwargs.get("tensor", kwargs.get("input"))
        skippable = name == "normalize" or (name.endswith("_") and not name.endswith("__"))
        if skippable and isinstance(target, torch.Tensor) and target.is_meta:
            return target
        return func(*args, **kwargs)


def build_meta(kind: str, config: GPTConfig | VQConfig) -> nn.Module:
    """The module for a config, with no storage (on the meta device)."""
    with torch.device("meta"), _SkipMetaInit():
        return Transformer(config) if kind == "gpt" else VQModel(config)


def expected_shapes(kind: str, config: GPTConfig | VQConfig) -> dict[str, Shape]:
    """Key -> shape of the state dict the module for ``config`` expects."""
    return {k: tuple(v.shape) for k, v in build_meta(kind, config).state_dict().items()}


def _fmt_shape(shape: Shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def _listing(label: str, items: list[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit]) + (", ..." if len(items) > limit else "")
    return f"{len(items)} {label} ({shown})"


def validate(
    state: Mapping[str, Any],
    module_state_shapes: Mapping[str, Any],
    what: str = "checkpoint",
    hint: str = "the file is damaged or not a released LlamaGen/PAR checkpoint",
) -> None:
    """Raise one WeightsError naming every missing, unexpected and mis-shaped key (first few)."""
    expected = {k: _shape(v) for k, v in module_state_shapes.items()}
    found = {k: _shape(v) for k, v in state.items()}
    missing = sorted(k for k in expected if k not in found)
    extra = sorted(k for k in found if k not in expected)
    wrong = sorted(
        f"{k} {_fmt_shape(found[k])} != {_fmt_shape(expected[k])}"
        for k in expected
        if k in found and found[k] != expected[k]
    )
    problems = [
        _listing(label, items)
        for label, items in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong))
        if items
    ]
    if problems:
        raise WeightsError(f"{what} does not match the model: {'; '.join(problems)}; {hint}")


def _describe(kind: str, config: GPTConfig | VQConfig) -> str:
    if kind == "gpt":
        return f"{config.arch} with {config.regions} region(s)"
    return f"VQ-{config.downsample} tokenizer"


# --------------------------------------------------------------------------------------------
# our safetensors format


def _metadata_for(
    kind: str,
    config: GPTConfig | VQConfig,
    extras: Mapping[str, Any] | None,
    dtypes: Iterable[torch.dtype],
) -> dict[str, str]:
    meta: dict[str, str] = {}
    for key, value in (extras or {}).items():
        if value is not None:
            meta[str(key)] = value if isinstance(value, str) else json.dumps(value)
    meta.update(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        kind=kind,
        config=json.dumps(config.to_dict(), sort_keys=True),
        dtype=_float_dtype_name(dtypes),
    )
    if kind == "gpt":
        meta.update(
            arch=config.arch,
            regions=str(config.regions),
            grid="x".join(map(str, config.grid)),
            num_classes=str(config.num_classes),
            vocab_size=str(config.vocab_size),
        )
    else:
        meta.update(arch=f"VQ-{config.downsample}", vocab_size=str(config.codebook_size))
    return meta


def save_checkpoint(
    path: str | os.PathLike,
    state: Mapping[str, torch.Tensor],
    kind: str,
    config: GPTConfig | VQConfig,
    metadata: Mapping[str, Any] | None = None,
    dtype: str | torch.dtype | None = None,
    progress: Progress | None = None,
) -> dict[str, str]:
    """Write ``state`` as a parcli safetensors file, atomically; returns the header metadata.

    Floating tensors are cast to ``dtype`` ("fp32", "bf16", "fp16"; None/"keep" keeps them).
    ``metadata`` adds extra string fields (non-strings are stored as JSON); the standard fields
    are always computed from ``kind``, ``config`` and the tensors.
    """
    if kind not in CHECKPOINT_KINDS:
        raise ValueError(f"kind must be one of {', '.join(CHECKPOINT_KINDS)}, not {kind!r}")
    path = Path(path)
    if not path.parent.is_dir():
        raise WeightsError(f"folder {path.parent} does not exist; create it first")
    target = storage_dtype(dtype)
    meta = _metadata_for(kind, config, metadata, (stored_dtype(t, target) for t in state.values()))
    write_safetensors(path, state, meta, target, progress)
    return meta


def _open_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu"):
    path = Path(path)
    _check_readable(path)
    try:
        return safe_open(str(path), framework="pt", device=str(torch.device(device)))
    except Exception as exc:
        if _sniff(path) in ("zip", "pickle"):
            raise WeightsError(
                f"{path} is a PyTorch pickle, not a parcli checkpoint; convert it with "
                "`par convert-weights`"
            ) from None
        raise WeightsError(
            f"{path} is not a readable safetensors file ({one_line(exc, 80)}); "
            "download or convert it again"
        ) from None


def _parse_metadata(path: str | os.PathLike, meta: Mapping[str, str] | None):
    meta = dict(meta or {})
    if meta.get("format") != FORMAT:
        raise WeightsError(
            f"{path} is not a parcli checkpoint; convert it with `par convert-weights`"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise WeightsError(
            f"{path} has parcli format version {meta.get('format_version')!r}, this parcli reads "
            f"{FORMAT_VERSION}; upgrade parcli or convert the file again"
        )
    kind = meta.get("kind")
    if kind not in CHECKPOINT_KINDS:
        raise WeightsError(f"{path} has unknown kind {kind!r}; convert it again")
    try:
        data = json.loads(meta["config"])
        config = GPTConfig.from_dict(data) if kind == "gpt" else VQConfig.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(
            f"{path} has an unreadable config ({one_line(exc, 80)}); convert it again"
        ) from None
    return kind, config, meta


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The header metadata of a parcli checkpoint, without reading any tensor."""
    with _open_checkpoint(path) as handle:
        return _parse_metadata(path, handle.metadata())[2]


def _load_checked(
    path: str | os.PathLike,
    device: str | torch.device,
    dtype: torch.dtype | None,
    expect_kind: str | None = None,
):
    with _open_checkpoint(path, device) as handle:
        kind, config, meta = _parse_metadata(path, handle.metadata())
        if expect_kind is not None and kind != expect_kind:
            wanted = CHECKPOINT_KINDS[expect_kind]
            raise WeightsError(f"{path} holds a {kind} checkpoint, not a {wanted}")
        keys = list(handle.keys())
        shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in keys}
        validate(
            shapes,
            expected_shapes(kind, config),
            what=f"{path} ({_describe(kind, config)})",
            hint="convert it again",
        )
        state: dict[str, torch.Tensor] = {}
        try:
            for key in keys:
                tensor = handle.get_tensor(key)
                state[key] = tensor.to(stored_dtype(tensor, dtype))
        except Exception as exc:
            raise WeightsError(
                f"{path} is truncated or corrupt ({one_line(exc, 80)}); convert it again"
            ) from None
    return state, kind, config, meta


def read_checkpoint(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
) -> tuple[dict[str, torch.Tensor], str, GPTConfig | VQConfig, dict[str, str]]:
    """(state, kind, config, metadata) of a parcli checkpoint, validated against its config."""
    return _load_checked(path, device, storage_dtype(dtype))


def _materialise(
    kind: str,
    config: GPTConfig | VQConfig,
    state: dict[str, torch.Tensor],
) -> nn.Module:
    module = build_meta(kind, config)
    module.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"{type(module).__name__} has tensors not in its state dict: {left}")
    return module.eval()


def load_transformer(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
) -> tuple[Transformer, dict[str, str]]:
    """The transformer of a parcli checkpoint, in eval mode, with its metadata.

    Tensors go straight from the file to ``device`` and ``dtype`` (floating ones only), and the
    module adopts them without a second copy.
    """
    state, kind, config, meta = _load_checked(path, device, storage_dtype(dtype), "gpt")
    return _materialise(kind, config, state), meta


def load_vq(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
) -> tuple[VQModel, dict[str, str]]:
    """The VQ tokenizer of a parcli checkpoint, in eval mode, with its metadata."""
    state, kind, config, meta = _load_checked(path, device, storage_dtype(dtype), "vq")
    return _materialise(kind, config, state), meta


# --------------------------------------------------------------------------------------------
# conversion


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    use_ema: bool = False,
    heads: int | None = None,
    grid: int | Iterable[int] | None = None,
    dtype: str | torch.dtype | None = "keep",
    norm_groups: int | None = None,
    extra_metadata: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> dict[str, str]:
    """Convert a published checkpoint into a parcli safetensors file; returns its metadata.

    Reads ``src`` safely, tells a transformer from a VQ tokenizer, infers the architecture from
    the tensor shapes, checks every tensor against a model of that architecture, and writes
    ``dst`` atomically with the sha256 of ``src`` in its metadata.
    """
    src, dst = Path(src), Path(dst)
    _check_readable(src)
    if src.resolve() == dst.resolve() or (dst.exists() and os.path.samefile(src, dst)):
        raise WeightsError(f"refusing to overwrite the source {src}; choose another output path")
    if not dst.parent.is_dir():
        raise WeightsError(f"output folder {dst.parent} does not exist; create it first")
    target = storage_dtype(dtype)
    if progress is not None:
        progress("read", 0, 1)
    state, layout = _read_official(src, use_ema)
    if progress is not None:
        progress("read", 1, 1)
    kind = detect_kind(state)
    config = (
        infer_gpt_config(state, heads=heads, grid=grid)
        if kind == "gpt"
        else infer_vq_config(state, norm_groups=norm_groups)
    )
    validate(state, expected_shapes(kind, config), what=f"{src} ({_describe(kind, config)})")
    extras = dict(extra_metadata or {})
    extras.update(
        source_file=src.name,
        source_sha256=file_sha256(src, progress),
        source_layout=layout,
    )
    return save_checkpoint(dst, state, kind, config, extras, dtype=target, progress=progress)
