"""`moving-digits`: clips of one MNIST digit (the clip's class) bouncing around a small canvas,
drawn from (seed, clip index). It moves by whole token cells, so a frame's codes are the previous
frame's shifted; every clip starts at one place, as PAR draws far-apart tokens of a frame
independently and they must agree where the digit is, in a random direction."""

from __future__ import annotations

import numpy as np

CANVAS = 32
PATCH = 20
FRAMES = 6
STEP = 4  # pixels a frame along each moving axis: one cell of the 4x-downsampling tokenizer
START = (4, 4)  # (row, col) of the digit's box in the first frame
DIRECTIONS = np.array([(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if dr or dc])
CLIPS_PER_DIGIT = 2
NAME = "moving-digits"


def digit_patches(digits: np.ndarray) -> np.ndarray:
    """(N, H, W[, 1]) uint8 digits -> (N, PATCH, PATCH): each digit's bounding box, centred."""
    digits = np.asarray(digits)
    if digits.ndim == 4:
        digits = digits[..., 0]
    patches = np.zeros((len(digits), PATCH, PATCH), dtype=np.uint8)
    for index, digit in enumerate(digits):
        rows, cols = np.flatnonzero(digit.any(axis=1)), np.flatnonzero(digit.any(axis=0))
        if rows.size == 0:
            continue
        box = digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        box = box[:PATCH, :PATCH]  # MNIST boxes are at most 20 wide; keep a wider one's start
        top, left = (PATCH - box.shape[0]) // 2, (PATCH - box.shape[1]) // 2
        patches[index, top : top + box.shape[0], left : left + box.shape[1]] = box
    return patches


def bounce(position: np.ndarray, span: int) -> np.ndarray:
    """Fold free positions into [0, span] as a ball bouncing between two walls would be."""
    folded = np.mod(position, 2 * span)
    return np.where(folded > span, 2 * span - folded, folded)


def trajectories(count: int, seed: int, frames: int = FRAMES, span: int = CANVAS - PATCH):
    """(count, frames, 2) top-left corners of the digit in each frame; a larger data set starts
    with the smaller one and a longer clip with the shorter one."""
    steps = np.arange(frames)[:, None]
    paths = np.empty((count, frames, 2), dtype=np.int64)
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        velocity = DIRECTIONS[rng.integers(len(DIRECTIONS))] * STEP
        paths[index] = bounce(np.array(START) + steps * velocity, span)
    return paths


def moving_digits(
    digits: np.ndarray,
    labels: np.ndarray,
    clips_per_digit: int = CLIPS_PER_DIGIT,
    seed: int = 0,
    frames: int = FRAMES,
) -> tuple[np.ndarray, np.ndarray]:
    """(clips (N, T, 32, 32, 1) uint8, labels (N,)): `clips_per_digit` paths for every digit."""
    patches = np.tile(digit_patches(digits), (clips_per_digit, 1, 1))
    paths = trajectories(len(patches), seed, frames)
    clips = np.zeros((len(patches), frames, CANVAS, CANVAS, 1), dtype=np.uint8)
    for index, path in enumerate(paths):
        for t, (top, left) in enumerate(path):
            clips[index, t, top : top + PATCH, left : left + PATCH, 0] = patches[index]
    return clips, np.tile(np.asarray(labels, dtype=np.int64), clips_per_digit)


def centres_of_mass(frames: np.ndarray) -> np.ndarray:
    """(..., H, W[, 1]) frames -> (..., 2) brightness-weighted (row, col) centre; NaN if black."""
    frames = np.asarray(frames, dtype=np.float64)
    if frames.shape[-1] == 1:
        frames = frames[..., 0]
    total = frames.sum(axis=(-2, -1))
    rows = np.arange(frames.shape[-2])[:, None]
    cols = np.arange(frames.shape[-1])[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        row = (frames * rows).sum(axis=(-2, -1)) / total
        col = (frames * cols).sum(axis=(-2, -1)) / total
    return np.stack([row, col], axis=-1)


def mean_displacement(clips: np.ndarray) -> float:
    """Mean distance in pixels the centre of mass moves between consecutive frames."""
    centres = centres_of_mass(clips)
    steps = np.linalg.norm(np.diff(centres, axis=-2), axis=-1)
    return float(np.nanmean(steps))


def digit_crops(frames: np.ndarray, side: int = PATCH) -> np.ndarray:
    """(N, H, W[, 1]) frames -> (N, side, side): the window centred on each frame's digit."""
    frames = np.asarray(frames)
    if frames.ndim == 4:
        frames = frames[..., 0]
    height, width = frames.shape[1:]
    centres = np.nan_to_num(centres_of_mass(frames), nan=height / 2)
    crops = np.empty((len(frames), side, side), dtype=frames.dtype)
    for index, (row, col) in enumerate(centres):
        top = int(np.clip(np.rint(row - (side - 1) / 2), 0, height - side))
        left = int(np.clip(np.rint(col - (side - 1) / 2), 0, width - side))
        crops[index] = frames[index, top : top + side, left : left + side]
    return crops
