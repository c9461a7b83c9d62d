import itertools

import numpy as np
import pytest
import torch

from parcli.errors import SettingError
from parcli.model import KVCache
from parcli.options import RunOptions
from parcli.plan import Plan
from parcli.sampling import SamplingConfig, mix_guidance, warp
from parcli.slots import embed_slots, guided_labels, slot_rotary
from parcli.strategies import make_strategy, sjd
from parcli.strategies.par import Par
from parcli.strategies.sjd import Draws, Jacobi, Sjd, State, accept_or_resample


def kernel(p, q, d, u_accept, u_residual=0.5):
    p, q = torch.tensor([p]), torch.tensor([q])
    accepted, token = accept_or_resample(
        p, q, torch.tensor([d]), torch.tensor([u_accept]), torch.tensor([u_residual])
    )
    return bool(accepted[0]), int(token[0])


def test_acceptance_kernel_on_hand_made_cases():
    p, q = [0.5, 0.3, 0.2], [0.2, 0.6, 0.2]
    assert kernel(p, q, 1, 0.49) == (True, 1)
    # Rejected: the residual max(0, p - q) is [0.3, 0, 0], so token 0 whatever the uniform.
    assert kernel(p, q, 1, 0.50, 0.0) == (False, 0)
    assert kernel(p, q, 1, 0.50, 0.999) == (False, 0)
    assert kernel(p, q, 0, 0.999)[0]  # p(d) >= q(d): always accepted
    # One-hot q: accepted with p(d); the residual is p without d.
    one_hot = [0.0, 1.0, 0.0]
    assert kernel(p, one_hot, 1, 0.29)[0] and not kernel(p, one_hot, 1, 0.31)[0]
    assert {kernel(p, one_hot, 1, 0.9, u)[1] for u in np.linspace(0, 0.999, 50)} == {0, 2}
    # p(d) = 0 always rejects; p == q always accepts.
    assert not kernel([0.5, 0.0, 0.5], q, 1, 0.0)[0]
    assert all(kernel(p, p, d, 0.999)[0] for d in range(3))
    # A zero residual (p == q, forced past the test) falls back to p.
    probs = torch.tensor([p] * 3)
    _, tokens = accept_or_resample(
        probs, probs, torch.tensor([1, 1, 1]), torch.ones(3), torch.tensor([0.1, 0.4, 0.9])
    )
    assert tokens.tolist() == [2, 1, 0]  # p's inverse CDF with u' = 1 - u


def test_accepted_or_resampled_tokens_follow_p():
    gen = torch.Generator().manual_seed(0)
    p = torch.tensor([0.05, 0.4, 0.3, 0.0, 0.25])
    q = torch.tensor([0.3, 0.1, 0.3, 0.2, 0.1])
    draws = 400_000
    drafts = torch.multinomial(q, draws, replacement=True, generator=gen)
    _, tokens = accept_or_resample(
        p.expand(draws, -1),
        q.expand(draws, -1),
        drafts,
        torch.rand(draws, generator=gen),
        torch.rand(draws, generator=gen),
    )
    counts = torch.bincount(tokens, minlength=5).double()
    assert counts[3] == 0
    expected = p.double() * draws
    support = expected > 0
    chi2 = (((counts - expected) ** 2)[support] / expected[support]).sum()
    assert chi2 < 18.5  # chi-square, 3 degrees of freedom, p = 0.0003


class ToyLogits:
    """A table-driven stand-in for the transformer: the logits of position s depend only on the
    tokens of the passes before s's pass (the plan's causal structure), one table per half of
    guidance."""

    def __init__(self, plan: Plan, vocab: int, seed: int = 0, scale: float = 2.0):
        self.plan, self.vocab = plan, vocab
        gen = torch.Generator().manual_seed(seed)
        self.size = 100_003
        self.tables = torch.randn(2, self.size, vocab, generator=gen) * scale
        starts = np.empty(plan.num_tokens, dtype=np.int64)
        for p in plan.passes:
            starts[p.start : p.end] = p.start
        before = np.arange(plan.num_tokens)[None, :] < starts[:, None]  # (s, t) t feeds s
        self.weights = torch.from_numpy(before * (vocab + 1) ** np.arange(plan.num_tokens))

    def probs(self, seq: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
        """(rows, tokens, vocab) distributions of every position under teacher forcing."""
        code = (seq + 1) @ self.weights.T  # (rows, s): the prefix each position sees
        key = (code * self.plan.num_tokens + torch.arange(self.plan.num_tokens)) % self.size
        cond, uncond = self.tables[0][key], self.tables[1][key]
        return warp(mix_guidance(torch.cat([cond, uncond]), sampling.cfg_scale), sampling)

    def forward(self, sampling):
        def run(state, pos, valid):
            every = self.probs(state.seq, sampling)
            rows = torch.arange(pos.shape[0])[:, None, None]
            return every[rows, pos]

        return run


def exact_law(toy: ToyLogits, sampling) -> torch.Tensor:
    tokens = toy.plan.num_tokens
    every = torch.tensor(list(itertools.product(range(toy.vocab), repeat=tokens)))
    probs = toy.probs(every, sampling).double()
    return probs.gather(2, every[..., None]).squeeze(-1).prod(1)


def empirical_law(toy: ToyLogits, sampling, window, runs, init="random"):
    plan = toy.plan
    gen = torch.Generator().manual_seed(1)
    draws = Draws(torch.rand(runs, plan.num_tokens, generator=gen), generator=gen)
    state = State(runs, plan, toy.vocab, window, draws)
    Jacobi(plan, toy.vocab, window, init).decode(state, toy.forward(sampling))
    codes = state.seq @ (toy.vocab ** torch.arange(plan.num_tokens - 1, -1, -1))
    return torch.bincount(codes, minlength=toy.vocab**plan.num_tokens).double() / runs


# (grid, regions, vocab, top_k, logit scale, window, init). Vocabulary 4 with top-k 3 over 4
# tokens, or top-k 2 over 8, leaves 81 or 256 sequences: 2e5 runs measure their law to a
# total variation of about 0.006.
LAW_CASES = [
    ((2, 2), 1, 4, 3, 0.7, 3, "random"),
    ((2, 2), 1, 4, 3, 0.7, 4, "left"),
    ((2, 4), 4, 4, 2, 2.0, 3, "random"),
    ((2, 4), 4, 4, 2, 2.0, 5, "left"),
]
LAW_ARGS = ("grid", "regions", "vocab", "top_k", "scale", "window", "init")


def law_distance(grid, regions, vocab, top_k, scale, window, init) -> float:
    plan = Plan(grid, regions)
    toy = ToyLogits(plan, vocab, scale=scale)
    sampling = SamplingConfig(cfg_scale=1.5, temperature=1.0, top_k=top_k)
    observed = empirical_law(toy, sampling, window, 200_000, init)
    return 0.5 * float((observed - exact_law(toy, sampling)).abs().sum())


@pytest.mark.parametrize(LAW_ARGS, LAW_CASES)
def test_sequences_follow_the_autoregressive_law(grid, regions, vocab, top_k, scale, window, init):
    assert law_distance(grid, regions, vocab, top_k, scale, window, init) < 0.01


@pytest.mark.parametrize(LAW_ARGS, LAW_CASES[:2])
def test_the_law_test_catches_rejections_resampled_from_p(
    monkeypatch, grid, regions, vocab, top_k, scale, window, init
):
    # The classic mistake: a rejected draft redrawn from p instead of max(0, p - q). It must fail
    # the test above; measured at 2e5 runs it is 0.075-0.078 away, against under 0.01.
    right = sjd.accept_or_resample

    def from_p(p, q, draft, u_accept, u_residual):
        accepted, _ = right(p, q, draft, u_accept, u_residual)
        return accepted, torch.where(accepted, draft, sjd.draw(p, u_residual))

    monkeypatch.setattr(sjd, "accept_or_resample", from_p)
    assert law_distance(grid, regions, vocab, top_k, scale, window, init) > 0.04


def generate(strategy, model, plan, labels, sampling, seed=0, indices=None):
    indices = list(range(len(labels))) if indices is None else indices
    return strategy.generate(model, plan, labels, sampling, seed, indices, None)


GREEDY_CASES = [(1, (8, 8)), (4, (8, 8)), (16, (8, 8)), (4, (2, 8, 8))]


@pytest.mark.parametrize(("n", "grid"), GREEDY_CASES)
@pytest.mark.parametrize("window", [2, 5])
def test_greedy_sjd_draws_par_tokens(make_model, n, grid, window):
    model = make_model(regions=n, grid=grid)
    plan = Plan(grid, n)
    labels = torch.tensor([1, 4])
    greedy = SamplingConfig(cfg_scale=2.0, top_k=1)
    expected, _ = generate(Par(RunOptions()), model, plan, labels, greedy)
    tokens, stats = generate(
        Sjd(RunOptions(strategy="sjd", window=window)), model, plan, labels, greedy
    )
    assert torch.equal(tokens, expected)
    assert stats.images == 2 and stats.committed_passes == 2 * plan.num_passes
    assert stats.passes <= 2 * plan.num_passes


@pytest.mark.parametrize("n", [1, 4, 16])
def test_window_one_draws_par_tokens_under_sampling(make_model, n):
    model = make_model(regions=n)
    plan = Plan((8, 8), n)
    labels = torch.tensor([2, 7])
    sampling = SamplingConfig(cfg_scale=1.5, temperature=1.0, top_k=8)
    expected, _ = generate(Par(RunOptions()), model, plan, labels, sampling, seed=5)
    tokens, stats = generate(
        Sjd(RunOptions(strategy="sjd", window=1)), model, plan, labels, sampling, seed=5
    )
    assert torch.equal(tokens, expected)
    assert stats.passes == 2 * plan.num_passes == stats.iterations


@pytest.mark.parametrize("n", [1, 4])
def test_an_image_is_the_same_whatever_its_batch(make_model, n):
    model = make_model(regions=n)
    plan = Plan((8, 8), n)
    sampling = SamplingConfig(cfg_scale=1.5, top_k=8)
    strategy = Sjd(RunOptions(strategy="sjd", window=3))
    batch, _ = generate(strategy, model, plan, torch.tensor([3, 5, 8]), sampling, 2, [10, 11, 12])
    alone, _ = generate(strategy, model, plan, torch.tensor([5]), sampling, 2, [11])
    assert torch.equal(batch[1:2], alone)
    other, _ = generate(strategy, model, plan, torch.tensor([5]), sampling, 3, [11])
    assert not torch.equal(other, alone)


@pytest.mark.parametrize("n", [1, 4, 16])
def test_kv_cache_after_a_run_is_the_teacher_forced_one(make_model, n):
    model = make_model(regions=n)
    plan = Plan((8, 8), n)
    labels = torch.tensor([6])
    sampling = SamplingConfig(cfg_scale=1.5, top_k=8)
    strategy = Sjd(RunOptions(strategy="sjd", window=4))
    tokens, _ = generate(strategy, model, plan, labels, sampling)
    rows = guided_labels(labels, model.cfg.num_classes, True)
    seq = torch.from_numpy(plan.to_sequence(tokens.numpy())).expand(rows.shape[0], -1)
    forced = KVCache(model.cfg, rows.shape[0], plan.num_slots, "cpu", torch.float32)
    mask = torch.from_numpy(plan.attention_mask())
    with torch.no_grad():
        h = embed_slots(model, plan, rows, seq, 0, plan.num_slots)
        model(h, slot_rotary(model, plan), forced, start=0, mask=mask)
    (cache,) = strategy._caches
    for ours, theirs in zip(cache.keys + cache.values, forced.keys + forced.values, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_progress_and_stats(make_model):
    model = make_model(regions=4)
    plan = Plan((8, 8), 4)
    seen = []
    strategy = make_strategy(RunOptions(strategy="sjd", window=3))
    assert strategy.name == "sjd" and strategy.window == 3
    labels = torch.tensor([1, 2])
    sampling = SamplingConfig(cfg_scale=1.5)
    strategy.generate(model, plan, labels, sampling, 0, [0, 1], None, seen.append)
    assert seen == list(plan.passes)
    assert make_strategy(RunOptions(strategy="sjd")).window >= 1


def test_window_below_one_is_refused():
    with pytest.raises(SettingError):
        Sjd(RunOptions(strategy="sjd", window=0))


def test_the_draft_setting_reaches_the_strategy_and_the_recipe(tmp_path):
    from typer.testing import CliRunner

    from parcli.cli import app
    from parcli.io.recipe import read_recipe

    strategy = make_strategy(RunOptions(strategy="sjd", draft="random"))
    assert strategy.init == "random"
    with pytest.raises(SettingError, match="left or random"):
        make_strategy(RunOptions(strategy="sjd", draft="above"))
    out = tmp_path / "x.png"
    args = ["generate", "-m", "digits", "-c", 2, "--regions", 4, "--strategy", "sjd", "--draft",
            "random", "-q", "-o", out]  # fmt: skip
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert read_recipe(out).run.draft == "random"
