"""The one safetensors writer and reader; the writer streams a tensor at a time, so a large
conversion never holds a second copy of every byte, as ``safetensors.torch.save_file`` would."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from parcli.errors import UserError
from parcli.io.files import PathLike, atomic_path

_FILE_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


class WeightsError(UserError):
    """A checkpoint could not be read, understood or written."""


def one_line(text: object, limit: int = 160) -> str:
    line = " ".join(str(text).split()) or type(text).__name__  # an error without a message
    return line if len(line) <= limit else line[: limit - 3] + "..."


def stored_dtype(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    """The dtype ``tensor`` is stored in: ``dtype`` for floating tensors, else its own."""
    return dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype


def write_safetensors(
    path: PathLike,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Write ``tensors`` (floating ones cast to ``dtype`` when given) atomically."""
    out = {key: stored_dtype(tensor, dtype) for key, tensor in tensors.items()}
    # Widest dtypes first keeps every tensor aligned to its element size.
    order = sorted(tensors, key=lambda k: (-out[k].itemsize, k))
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    total = 0
    for key in order:
        if out[key] not in _FILE_DTYPES:
            raise WeightsError(f"tensor {key!r} has dtype {out[key]}, which cannot be saved")
        size = tensors[key].numel() * out[key].itemsize
        header[key] = {
            "dtype": _FILE_DTYPES[out[key]],
            "shape": list(tensors[key].shape),
            "data_offsets": [total, total + size],
        }
        total += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(struct.pack("<Q", len(blob)) + blob)
        for key in order:
            tensor = tensors[key].detach().cpu().to(out[key]).contiguous()
            if tensor.numel():
                handle.write(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))


def read_safetensors(
    path: PathLike, what: str = "safetensors file"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors on the CPU, header metadata) of a safetensors file."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            return {key: handle.get_tensor(key) for key in handle.keys()}, metadata  # noqa: SIM118
    except Exception as exc:
        raise WeightsError(
            f"{Path(path)} is a truncated or corrupt {what} ({one_line(exc, 80)})"
        ) from None
