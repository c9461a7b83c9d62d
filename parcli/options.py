"""The settings of a run as one frozen object, written by `to_dict` into every record of the run;
a new setting needs a field here and its option in `parcli.commands.common._RUN_HELP`."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class RunOptions:
    device: str = "cpu"  # resolved: cpu, cuda, cuda:N or mps
    dtype: str = "fp32"  # of the transformer: fp32, bf16 or fp16
    compile: bool | None = None  # torch.compile the decoding step; None: the device's default
    quantize: str | None = None  # "int8": weight-only int8 projections (tokens differ)
    reference_kernels: bool = False  # the reference's attention kernels (its bf16 tokens)
    threads: int | None = None  # CPU threads; None: chosen from the model's size
    strategy: str = "par"  # a name in `parcli.strategies`
    window: int | None = None  # plan passes per strategy iteration; None: the strategy's default
    draft: str = "left"  # how sjd drafts a pass with no prediction yet: left or random
    # Sampling: None takes the model's own setting (`Pipeline.sampling`).
    cfg_scale: float | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None

    @classmethod
    def resolve(
        cls, device: str = "auto", dtype: str = "auto", compile: bool | None = None, **settings: Any
    ) -> RunOptions:
        """The options a command asks for, every default (`auto`, compile, window) decided."""
        from parcli.engine.devices import resolve
        from parcli.engine.dtypes import dtype_name
        from parcli.engine.policy import default_compile
        from parcli.strategies import make_strategy

        torch_device, torch_dtype = resolve(device, dtype)
        if compile is None:
            compile = default_compile(torch_device) and not settings.get("reference_kernels")
        options = cls(str(torch_device), dtype_name(torch_dtype), compile, **settings)
        options = replace(options, window=make_strategy(options).window)
        options.check()
        return options

    def check(self) -> None:
        """Refuse settings that contradict one another or are out of range."""
        from parcli.engine.quantize import QUANTIZATIONS
        from parcli.errors import SettingError

        if self.quantize is not None and self.quantize not in QUANTIZATIONS:
            choices = ", ".join(QUANTIZATIONS)
            raise SettingError("quantize", f"must be {choices}, not {self.quantize!r}")
        if self.reference_kernels and self.compile:
            raise SettingError(
                "compile",
                "a compiled step fuses attention its own way, not the reference's; "
                "leave out --compile with --reference-kernels",
            )
        if self.threads is not None:
            from parcli.engine.threads import check_threads

            check_threads(self.threads)

    @property
    def torch_device(self) -> torch.device:
        import torch

        return torch.device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        from parcli.engine.dtypes import DTYPES

        return DTYPES[self.dtype]

    @property
    def device_kind(self) -> str:
        return self.device.split(":")[0]

    def to_dict(self) -> dict[str, Any]:
        """Every setting the tokens depend on, by name (threads are reported with the machine)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "threads"}


SAMPLING_FIELDS = ("cfg_scale", "temperature", "top_k", "top_p")
