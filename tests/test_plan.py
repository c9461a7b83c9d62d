import numpy as np
import pytest

from parcli.plan import CLASS, TOKEN, TRANSITION, Plan, PlanError, par_order


@pytest.mark.parametrize(
    "grid, counts",
    [((24, 24), (576, 147, 51)), ((16, 16), (256, 67, 31)), ((5, 16, 16), (1280, 323, 95))],
)
def test_pass_counts(grid, counts):
    assert tuple(Plan(grid, n).num_passes for n in (1, 4, 16)) == counts
    assert tuple(Plan(grid, n).widest_pass for n in (1, 4, 16)) == (1, 4, 16)


def test_first_groups_match_the_spec_example():
    order = par_order((24, 24), 4)
    cells = [divmod(int(c), 24) for c in order[:8]]
    assert cells[:4] == [(0, 0), (0, 12), (12, 0), (12, 12)]
    assert cells[4:] == [(0, 1), (0, 13), (12, 1), (12, 13)]


def test_order_formula_for_every_index():
    rows = cols = 16
    for n, s in ((1, 1), (4, 2), (16, 4)):
        order = par_order((rows, cols), n)
        side = rows // s
        for q, cell in enumerate(order):
            r, j = q % n, q // n
            assert divmod(int(cell), cols) == (
                (r // s) * side + j // side,
                (r % s) * side + j % side,
            )


def test_sequential_order_is_raster():
    assert np.array_equal(par_order((16, 16), 1), np.arange(256))


@pytest.mark.parametrize("grid", [(24, 24), (16, 16), (12, 8), (3, 8, 8)])
@pytest.mark.parametrize("n", [1, 4, 16])
def test_order_is_a_permutation_and_inverse_round_trips(grid, n):
    if grid == (12, 8) and n == 16:
        pytest.skip("not divisible")
    plan = Plan(grid, n)
    assert np.array_equal(np.sort(plan.order), np.arange(plan.num_tokens))
    assert np.array_equal(plan.inverse[plan.order], np.arange(plan.num_tokens))
    raster = np.random.default_rng(0).integers(0, 100, size=(2, *grid))
    assert np.array_equal(plan.to_sequence(raster)[..., plan.inverse].reshape(raster.shape), raster)


def test_video_frames_follow_one_another():
    order = par_order((2, 8, 8), 4)
    assert np.array_equal(order[64:], order[:64] + 64)


@pytest.mark.parametrize("grid, n", [((10, 10), 16), ((9, 8), 4), ((2, 2), 16)])
def test_undivisible_grids_are_refused(grid, n):
    with pytest.raises(PlanError):
        Plan(grid, n)


def test_unsupported_region_count():
    with pytest.raises(PlanError, match="regions must be one of"):
        Plan((16, 16), 9)


def test_passes_write_the_spec_slots():
    plan = Plan((24, 24), 4)
    bounds = [(p.start, p.end) for p in plan.passes]
    assert bounds[:6] == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 8), (8, 12)]
    assert bounds[-1] == (572, 576)
    assert plan.num_slots == 576


def slot_arrays(plan):
    """Per-slot kind and source (sequence or transition index), expanded from the plan's runs."""
    kinds, sources = [], []
    for kind, start, end, first in plan.slot_runs:
        kinds += [kind] * (end - start)
        sources += range(first, first + end - start)
    return np.array(kinds), np.array(sources)


def test_slot_layout_n4():
    plan = Plan((4, 4), 4)
    kinds = slot_arrays(plan)[0].tolist()
    assert kinds == [CLASS] + [TOKEN] * 4 + [TRANSITION] * 3 + [TOKEN] * 8
    # slots 1..4 hold t1..t4, slots 5..7 M1..M3, slots 8.. hold t5.. (sequence indices 4..)
    assert slot_arrays(plan)[1].tolist() == [0, 0, 1, 2, 3, 0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11]


def test_rotary_cells_follow_tokens_and_zero_for_class_and_transitions():
    plan = Plan((4, 4), 4)
    cell = plan.slot_cell
    assert cell[0] == -1 and (cell[5:8] == -1).all()
    kinds, sources = slot_arrays(plan)
    tokens = kinds == TOKEN
    assert np.array_equal(cell[tokens], plan.order[sources[tokens]])


def test_mask_n4_blocks():
    plan = Plan((4, 4), 4)
    mask = plan.attention_mask()
    expected = np.tril(np.ones((16, 16), dtype=bool))
    for block in range(4, 16, 4):
        expected[block : block + 4, : block + 4] = True
    assert np.array_equal(mask, expected)


def test_mask_n1_is_causal():
    mask = Plan((8, 8), 1).attention_mask()
    assert np.array_equal(mask, np.tril(np.ones((64, 64), dtype=bool)))


@pytest.mark.parametrize("n", [1, 4, 16])
def test_each_pass_sees_exactly_its_prefix(n):
    plan = Plan((16, 16), n)
    mask = plan.attention_mask()
    for p in plan.passes:
        for slot in range(p.start, p.end):
            assert mask[slot, : p.end].all() and not mask[slot, p.end :].any()


@pytest.mark.parametrize("n", [1, 4, 16])
def test_every_fed_token_was_produced_by_an_earlier_pass(n):
    plan = Plan((16, 16), n)
    kinds, sources = slot_arrays(plan)
    produced = set()
    for p in plan.passes:
        for slot in range(p.start, p.end):
            if kinds[slot] == TOKEN:
                assert sources[slot] in produced
        produced.update(range(p.start, p.end))
    assert produced == set(range(plan.num_tokens))
