"""`--animate`: PAR's generation order made visible, one animation frame per forward pass.

A token never changes once drawn, so frames are masks of the final pixels built from the plan
alone: the decode loop is untouched and the tokens cannot differ from a run without `--animate`.
"""

from __future__ import annotations

import numpy as np

from parcli.io.media import make_grid
from parcli.plan import Plan

MAX_FRAMES = 120
GRAY = 128


def shown_passes(num_passes: int, max_frames: int = MAX_FRAMES) -> np.ndarray:
    """Indices of the passes that get a frame: all, or `max_frames` evenly spaced ones."""
    if num_passes <= max_frames:
        return np.arange(num_passes)
    return np.rint(np.linspace(0, num_passes - 1, max_frames)).astype(np.int64)


def revealed_cells(plan: Plan, passes: np.ndarray) -> np.ndarray:
    """(len(passes), *grid) bool: the raster cells whose token exists after each pass."""
    ends = np.array([plan.passes[index].end for index in passes])
    sequence_index = plan.inverse.reshape(plan.grid)
    return sequence_index[None] < ends.reshape(-1, *[1] * len(plan.grid))


def reveal(pixels: np.ndarray, plan: Plan, passes: np.ndarray, gray: int = GRAY) -> np.ndarray:
    """Frames (len(passes), *pixels.shape) of the final pixels, gray where no token has been
    drawn yet."""
    rows, cols = plan.grid[-2:]
    height, width = pixels.shape[-3:-1]
    if height % rows or width % cols:
        raise ValueError(f"{height}x{width} pixels do not tile a {rows}x{cols} token grid")
    cells = revealed_cells(plan, passes)  # (K, [T,] rows, cols)
    mask = cells.repeat(height // rows, axis=-2).repeat(width // cols, axis=-1)
    mask = mask[:, None, ..., None]  # (K, 1, [T,] H, W, 1) against (N, [T,] H, W, C)
    return np.where(mask, pixels[None], np.uint8(gray))


def layout(samples: np.ndarray, video: bool, ncols: int | None = None, pad: int = 2) -> np.ndarray:
    """One picture of N images, tiled as the still output tiles them, or of N clips, one film
    strip per row."""
    if video:
        strips = np.stack([make_grid(clip, ncols=len(clip), pad=pad) for clip in samples])
        return strips[0] if len(strips) == 1 else make_grid(strips, ncols=1, pad=pad)
    return samples[0] if len(samples) == 1 else make_grid(samples, ncols=ncols, pad=pad)


def animation_frames(
    pixels: np.ndarray,
    plan: Plan,
    ncols: int | None = None,
    max_frames: int = MAX_FRAMES,
) -> np.ndarray:
    """At most `max_frames` frames of the generation of `pixels`; the last is the final picture."""
    video = len(plan.grid) == 3
    passes = shown_passes(plan.num_passes, max_frames)
    # One pass at a time: all frames of full-size images at once would take hundreds of MB.
    frames = []
    for index in range(len(passes)):
        frames.append(layout(reveal(pixels, plan, passes[index : index + 1])[0], video, ncols))
    return np.stack(frames)
