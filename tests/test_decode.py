import numpy as np
import pytest
import torch

from parcli.engine.packing import PackedFeedForward, pack_projections, packing_available
from parcli.engine.runners import FixedShapeRunner, PrefixRunner
from parcli.plan import Plan
from parcli.sampling import SamplingConfig, image_uniforms, mix_guidance
from parcli.slots import embed_slots, slot_rotary
from parcli.strategies.par import generate_tokens


def draws(seed, plan, labels):
    return image_uniforms(seed, range(len(labels)), plan.num_tokens)


def greedy_by_full_recompute(model, plan, labels, cfg_scale):
    """Decode by re-running the whole teacher-forced sequence every pass (no KV cache)."""
    guided = cfg_scale > 1.0
    classes = torch.cat([labels, torch.full_like(labels, model.cfg.num_classes)])
    sequence_labels = classes if guided else labels
    seq = torch.zeros(sequence_labels.shape[0], plan.num_tokens, dtype=torch.long)
    rope = slot_rotary(model, plan)
    mask = torch.from_numpy(plan.attention_mask())
    for p in plan.passes:
        h = embed_slots(model, plan, sequence_labels, seq, 0, p.end)
        logits = model(h, rope[: p.end], mask=mask[: p.end, : p.end])[:, p.start : p.end]
        if guided:
            logits = mix_guidance(logits, cfg_scale)
        copies = sequence_labels.shape[0] // labels.shape[0]
        seq[:, p.start : p.end] = logits.argmax(-1).repeat(copies, 1)
    return seq[: labels.shape[0], plan.inverse].reshape(labels.shape[0], *plan.grid).numpy()


@pytest.mark.parametrize(
    ("n", "grid"),
    [(1, (8, 8)), (4, (8, 8)), (16, (8, 8)), (1, (2, 4, 4)), (4, (2, 4, 4)), (16, (2, 8, 8))],
)
@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
def test_greedy_decoding_matches_full_recompute(make_model, n, grid, cfg_scale):
    model = make_model(regions=n, grid=grid)
    plan = Plan(grid, n)
    labels = torch.tensor([1, 4])
    with torch.no_grad():
        greedy = SamplingConfig(cfg_scale=cfg_scale, top_k=1)
        ours = generate_tokens(model, plan, labels, greedy, draws(0, plan, labels))
        expected = greedy_by_full_recompute(model, plan, labels, cfg_scale)
    assert ours.shape == (2, *grid)
    assert (ours.numpy() == expected).all()
    assert len(np.unique(expected)) > 4  # a model worth decoding: not one token everywhere


def test_same_seed_same_tokens_and_progress_counts_passes(make_model):
    model = make_model(regions=4)
    plan = Plan((8, 8), 4)
    labels = torch.tensor([3])
    seen = []
    a = generate_tokens(
        model,
        plan,
        labels,
        SamplingConfig(cfg_scale=1.5),
        draws(7, plan, labels),
        seen.append,
    )
    b = generate_tokens(model, plan, labels, SamplingConfig(cfg_scale=1.5), draws(7, plan, labels))
    c = generate_tokens(model, plan, labels, SamplingConfig(cfg_scale=1.5), draws(8, plan, labels))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len(seen) == plan.num_passes == 4 + 60 // 4


@pytest.mark.parametrize("n", [1, 4, 16])
def test_fixed_shape_runner_gives_the_same_tokens_as_the_prefix_runner(make_model, n):
    model = make_model(regions=n)
    plan = Plan((8, 8), n)
    labels = torch.tensor([2, 9])
    sampling = SamplingConfig(cfg_scale=1.5, temperature=1.0)
    eager = generate_tokens(model, plan, labels, sampling, draws(3, plan, labels))
    runner = FixedShapeRunner(model, plan, sequences=4)
    static = generate_tokens(model, plan, labels, sampling, draws(3, plan, labels), runner=runner)
    assert torch.equal(eager, static)
    again = generate_tokens(model, plan, labels, sampling, draws(3, plan, labels), runner=runner)
    assert torch.equal(static, again)  # a reused cache holds nothing a new generation can see


@pytest.mark.parametrize("regions", [1, 4])
def test_packed_cpu_weights_give_the_same_tokens(make_model, regions):
    from parcli.engine import packing

    model = make_model(regions=regions)
    plan = Plan((8, 8), regions)
    labels = torch.tensor([5, 6])
    sampling = SamplingConfig(cfg_scale=2.0)
    before = generate_tokens(model, plan, labels, sampling, draws(1, plan, labels))
    if not packing_available():
        pytest.skip("this torch build cannot pack weights")
    # Packed for 8-row inputs: the passes of other widths multiply by the same packed weights.
    assert pack_projections(model, input_rows=8) == packing.ONEDNN
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert all(isinstance(layer.feed_forward, PackedFeedForward) for layer in model.layers)
    after = generate_tokens(model, plan, labels, sampling, draws(1, plan, labels))
    assert torch.equal(before, after)


@pytest.mark.parametrize("regions", [1, 4])
def test_packed_bf16_weights_give_the_same_tokens(make_model, regions):
    from parcli.engine import packing

    if not packing_available(torch.bfloat16):
        pytest.skip("this torch build cannot pack bfloat16 weights")
    model = make_model(regions=regions).to(torch.bfloat16)
    plan = Plan((8, 8), regions)
    labels = torch.tensor([5, 6])
    sampling = SamplingConfig(cfg_scale=2.0)
    before = generate_tokens(model, plan, labels, sampling, draws(1, plan, labels))
    assert pack_projections(model, input_rows=8) == packing.ONEDNN
    assert [m for m in model.modules() if isinstance(m, packing.PackedLinear)]
    after = generate_tokens(model, plan, labels, sampling, draws(1, plan, labels))
    assert torch.equal(before, after)


def test_half_precision_is_not_packed(make_model):
    model = make_model(regions=4).to(torch.float16)
    assert pack_projections(model, input_rows=8) is None
    assert not any(isinstance(m, PackedFeedForward) for m in model.modules())


def test_a_packed_row_is_the_same_whatever_the_rows_beside_it():
    """An image must not change with its batch: every row count rounds a row alike."""
    from parcli.engine.packing import PackedLinear

    if not packing_available():
        pytest.skip("this torch build cannot pack weights")
    torch.manual_seed(0)
    for shape in ((192, 64), (64, 256), (768, 2048)):
        linear = PackedLinear(torch.randn(shape), input_rows=8)
        x = torch.randn(1, 40, shape[1])
        whole = linear(x)
        for rows in (1, 2, 3, 8, 17):
            assert torch.equal(linear(x[:, :rows]), whole[:, :rows]), (shape, rows)


@pytest.mark.parametrize("static", [False, True])
def test_decode_loop_never_reads_a_device_value_on_the_host(make_model, monkeypatch, static):
    """Any of these on a CUDA tensor would stall the host until the device catches up."""
    model = make_model(regions=4)
    plan = Plan((8, 8), 4)
    runner = (FixedShapeRunner if static else PrefixRunner)(model, plan, sequences=4)
    labels = torch.tensor([1, 2])
    uniforms = draws(0, plan, labels)

    def host_read(*args, **kwargs):
        raise AssertionError("the decode loop read a tensor value on the host")

    for name in ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, host_read)
    sampling = SamplingConfig(cfg_scale=2.0, temperature=0.9, top_k=5, top_p=0.9)
    tokens = generate_tokens(model, plan, labels, sampling, uniforms, runner=runner)
    assert tokens.shape == (2, 8, 8)
