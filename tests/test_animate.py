import numpy as np
import pytest

from parcli.io.media import make_grid
from parcli.io.outputs import GRAY, animation_frames, reveal, revealed_cells
from parcli.plan import Plan


@pytest.mark.parametrize(
    ("grid", "count"), [((31, 1), 31), ((16, 16), 120), ((8, 15), 120), ((11, 11), 120)]
)
def test_short_plans_show_every_pass_long_ones_120_with_first_and_last(grid, count):
    plan = Plan(grid, 1)  # one pass per token
    frames = animation_frames(np.zeros((1, *grid, 1), np.uint8), plan)
    gray = (frames == GRAY).reshape(len(frames), -1).sum(axis=1)
    assert len(frames) == count and gray[0] == grid[0] * grid[1] - 1 and gray[-1] == 0
    assert (np.diff(gray) < 0).all()  # every frame a later pass


@pytest.mark.parametrize("grid", [(8, 8), (3, 8, 8)])
@pytest.mark.parametrize("regions", [1, 4, 16])
def test_cells_appear_in_plan_order(grid, regions):
    plan = Plan(grid, regions)
    passes = np.arange(plan.num_passes)
    cells = revealed_cells(plan, passes)
    assert cells.shape == (plan.num_passes, *grid)
    counts = cells.reshape(plan.num_passes, -1).sum(axis=1)
    np.testing.assert_array_equal(counts, [p.end for p in plan.passes])
    assert (cells[1:] >= cells[:-1]).all()  # a drawn cell stays drawn
    flat = cells.reshape(plan.num_passes, -1)
    for k, step in enumerate(plan.passes):  # exactly the cells the pass writes are new
        new = np.flatnonzero(flat[k] & ~flat[k - 1] if k else flat[k])
        np.testing.assert_array_equal(np.sort(new), np.sort(plan.order[step.start : step.end]))


def test_parallel_passes_fill_one_cell_in_every_region():
    plan = Plan((8, 8), 16)
    cells = revealed_cells(plan, np.array([16]))[0]  # the first parallel pass
    regions = cells.reshape(4, 2, 4, 2).sum(axis=(1, 3))
    np.testing.assert_array_equal(regions, np.full((4, 4), 2))


def test_frames_of_a_clip_fill_one_after_another():
    plan = Plan((2, 4, 4), 4)
    last_of_first_frame = next(p.index for p in plan.passes if p.end == 16)
    after_first_frame = revealed_cells(plan, np.array([last_of_first_frame]))[0]
    assert after_first_frame[0].all() and not after_first_frame[1].any()


def test_reveal_paints_gray_until_a_token_is_drawn():
    plan = Plan((4, 4), 4)
    pixels = np.random.default_rng(0).integers(0, 255, (2, 8, 8, 3), dtype=np.uint8)
    frames = reveal(pixels, plan, np.array([0, plan.num_passes - 1]))
    assert frames.shape == (2, 2, 8, 8, 3)
    first = plan.order[0]
    row, col = divmod(first, 4)
    np.testing.assert_array_equal(
        frames[0][:, 2 * row : 2 * row + 2, 2 * col : 2 * col + 2],
        pixels[:, 2 * row : 2 * row + 2, 2 * col : 2 * col + 2],
    )
    assert (frames[0] == GRAY).sum() == 2 * 15 * 4 * 3
    np.testing.assert_array_equal(frames[1], pixels)
    with pytest.raises(ValueError, match="tile"):
        reveal(pixels[:, :7], plan, np.array([0]))


@pytest.mark.parametrize("count", [1, 3])
def test_the_last_frame_is_the_final_picture(count):
    plan = Plan((8, 8), 4)
    pixels = np.random.default_rng(1).integers(0, GRAY, (count, 24, 24, 1), dtype=np.uint8)
    frames = animation_frames(pixels, plan)
    assert len(frames) == plan.num_passes
    np.testing.assert_array_equal(frames[-1], make_grid(pixels))
    assert (frames[0] == GRAY).sum() == count * (24 * 24 - 3 * 3)  # one 3x3 cell each


def test_clips_become_film_strips_one_per_row():
    plan = Plan((3, 4, 4), 16)
    clips = np.random.default_rng(2).integers(0, 255, (2, 3, 8, 8, 3), dtype=np.uint8)
    frames = animation_frames(clips, plan, max_frames=10)
    assert frames.shape == (10, 8 * 2 + 2, 8 * 3 + 2 * 2, 3)
    np.testing.assert_array_equal(frames[-1][:8, 10:18], clips[0, 1])
    np.testing.assert_array_equal(frames[-1][10:, 20:], clips[1, 2])
