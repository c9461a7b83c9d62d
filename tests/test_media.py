from pathlib import Path

import imageio.v2 as iio2
import imageio.v3 as iio
import numpy as np
import pytest

from parcli.io.files import OutputError
from parcli.io.media import (
    image_names,
    make_grid,
    save_image,
    save_samples,
    save_tokens,
    save_video,
)


def _random_images(n, h=8, w=12, c=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, h, w, c), dtype=np.uint8)


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ------------------------------------------------------------------ images


@pytest.mark.parametrize("channels", [3, 4])
def test_png_round_trip_exact(tmp_path, channels):
    image = _random_images(1, 9, 13, channels)[0]
    path = save_image(tmp_path / "x.png", image)
    np.testing.assert_array_equal(iio.imread(path), image)
    assert _listing(tmp_path) == ["x.png"]


def test_png_grayscale_is_squeezed(tmp_path):
    image = _random_images(1, 7, 5, 1)[0]
    path = save_image(tmp_path / "g.png", image)
    back = iio.imread(path)
    assert back.shape == (7, 5)
    np.testing.assert_array_equal(back, image[:, :, 0])


def test_png_rejects_non_uint8(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        save_image(tmp_path / "x.png", np.zeros((4, 4, 3), np.float32))


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
    grid = make_grid(images, pad=1)
    assert grid.shape == (7, 7, 3)
    assert (grid[3] == 0).all()
    assert make_grid(np.zeros((2, 4, 4), np.uint8)).shape == (4, 10)


def test_save_images_single_and_grid(tmp_path):
    images = _random_images(3)
    (one,) = save_samples(tmp_path / "one.png", images[:1], ["a"])
    np.testing.assert_array_equal(iio.imread(one), images[0])
    (grid,) = save_samples(tmp_path / "grid.png", images, ["a", "b", "c"])
    np.testing.assert_array_equal(iio.imread(grid), make_grid(images))
    assert _listing(tmp_path) == ["grid.png", "one.png"]


def test_save_images_directory_mode_names_each_file(tmp_path):
    count = 12
    images = _random_images(count, 4, 4)
    labels = [f"{(7 * i) % 5}-s{i:04d}" for i in range(count)]
    out = tmp_path / "samples"
    paths = save_samples(str(out) + "/", images, labels)
    assert [p.parent for p in paths] == [out] * count
    assert [p.name for p in paths] == [f"{label}.png" for label in labels]
    assert _listing(out) == sorted(p.name for p in paths)
    for path, image in zip(paths, images, strict=True):
        np.testing.assert_array_equal(iio.imread(path), image)


def test_save_images_existing_directory_and_grayscale(tmp_path):
    images = _random_images(2, 5, 6, 1)
    paths = save_samples(tmp_path, images, ["x/y", "z"])
    assert [p.name for p in paths] == ["x_y.png", "z.png"]
    assert iio.imread(paths[1]).shape == (5, 6)


def test_folder_names_must_differ_once_made_safe():
    with pytest.raises(ValueError, match="differ"):
        image_names(["a/b", "a_b"])


def test_save_images_missing_parent(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        save_samples(str(tmp_path / "a" / "b") + "/", _random_images(1), ["x"])
    with pytest.raises(OutputError, match="does not exist"):
        save_samples(tmp_path / "a" / "b.png", _random_images(2), ["x", "y"])


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


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg", ".webp"])
def test_lossy_stills_read_back_close_to_the_pixels(tmp_path, suffix):
    import imageio.v3 as iio

    from parcli.io.media import save_image

    ramp = np.tile(np.linspace(0, 255, 48).astype(np.uint8), (48, 1))
    image = np.stack([ramp, ramp.T, np.full_like(ramp, 128)], axis=-1)
    path = save_image(tmp_path / f"x{suffix}", image)
    back = iio.imread(path)[..., :3].astype(int)
    assert back.shape == (48, 48, 3) and np.abs(back - image).mean() < 3


def test_unknown_still_suffix_lists_what_can_be_written(tmp_path):
    from parcli.io.media import save_image

    with pytest.raises(OutputError, match=r"\.png, \.jpg, \.jpeg, \.webp"):
        save_image(tmp_path / "x.bmp", np.zeros((4, 4), np.uint8))
