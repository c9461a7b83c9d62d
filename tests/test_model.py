import math

import pytest
import torch
import torch.nn.functional as F

from parcli.model import (
    KVCache,
    apply_rotary,
    cache_dtype,
    cache_head_dim,
    cell_angles,
    rotary_rows,
)
from parcli.plan import Plan
from parcli.slots import embed_slots


def rotary_table(plan: Plan, head_dim: int) -> torch.Tensor:
    return rotary_rows(plan.grid, plan.slot_cell, head_dim)


def llamagen_style_table(grid_size: int, head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """LlamaGen's 2D table: one zero row for the class token, then the grid in raster order."""
    half = head_dim // 2
    freqs = 1.0 / (base ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    angles = torch.outer(torch.arange(grid_size), freqs)
    grid = torch.cat(
        [
            angles[:, None, :].expand(-1, grid_size, -1),
            angles[None, :, :].expand(grid_size, -1, -1),
        ],
        dim=-1,
    )
    table = torch.stack([torch.cos(grid), torch.sin(grid)], dim=-1).flatten(0, 1)
    return torch.cat([torch.zeros(1, half, 2), table])


@pytest.mark.parametrize("head_dim", [64, 100])
def test_sequential_rotary_rows_equal_llamagen_bit_for_bit(head_dim):
    plan = Plan((24, 24), 1)
    ours = rotary_table(plan, head_dim)
    # slot s holds raster token s - 1 for s >= 1; LlamaGen's table has L + 1 rows
    assert torch.equal(ours, llamagen_style_table(24, head_dim)[:576])


def test_par_rotary_rows_use_the_token_cell_and_zero_for_class_and_transition():
    plan = Plan((8, 8), 4)
    table = rotary_table(plan, 16)
    reference = llamagen_style_table(8, 16)
    for slot in range(plan.num_slots):
        cell = plan.slot_cell[slot]
        expected = torch.zeros(8, 2) if cell < 0 else reference[1 + cell]
        assert torch.equal(table[slot], expected)


def test_angles_formula():
    angles = cell_angles((4, 6), 16, 10000.0)
    freqs = [10000 ** (-(2 * i) / 8) for i in range(4)]
    row, col = divmod(13, 6)
    expected = [row * f for f in freqs] + [col * f for f in freqs]
    assert torch.allclose(angles[13], torch.tensor(expected), atol=1e-6)


def test_video_angles_cover_time_row_col():
    angles = cell_angles((3, 4, 4), 64, 10000.0)
    assert angles.shape == (48, 32)
    # 32 pairs: 12 for time, 10 for rows, 10 for columns, each axis with its own frequencies.
    time_freqs = [10000 ** (-(2 * i) / 24) for i in range(12)]
    space_freqs = [10000 ** (-(2 * i) / 20) for i in range(10)]
    for t, r, c in [(2, 1, 3), (1, 3, 0), (0, 2, 2)]:
        expected = [t * f for f in time_freqs] + [r * f for f in space_freqs]
        expected += [c * f for f in space_freqs]
        got = angles[t * 16 + r * 4 + c]
        assert torch.allclose(got, torch.tensor(expected), rtol=1e-6, atol=1e-6)
    # Two cells that differ only in time are rotated differently.
    assert not torch.allclose(angles[0 * 16 + 5], angles[2 * 16 + 5])


def test_zero_rows_make_query_and_key_zero():
    x = torch.randn(2, 3, 4, 16)
    out = apply_rotary(x, torch.zeros(3, 8, 2))
    assert torch.equal(out, torch.zeros_like(out))


def test_rotary_rotates_adjacent_pairs():
    x = torch.tensor([1.0, 0.0, 0.0, 2.0]).view(1, 1, 1, 4)
    angle = torch.tensor([math.pi / 2, math.pi])
    rope = torch.stack([angle.cos(), angle.sin()], dim=-1)[None]
    out = apply_rotary(x, rope).flatten()
    assert torch.allclose(out, torch.tensor([0.0, 1.0, 0.0, -2.0]), atol=1e-6)


def teacher_forced_logits(model, plan, labels, seq):
    h = embed_slots(model, plan, labels, seq, 0, plan.num_slots)
    rope = rotary_table(plan, model.cfg.head_dim)
    mask = torch.from_numpy(plan.attention_mask())
    return model(h, rope, mask=mask)


@pytest.mark.parametrize("n, grid", [(1, (8, 8)), (4, (8, 8)), (16, (8, 8)), (4, (2, 4, 4))])
def test_kv_cache_passes_equal_one_teacher_forced_pass(make_model, n, grid):
    model = make_model(regions=n, grid=grid)
    plan = Plan(grid, n)
    labels = torch.tensor([3, 7])
    seq = torch.randint(0, model.cfg.vocab_size, (2, plan.num_tokens))
    with torch.no_grad():
        full = teacher_forced_logits(model, plan, labels, seq)
        cache = KVCache(model.cfg, 2, plan.num_slots, "cpu", torch.float32)
        rope = rotary_table(plan, model.cfg.head_dim)
        for p in plan.passes:
            h = embed_slots(model, plan, labels, seq, p.start, p.end)
            step = model(h, rope[p.start : p.end], cache, start=p.start)
            torch.testing.assert_close(step, full[:, p.start : p.end], rtol=1e-4, atol=1e-4)


def test_caches_pad_heads_to_multiples_of_8_on_cuda_only():
    assert [cache_head_dim(d, "cuda") for d in (64, 100, 12, 8)] == [64, 104, 16, 8]
    assert cache_head_dim(100, "cpu") == 100 and cache_head_dim(100, torch.device("cpu")) == 100


def test_half_precision_caches_are_float32_for_one_query_passes_on_the_cpu_only():
    assert cache_dtype(torch.bfloat16, "cpu", 1) == torch.float32
    assert cache_dtype(torch.float16, torch.device("cpu"), 1) == torch.float32
    assert cache_dtype(torch.bfloat16, "cpu", 4) == torch.bfloat16
    assert cache_dtype(torch.bfloat16, "cuda", 1) == torch.bfloat16
    assert cache_dtype(torch.float32, "cpu", 1) == torch.float32


@pytest.mark.parametrize("fixed_shapes", [False, True])
def test_a_bf16_model_over_a_float32_cache_keeps_to_its_own_logits(make_model, fixed_shapes):
    """Keys and values widen exactly, so only attention's rounding moves: the logits stay within
    bf16's rounding of a teacher-forced bf16 pass, through either way of writing the cache."""
    from parcli.engine.runners import FixedShapeRunner, PrefixRunner

    model = make_model(regions=1).to(torch.bfloat16)
    plan = Plan((8, 8), 1)
    labels = torch.tensor([3, 7])
    seq = torch.randint(0, model.cfg.vocab_size, (2, plan.num_tokens))
    runner = (FixedShapeRunner if fixed_shapes else PrefixRunner)(model, plan, 2)
    assert runner.cache.keys[0].dtype == torch.float32
    with torch.no_grad():
        full = teacher_forced_logits(model, plan, labels, seq).float()
        for p in plan.passes:
            step = runner(p, embed_slots(model, plan, labels, seq, p.start, p.end))
            error = (step.float() - full[:, p.start : p.end]).abs().max()
            assert error <= 0.03 * full.abs().max()


@pytest.mark.parametrize("fixed_shapes", [False, True])
def test_a_cache_of_padded_heads_gives_the_unpadded_logits(make_model, fixed_shapes):
    # GPT-3B's heads are 100 wide; here 12 wide, stored at 16 as CUDA stores 100 at 104.
    model = make_model(regions=4, n_head=4, dim=48)
    plan = Plan((8, 8), 4)
    labels = torch.tensor([3, 7])
    seq = torch.randint(0, model.cfg.vocab_size, (2, plan.num_tokens))
    rope = rotary_table(plan, model.cfg.head_dim)
    mask = torch.from_numpy(plan.attention_mask())
    with torch.no_grad():
        full = teacher_forced_logits(model, plan, labels, seq)
        cache = KVCache(model.cfg, 2, plan.num_slots, "cpu", torch.float32, head_dim=16)
        for p in plan.passes:
            h = embed_slots(model, plan, labels, seq, p.start, p.end)
            if fixed_shapes:
                positions = torch.arange(p.start, p.end)
                step = model(h, rope[positions], cache, positions=positions, mask=mask[positions])
            else:
                step = model(h, rope[p.start : p.end], cache, start=p.start)
            torch.testing.assert_close(step, full[:, p.start : p.end], rtol=1e-5, atol=1e-5)
    assert cache.keys[0].shape[-1] == 16 and not cache.keys[0][..., 12:].any()


def test_teacher_forced_logits_ignore_future_tokens(make_model):
    model = make_model(regions=4)
    plan = Plan((8, 8), 4)
    labels = torch.tensor([1])
    seq = torch.randint(0, 32, (1, 64))
    changed = seq.clone()
    changed[:, 40:] = (changed[:, 40:] + 1) % 32  # tokens of group 10 onwards
    with torch.no_grad():
        a = teacher_forced_logits(model, plan, labels, seq)
        b = teacher_forced_logits(model, plan, labels, changed)
    # slot s predicts sequence index s; group g's inputs sit in block (g+1)n, so slots < 40 see none
    torch.testing.assert_close(a[:, :40], b[:, :40])
    assert not torch.allclose(a[:, 44:], b[:, 44:])


def reference_llamagen_logits(model, labels, raster):
    """Plain causal LlamaGen forward written out independently: class token then raster tokens."""
    cfg = model.cfg
    x = torch.cat([model.cls_embedding(labels)[:, None], model.tok_embeddings(raster[:, :-1])], 1)
    table = llamagen_style_table(cfg.grid[0], cfg.head_dim)[: x.shape[1]]
    for layer in model.layers:
        att = layer.attention
        h = layer.attention_norm(x)
        q, k, v = att.wqkv(h).split(cfg.dim, dim=-1)
        shape = (*x.shape[:2], cfg.n_head, cfg.head_dim)
        q, k = apply_rotary(q.view(shape), table), apply_rotary(k.view(shape), table)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.view(shape).transpose(1, 2), is_causal=True
        )
        x = x + att.wo(out.transpose(1, 2).reshape(x.shape))
        x = x + layer.feed_forward(layer.ffn_norm(x))
    return model.output(model.norm(x)).float()


def test_one_region_is_llamagen_raster_decoding(make_model):
    model = make_model(regions=1)
    plan = Plan((8, 8), 1)
    labels = torch.tensor([2, 5])
    raster = torch.randint(0, 32, (2, 64))
    with torch.no_grad():
        ours = teacher_forced_logits(model, plan, labels, raster)
        theirs = reference_llamagen_logits(model, labels, raster)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
