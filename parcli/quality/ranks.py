"""The processes of one run under `torchrun`: which one this is, and how they agree (through
torch.distributed; without torchrun there is one process and every operation is immediate)."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch

from parcli.errors import UserError

# A rank that finishes its share early waits at the barrier for the slowest: give it hours.
PATIENCE = datetime.timedelta(hours=24)


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> Ranks:
        """The process's place in a torchrun job, as torchrun's environment says."""
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        except ValueError:
            raise UserError("WORLD_SIZE, RANK and LOCAL_RANK must be integers") from None
        if not 0 <= rank < world:
            raise UserError(f"RANK {rank} is outside WORLD_SIZE {world}")
        return cls(rank, world, local_rank)

    @property
    def is_first(self) -> bool:
        return self.rank == 0

    def device(self, name: str) -> str:
        """Under torchrun with GPUs, `auto` and `cuda` mean this process's own GPU."""
        if self.world > 1 and name in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank % torch.cuda.device_count()}"
        return name

    def start(self, device: torch.device) -> None:
        if self.world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                torch.cuda.set_device(device)
            torch.distributed.init_process_group(backend, timeout=PATIENCE)

    def stop(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def from_first(self, value: Any) -> Any:
        """What the first process says, in every process (a picklable value)."""
        if self.world == 1:
            return value
        box = [value if self.is_first else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]
