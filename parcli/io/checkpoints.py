"""Our checkpoint format: a safetensors file whose metadata says what it holds; every tensor is
checked against the declared architecture before a module is built (failures: ``WeightsError``)."""

from __future__ import annotations

import functools
import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn
from torch.overrides import TorchFunctionMode

from parcli.config import CHECKPOINT_KINDS, GPTConfig
from parcli.engine.dtypes import dtype_name, storage_dtype
from parcli.io.tensors import WeightsError, one_line, stored_dtype, write_safetensors
from parcli.model import Transformer
from parcli.vq import VQConfig, VQModel

FORMAT = "parcli"
FORMAT_VERSION = "1"

Shape = tuple[int, ...]


def check_readable(path: Path) -> None:
    if not path.exists():
        raise WeightsError(f"{path} does not exist; check the path or download it again")
    if not path.is_file():
        raise WeightsError(f"{path} is not a file; pass the checkpoint file itself")
    if path.stat().st_size == 0:
        raise WeightsError(f"{path} is empty (0 bytes); the download failed, fetch it again")


def sniff_format(path: Path) -> str:
    """The file's format from its first bytes: zip, pickle, safetensors, lfs or unknown."""
    with open(path, "rb") as handle:
        head = handle.read(64)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(b"version https://git-lfs"):
        return "lfs"
    if len(head) >= 9 and head[8:9] == b"{" and _json_header(path):
        return "safetensors"
    if head[:1] == b"\x80":  # pickle protocol opcode: the legacy torch.save format
        return "pickle"
    return "unknown"


def _json_header(path: Path, limit: int = 100 << 20) -> bool:
    """True when the file starts with a safetensors header: a length, then that much JSON."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > min(limit, path.stat().st_size - 8):
            return False
        try:
            return isinstance(json.loads(handle.read(length)), dict)
        except ValueError:
            return False


class _SkipMetaInit(TorchFunctionMode):
    """Skip weight initialisation on meta tensors: some init ops' meta kernels import
    torch._dynamo on first use, seconds of start-up for values nobody reads."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        target = args[0] if args else kwargs.get("tensor", kwargs.get("input"))
        skippable = name == "normalize" or (name.endswith("_") and not name.endswith("__"))
        if skippable and isinstance(target, torch.Tensor) and target.is_meta:
            return target
        return func(*args, **kwargs)


def shape_of(value: Any) -> Shape:
    return tuple(int(d) for d in (value.shape if hasattr(value, "shape") else value))


def build_meta(kind: str, config: GPTConfig | VQConfig) -> nn.Module:
    """The module for a config, with no storage (on the meta device)."""
    with torch.device("meta"), _SkipMetaInit():
        return Transformer(config) if kind == "gpt" else VQModel(config)


def expected_shapes(kind: str, config: GPTConfig | VQConfig) -> dict[str, Shape]:
    """Key -> shape of the state dict the module for ``config`` expects."""
    return {k: tuple(v.shape) for k, v in build_meta(kind, config).state_dict().items()}


def _shape_text(shape: Shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def listing(label: str, items: list[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit]) + (", ..." if len(items) > limit else "")
    return f"{len(items)} {label} ({shown})"


def validate(
    state: Mapping[str, Any],
    module_state_shapes: Mapping[str, Any],
    what: str = "checkpoint",
    hint: str = "the file is damaged or not a released LlamaGen/PAR checkpoint",
) -> None:
    """Raise one WeightsError naming every missing, unexpected and mis-shaped key (first few)."""
    expected = {k: shape_of(v) for k, v in module_state_shapes.items()}
    found = {k: shape_of(v) for k, v in state.items()}
    missing = sorted(k for k in expected if k not in found)
    extra = sorted(k for k in found if k not in expected)
    wrong = sorted(
        f"{k} {_shape_text(found[k])} != {_shape_text(expected[k])}"
        for k in expected
        if k in found and found[k] != expected[k]
    )
    problems = [
        listing(label, items)
        for label, items in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong))
        if items
    ]
    if problems:
        raise WeightsError(f"{what} does not match the model: {'; '.join(problems)}; {hint}")


def describe(kind: str, config: GPTConfig | VQConfig) -> str:
    if kind == "gpt":
        return f"{config.arch} with {config.regions} region(s)"
    return f"VQ-{config.downsample} tokenizer"


def save_checkpoint(
    path: str | os.PathLike,
    state: Mapping[str, torch.Tensor],
    kind: str,
    config: GPTConfig | VQConfig,
    metadata: Mapping[str, Any] | None = None,
    dtype: str | torch.dtype | None = None,
) -> dict[str, str]:
    """Write ``state`` as a parcli safetensors file, atomically, floating tensors cast to
    ``dtype``; returns the header metadata (``metadata`` adds fields, non-strings as JSON)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise WeightsError(f"folder {path.parent} does not exist; create it first")
    target = storage_dtype(dtype)
    floats = {dtype_name(stored_dtype(t, target)) for t in state.values() if t.is_floating_point()}
    meta = {
        str(key): value if isinstance(value, str) else json.dumps(value)
        for key, value in (metadata or {}).items()
        if value is not None
    }
    meta.update(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        kind=kind,
        config=json.dumps(config.to_dict(), sort_keys=True),
        dtype="mixed" if len(floats) > 1 else next(iter(floats), "none"),
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
    write_safetensors(path, state, meta, target)
    return meta


def _open_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu"):
    path = Path(path)
    check_readable(path)
    try:
        return safe_open(str(path), framework="pt", device=str(torch.device(device)))
    except Exception as exc:
        if sniff_format(path) in ("zip", "pickle"):
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


def read_config(path: str | os.PathLike) -> tuple[str, GPTConfig | VQConfig]:
    """(kind, config) of a parcli checkpoint, from its header alone."""
    with _open_checkpoint(path) as handle:
        return _parse_metadata(path, handle.metadata())[:2]


def read_checkpoint(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    expect_kind: str | None = None,
) -> tuple[dict[str, torch.Tensor], str, GPTConfig | VQConfig, dict[str, str]]:
    """(state, kind, config, metadata) of a parcli checkpoint, validated against its config."""
    dtype = storage_dtype(dtype)
    with _open_checkpoint(path, device) as handle:
        kind, config, meta = _parse_metadata(path, handle.metadata())
        if expect_kind is not None and kind != expect_kind:
            wanted = CHECKPOINT_KINDS[expect_kind]
            raise WeightsError(f"{path} holds a {kind} checkpoint, not a {wanted}")
        keys = list(handle.keys())
        # Layers are counted before a model of the declared size is built to compare shapes.
        layers = {key.split(".")[1] for key in keys if key.startswith("layers.")}
        if kind == "gpt" and len(layers) != config.n_layer:
            raise WeightsError(
                f"{path} declares {config.n_layer} layers but holds {len(layers)}; convert it again"
            )
        shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in keys}
        validate(
            shapes,
            expected_shapes(kind, config),
            what=f"{path} ({describe(kind, config)})",
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


def _load_module(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    *,
    kind: str,
) -> tuple[Any, dict[str, str]]:
    """The module of a parcli checkpoint of ``kind``, in eval mode, with its metadata; the
    module adopts the loaded tensors without a second copy."""
    state, kind, config, meta = read_checkpoint(path, device, dtype, kind)
    module = build_meta(kind, config)
    module.load_state_dict(state, strict=True, assign=True)
    return module.eval(), meta


load_transformer = functools.partial(_load_module, kind="gpt")
load_vq = functools.partial(_load_module, kind="vq")
