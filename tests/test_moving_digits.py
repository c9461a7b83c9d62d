import numpy as np
import pytest
import torch
from conftest import TINY_VQ, tiny_config

from parcli.errors import SettingError
from parcli.io.media import save_video
from parcli.training.data import DataError, is_clip_data, load_class_folder, training_data
from parcli.training.loops import TrainRun, encode_images, train_gpt
from parcli.training.moving_digits import (
    CANVAS,
    PATCH,
    START,
    STEP,
    bounce,
    centres_of_mass,
    digit_crops,
    digit_patches,
    mean_displacement,
    moving_digits,
    trajectories,
)
from parcli.vq import VQModel


def fake_digits(count: int = 6) -> tuple[np.ndarray, np.ndarray]:
    digits = np.zeros((count, 28, 28, 1), dtype=np.uint8)
    for index in range(count):
        digits[index, 5 + index : 20, 8 : 18 + index, 0] = 50 + 30 * index
    return digits, np.arange(count) % 3


def test_patches_keep_the_digits_box_centred():
    digits, _ = fake_digits()
    patches = digit_patches(digits)
    assert patches.shape == (6, PATCH, PATCH)
    for digit, patch in zip(digits[..., 0], patches, strict=True):
        assert patch.sum(dtype=np.int64) == digit.sum(dtype=np.int64)
        rows = np.flatnonzero(patch.any(axis=1))
        assert abs(rows[0] - (PATCH - 1 - rows[-1])) <= 1


def test_bounce_folds_positions_between_the_walls():
    span = 12
    free = np.array([0.0, 5.0, 12.0, 15.0, 24.0, 27.0, -3.0])
    np.testing.assert_allclose(bounce(free, span), [0, 5, 12, 9, 0, 3, 3])


def test_clips_are_deterministic_stay_on_the_canvas_and_move():
    digits, labels = fake_digits()
    clips, clip_labels = moving_digits(digits, labels, clips_per_digit=2, seed=3, frames=7)
    again, _ = moving_digits(digits, labels, clips_per_digit=2, seed=3, frames=7)
    other, _ = moving_digits(digits, labels, clips_per_digit=2, seed=4, frames=7)
    assert clips.shape == (12, 7, CANVAS, CANVAS, 1) and clips.dtype == np.uint8
    np.testing.assert_array_equal(clips, again)
    assert not np.array_equal(clips, other)
    np.testing.assert_array_equal(clip_labels, np.tile(labels, 2))
    # The whole digit is drawn in every frame: nothing is cut off at a wall.
    totals = clips.sum(axis=(2, 3, 4), dtype=np.int64)
    np.testing.assert_array_equal(totals, np.repeat(totals[:, :1], 7, axis=1))
    # Every frame moves the digit by one token cell (4 px) along one or both axes.
    steps = np.linalg.norm(np.diff(centres_of_mass(clips), axis=1), axis=-1)
    straight, diagonal = np.isclose(steps, STEP), np.isclose(steps, STEP * np.sqrt(2))
    assert (straight | diagonal).all()
    assert STEP <= mean_displacement(clips) <= STEP * np.sqrt(2)


def test_paths_start_together_move_by_whole_cells_and_bounce_inside_the_canvas():
    paths = trajectories(200, seed=0, frames=9)
    assert (paths[:, 0] == START).all()
    assert (paths % STEP == 0).all()
    assert paths.min() == 0 and paths.max() == CANVAS - PATCH
    moves = np.abs(np.diff(paths, axis=1))
    assert np.isin(moves, (0, STEP)).all() and (moves.max(axis=-1) == STEP).all()
    directions = {tuple(np.sign(path[1] - path[0])) for path in paths}
    assert len(directions) == 8


def test_a_longer_clip_starts_with_the_shorter_one():
    short, long = trajectories(5, seed=0, frames=4), trajectories(5, seed=0, frames=9)
    np.testing.assert_array_equal(long[:, :4], short)


def test_centre_of_mass_and_displacement_of_a_moving_dot():
    frames = np.zeros((1, 3, 10, 10, 1), dtype=np.uint8)
    for t, col in enumerate((2, 5, 9)):
        frames[0, t, 4, col] = 255
    np.testing.assert_allclose(centres_of_mass(frames)[0], [[4, 2], [4, 5], [4, 9]])
    assert mean_displacement(frames) == pytest.approx(3.5)
    assert np.isnan(centres_of_mass(np.zeros((4, 4, 1)))).all()


def test_digit_crops_find_the_digit():
    frame = np.zeros((1, CANVAS, CANVAS, 1), dtype=np.uint8)
    frame[0, 20:28, 2:10] = 200
    crop = digit_crops(frame)[0]
    assert crop.shape == (PATCH, PATCH)
    assert crop.sum(dtype=np.int64) == frame.sum(dtype=np.int64)


def write_clip_folder(root, frames=5):
    rng = np.random.default_rng(0)
    for name, suffix in (("cat", ".gif"), ("dog", ".mp4")):
        (root / name).mkdir(parents=True)
        for index in range(2):
            clip = rng.integers(0, 255, (frames, 16, 16, 3), dtype=np.uint8)
            save_video(root / name / f"{index}{suffix}", clip)


def test_clip_folders_of_gif_and_mp4(tmp_path):
    write_clip_folder(tmp_path)
    assert is_clip_data(str(tmp_path)) and is_clip_data("moving-digits")
    assert not is_clip_data("digits")
    clips, labels, classes = load_class_folder(tmp_path, 16, frames=4)
    assert clips.shape == (4, 4, 16, 16, 3) and clips.dtype == np.uint8
    assert classes == ["cat", "dog"] and labels.tolist() == [0, 0, 1, 1]
    with pytest.raises(DataError, match="has 5 frame"):
        load_class_folder(tmp_path, 16, frames=6)
    with pytest.raises(SettingError, match="is needed"):
        training_data(str(tmp_path), None, 4)
    with pytest.raises(SettingError, match="at least 1") as error:
        training_data(str(tmp_path), 16, 0)
    assert error.value.setting == "frames"


def test_a_video_transformer_trains_on_encoded_clips(tmp_path):
    torch.manual_seed(0)
    vq = VQModel(TINY_VQ).eval()
    channels = vq.config.in_channels
    clips = np.random.default_rng(0).integers(0, 255, (4, 2, 16, 16, channels), dtype=np.uint8)
    codes = encode_images(vq, clips)
    assert codes.shape == (4, 2, 16 // vq.config.downsample, 16 // vq.config.downsample)
    cfg = tiny_config(grid=codes.shape[1:], regions=4, vocab_size=vq.config.codebook_size)
    run = TrainRun(2, 2, 1e-3, 0, tmp_path / "v.safetensors", precision="bf16", warmup=1)
    result = train_gpt(codes, np.array([0, 1, 0, 1]), cfg, run)
    assert result.steps == 2 and np.isfinite(result.final_loss)
    with pytest.raises(SettingError, match="fp32 or bf16"):
        TrainRun(2, 2, 1e-3, 0, tmp_path / "v.safetensors", precision="fp16")
