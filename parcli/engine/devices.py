"""Which device a run asks for, and what a half-precision dtype costs on it."""

from __future__ import annotations

import contextlib
import platform

import torch

from parcli.engine.dtypes import dtype_name, named_dtype
from parcli.errors import SettingError


def resolve_device(name: str) -> torch.device:
    """`auto` (CUDA, else MPS, else the CPU), `cpu`, `cuda`, `cuda:N` or `mps`."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    choices = "use auto, cpu, cuda, cuda:N or mps"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SettingError("device", f"unknown device {name!r}; {choices}") from None
    if device.type == "cpu":
        if device.index not in (None, 0):
            raise SettingError("device", f"there is one CPU device, not {name!r}; use cpu")
        device = torch.device("cpu")  # safetensors does not take cpu:0
    elif device.type == "cuda":
        if not torch.cuda.is_available():
            raise SettingError("device", "CUDA was asked for but no GPU is visible; use cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise SettingError(
                "device", f"{name} does not exist: the GPUs here are cuda:0 to cuda:{count - 1}"
            )
    elif device.type != "mps":
        raise SettingError("device", f"par does not run on {device.type} devices; {choices}")
    elif not torch.backends.mps.is_available():
        raise SettingError("device", "MPS was asked for but is not available here; use cpu")
    return device


def proc_field(path: str, key: str) -> str | None:
    """The value of the first line starting with `key` in a Linux /proc file; None elsewhere."""
    with contextlib.suppress(OSError), open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    return None


def cpu_name() -> str:
    """The CPU's model name, or the platform's word for it."""
    return proc_field("/proc/cpuinfo", "model name") or platform.processor() or platform.machine()


def resolve(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """The device and the transformer's dtype there: `auto` is bf16 on CUDA and fp32 elsewhere."""
    torch_device = resolve_device(device)
    auto = torch.bfloat16 if torch_device.type == "cuda" else torch.float32
    return torch_device, named_dtype(dtype, "auto") or auto


def emulated_dtype_note(device: torch.device, dtype: torch.dtype) -> str | None:
    """A one-line warning when this CPU has no native arithmetic for a half-precision dtype."""
    if device.type != "cpu" or dtype not in (torch.bfloat16, torch.float16):
        return None
    bf16 = dtype == torch.bfloat16
    features = ("avx512_bf16", "amx_tile") if bf16 else ("amx_fp16",)
    if any(getattr(torch.cpu, f"_is_{name}_supported", lambda: False)() for name in features):
        return None
    return (
        f"this CPU lacks {'AVX512-BF16 or AMX' if bf16 else 'AMX-FP16'}, so {dtype_name(dtype)} "
        "arithmetic is emulated and usually slower than fp32 here; fp32 is the fast dtype on it"
    )
