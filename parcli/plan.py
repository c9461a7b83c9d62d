"""The PAR schedule as data: token order, KV-cache slots, passes, rotary cells. Slot s predicts
sequence index s: a pass writing slots [start, end) fills those; its queries see all before end."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from parcli.config import SUPPORTED_REGIONS
from parcli.errors import UserError

CLASS, TOKEN, TRANSITION = 0, 1, 2


class PlanError(UserError, ValueError):
    """A grid / region combination that cannot be scheduled."""


def par_order(grid: tuple[int, ...], regions: int) -> np.ndarray:
    """Raster index (into the flattened grid) of the token at each PAR sequence index; a video's
    frames are each split into regions and follow one another."""
    *frames, rows, cols = grid
    side = math.isqrt(regions)
    if regions not in SUPPORTED_REGIONS:
        raise PlanError(f"regions must be one of {', '.join(map(str, SUPPORTED_REGIONS))}")
    if rows % side or cols % side:
        raise PlanError(
            f"a {rows}x{cols} token grid cannot be split into {regions} regions: "
            f"both sides must be divisible by {side}"
        )
    region_rows, region_cols = rows // side, cols // side
    q = np.arange(rows * cols)
    region, j = q % regions, q // regions
    row = (region // side) * region_rows + j // region_cols
    col = (region % side) * region_cols + j % region_cols
    frame_order = row * cols + col
    return np.concatenate([f * rows * cols + frame_order for f in range(math.prod(frames))])


@dataclass(frozen=True)
class Pass:
    """One forward pass: writes cache slots [start, end) and fills sequence indices [start, end)."""

    index: int
    start: int
    end: int

    @property
    def width(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Plan:
    grid: tuple[int, ...]
    regions: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", tuple(int(g) for g in self.grid))
        if len(self.grid) not in (2, 3) or min(self.grid) < 1:
            raise PlanError(f"grid must be (rows, cols) or (frames, rows, cols), not {self.grid}")
        if self.num_tokens < 2 * self.regions:
            raise PlanError(f"{self.num_tokens} tokens are too few for {self.regions} regions")
        par_order(self.grid, self.regions)  # refuses undivisible grids now, not on first use

    @property
    def num_tokens(self) -> int:
        return math.prod(self.grid)

    @property
    def num_slots(self) -> int:
        """KV-cache slots one generation needs (class + fed tokens + transition tokens)."""
        return self.num_tokens

    @cached_property
    def order(self) -> np.ndarray:
        return par_order(self.grid, self.regions)

    @cached_property
    def inverse(self) -> np.ndarray:
        """PAR sequence index of each raster cell: `seq[..., inverse]` is raster order."""
        return np.argsort(self.order)

    @cached_property
    def passes(self) -> tuple[Pass, ...]:
        n, length = self.regions, self.num_tokens
        bounds = [(p, p + 1) for p in range(n)]
        bounds += [(start, start + n) for start in range(n, length, n)]
        return tuple(Pass(i, a, b) for i, (a, b) in enumerate(bounds))

    @property
    def num_passes(self) -> int:
        return len(self.passes)

    @property
    def widest_pass(self) -> int:
        """The most tokens one pass feeds a sequence."""
        return max(step.width for step in self.passes)

    @cached_property
    def slot_runs(self) -> tuple[tuple[int, int, int, int], ...]:
        """(kind, first slot, end slot, first source) for each run of slots of one kind; sources
        increase by one per slot within a run, so a pass reads them as a slice."""
        n, slots = self.regions, self.num_slots
        runs = [(CLASS, 0, 1, 0), (TOKEN, 1, n + 1, 0)]
        if n > 1:
            runs.append((TRANSITION, n + 1, 2 * n, 0))
        if 2 * n < slots:
            runs.append((TOKEN, 2 * n, slots, n))
        return tuple(runs)

    @cached_property
    def slot_cell(self) -> np.ndarray:
        """Raster cell whose rotary angles each slot uses; -1 for the all-zero rows."""
        cell = np.full(self.num_slots, -1, dtype=np.int64)
        for kind, start, end, first in self.slot_runs:
            if kind == TOKEN:
                cell[start:end] = self.order[first : first + end - start]
        return cell

    def attention_mask(self) -> np.ndarray:
        """(slots, slots), True where a query slot may see a key slot: one before its pass's end."""
        end = np.repeat([p.end for p in self.passes], [p.width for p in self.passes])
        return np.arange(self.num_slots)[None, :] < end[:, None]

    def to_sequence(self, raster: np.ndarray) -> np.ndarray:
        """(..., *grid) raster -> (..., num_tokens) in PAR order."""
        flat = raster.reshape(*raster.shape[: raster.ndim - len(self.grid)], self.num_tokens)
        return flat[..., self.order]
