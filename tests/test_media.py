import os
from pathlib import Path

import imageio.v2 as iio2
import imageio.v3 as iio
import numpy as np
import pytest

from parcli import media
from parcli.media import (
    OutputError,
    atomic_path,
    atomic_write,
    check_writable,
    make_grid,
    save_images,
    save_png,
    save_tokens,
    save_video,
)


def _random_images(n, h=8, w=12, c=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ------------------------------------------------------------------ atomic writes


def test_atomic_success_replaces_target(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent
        assert tmp.suffix == ".txt"
        assert tmp.name.startswith(".out.tmp-")
        tmp.write_text("new")
        assert target.read_text() == "old"  # untouched until the block succeeds
    assert target.read_text() == "new"
    assert _listing(tmp_path) == ["out.txt"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_atomic_failure_leaves_nothing(tmp_path, error):
    target = tmp_path / "out.png"
    with pytest.raises(error), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise error("boom")
    assert _listing(tmp_path) == []


def test_atomic_failure_keeps_existing_target(tmp_path):
    target = tmp_path / "out.npy"
    target.write_bytes(b"old")

    def writer(tmp):
        tmp.write_bytes(b"half")
        raise ValueError("writer failed")

    with pytest.raises(ValueError):
        atomic_write(target, writer)
    assert target.read_bytes() == b"old"
    assert _listing(tmp_path) == ["out.npy"]


def test_atomic_write_returns_path(tmp_path):
    target = tmp_path / "a.bin"
    assert atomic_write(target, lambda tmp: tmp.write_bytes(b"x")) == target
    assert target.read_bytes() == b"x"


# ------------------------------------------------------------------ up-front checks


def test_missing_directory_is_one_line_output_error(tmp_path):
    target = tmp_path / "missing" / "y.png"
    with pytest.raises(OutputError) as info:
        check_writable(target)
    message = str(info.value)
    assert "\n" not in message
    assert "does not exist" in message and "--output" in message
    assert str(target.parent) in message


def test_parent_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a directory"):
        check_writable(tmp_path / "file" / "y.png")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="not writable") as info:
            check_writable(locked / "y.png")
        assert "\n" not in str(info.value)
    finally:
        locked.chmod(0o700)


def test_unwritable_directory_simulated(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(media.os, "open", refuse)
    with pytest.raises(OutputError, match="not writable") as info:
        check_writable(tmp_path / "y.png")
    assert "\n" not in str(info.value)
    with pytest.raises(OutputError, match="not writable"):
        save_png(tmp_path / "y.png", np.zeros((2, 2), np.uint8))
    assert _listing(tmp_path) == []


def test_unsupported_suffix(tmp_path):
    with pytest.raises(OutputError, match="unsupported file type .bmp"):
        check_writable(tmp_path / "y.bmp")
    with pytest.raises(OutputError):
        check_writable(tmp_path / "y.mp4", media.IMAGE_SUFFIXES)
    assert check_writable(tmp_path / "y.PNG") == tmp_path / "y.PNG"


def test_target_is_a_directory(tmp_path):
    (tmp_path / "d.png").mkdir()
    with pytest.raises(OutputError, match="is a directory"):
        check_writable(tmp_path / "d.png")


def test_directory_targets(tmp_path):
    assert check_writable(str(tmp_path) + "/", allow_directory=True) == tmp_path
    assert check_writable(str(tmp_path / "new") + "/", allow_directory=True) == tmp_path / "new"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    with pytest.raises(OutputError, match="does not exist"):
        check_writable(str(tmp_path / "a" / "b") + "/", allow_directory=True)


# ------------------------------------------------------------------ images


@pytest.mark.parametrize("channels", [3, 4])
def test_png_round_trip_exact(tmp_path, channels):
    image = _random_images(1, 9, 13, channels)[0]
    path = save_png(tmp_path / "x.png", image)
    np.testing.assert_array_equal(iio.imread(path), image)
    assert _listing(tmp_path) == ["x.png"]


def test_png_grayscale_is_squeezed(tmp_path):
    image = _random_images(1, 7, 5, 1)[0]
    path = save_png(tmp_path / "g.png", image)
    back = iio.imread(path)
    assert back.shape == (7, 5)
    np.testing.assert_array_equal(back, image[:, :, 0])


def test_png_rejects_non_uint8(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        save_png(tmp_path / "x.png", np.zeros((4, 4, 3), np.float32))


def test_grid_shape_and_placement():
    images = _random_images(5, 8, 12)
    grid = make_grid(images, pad=2)  # 5 images -> 3 columns, 2 rows
    assert grid.shape == (2 * 8 + 2, 3 * 12 + 2 * 2, 3)
    np.testing.assert_array_equal(grid[:8, :12], images[0])
    np.testing.assert_array_equal(grid[10:18, 14:26], images[4])
    assert (grid[10:, 28:] == 0).all()  # the unused cell is padding
    assert (grid[8:10] == 0).all()


def test_grid_options():
    images = _random_images(4, 3, 3)
    assert make_grid(images, ncols=4, pad=0).shape == (3, 12, 3)
    assert make_grid(images[:1]).shape == (3, 3, 3)
    grid = make_grid(images, pad=1, pad_value=255)
    assert grid.shape == (7, 7, 3)
    assert (grid[3] == 255).all()
    assert make_grid(np.zeros((2, 4, 4), np.uint8)).shape == (4, 10)


def test_save_images_single_and_grid(tmp_path):
    images = _random_images(3)
    (one,) = save_images(tmp_path / "one.png", images[:1], ["a"])
    np.testing.assert_array_equal(iio.imread(one), images[0])
    (grid,) = save_images(tmp_path / "grid.png", images, ["a", "b", "c"])
    np.testing.assert_array_equal(iio.imread(grid), make_grid(images))
    assert _listing(tmp_path) == ["grid.png", "one.png"]


def test_save_images_directory_mode_sorts_in_order(tmp_path):
    count = 12
    images = _random_images(count, 4, 4)
    labels = [f"class{(7 * i) % 5}_s{i}" for i in range(count)]
    out = tmp_path / "samples"
    paths = save_images(str(out) + "/", images, labels)
    assert [p.parent for p in paths] == [out] * count
    assert paths[0].name == "0000_class0_s0.png"
    assert _listing(out) == [p.name for p in paths]  # sorted order == generation order
    for path, image in zip(paths, images, strict=True):
        np.testing.assert_array_equal(iio.imread(path), image)


def test_save_images_existing_directory_and_grayscale(tmp_path):
    images = _random_images(2, 5, 6, 1)
    paths = save_images(tmp_path, images, ["x/y", "z"])
    assert [p.name for p in paths] == ["0000_x_y.png", "0001_z.png"]
    assert iio.imread(paths[1]).shape == (5, 6)


def test_save_images_missing_parent(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        save_images(str(tmp_path / "a" / "b") + "/", _random_images(1), ["x"])
    with pytest.raises(OutputError, match="does not exist"):
        save_images(tmp_path / "a" / "b.png", _random_images(2), ["x", "y"])


# ------------------------------------------------------------------ video


def _read_frames(path):
    reader = iio2.get_reader(path, format="FFMPEG")
    try:
        return [frame for frame in reader]
    finally:
        reader.close()


def test_mp4_frame_count_and_padding(tmp_path):
    frames = np.zeros((5, 20, 30, 3), np.uint8)
    frames[:, :, :, 0] = np.arange(5, dtype=np.uint8)[:, None, None] * 50
    path = save_video(tmp_path / "v.mp4", frames, fps=10)
    back = _read_frames(path)
    assert len(back) == 5
    assert back[0].shape == (32, 32, 3)  # padded to multiples of 16, not resized
    assert abs(int(back[4][5, 5, 0]) - 200) < 12
    assert back[4][25, 5].max() < 12  # the padding is black
    assert _listing(tmp_path) == ["v.mp4"]


def test_mp4_several_videos_grayscale(tmp_path):
    frames = np.full((2, 3, 16, 16, 1), 128, np.uint8)
    path = save_video(tmp_path / "grid.mp4", frames, fps=4, pad=0)
    back = _read_frames(path)
    assert len(back) == 3
    assert back[0].shape == (16, 32, 3)


def test_gif(tmp_path):
    frames = _random_images(3, 8, 8)
    path = save_video(tmp_path / "v.gif", frames, fps=5)
    assert iio.imread(path).shape[0] == 3


def test_video_rejects_unknown_suffix(tmp_path):
    with pytest.raises(OutputError, match="unsupported video type"):
        save_video(tmp_path / "v.avi", _random_images(2), fps=5)


# ------------------------------------------------------------------ tokens


def test_tokens_round_trip(tmp_path):
    tokens = np.random.default_rng(1).integers(0, 16384, size=(3, 576), dtype=np.int64)
    path = save_tokens(tmp_path / "t.npy", tokens)
    back = np.load(path)
    assert back.dtype == tokens.dtype
    np.testing.assert_array_equal(back, tokens)
    assert _listing(tmp_path) == ["t.npy"]


def test_tokens_reject_floats_and_bad_suffix(tmp_path):
    with pytest.raises(ValueError):
        save_tokens(tmp_path / "t.npy", np.zeros(3, np.float32))
    with pytest.raises(OutputError):
        save_tokens(tmp_path / "t.txt", np.zeros(3, np.int32))
