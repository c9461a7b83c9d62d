"""Lossless speculative Jacobi decoding over PAR's passes: a forward pass runs the next plan pass
and drafts of window - 1 more, tested so that the tokens keep `par`'s law exactly. Windows follow
acceptance, read on the host: one device sync per iteration, where `par` has none."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from parcli.errors import SettingError, at_least_one
from parcli.model import KVCache, cache_dtype
from parcli.plan import Pass, Plan
from parcli.sampling import draw, image_seed, image_uniforms, mix_guidance, warp
from parcli.slots import embed_slots, guided_labels, slot_rotary
from parcli.strategies.par import DecodeStats, device_inverse

DEFAULT_WINDOW = 4
INITS = ("left", "random")
RESIDUAL_FLOOR = 1e-6


def accept_or_resample(
    p: torch.Tensor,
    q: torch.Tensor,
    draft: torch.Tensor,
    u_accept: torch.Tensor,
    u_residual: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Speculative-sampling test of drafts (...) drawn from q (..., V) against p (..., V):
    (accepted, token), a draft staying with probability min(1, p/q), else drawn from
    max(0, p - q), or from p where that mass is below RESIDUAL_FLOOR."""
    index = draft.unsqueeze(-1)
    ratio = (p.gather(-1, index) / q.gather(-1, index)).squeeze(-1).clamp(max=1.0)
    accepted = u_accept < ratio
    residual = (p - q).clamp(min=0.0)
    empty = residual.sum(dim=-1, keepdim=True) < RESIDUAL_FLOOR
    resampled = draw(torch.where(empty, p, residual), u_residual)
    return accepted, torch.where(accepted, draft, resampled)


@dataclass
class Draws:
    """Uniforms of the rows: `base` (rows, tokens) for each position's first draw, the rest from a
    generator per row (so a row depends on itself alone) or, in the law tests, a shared one."""

    base: torch.Tensor
    generators: Sequence[torch.Generator] | None = None
    generator: torch.Generator | None = None

    def fresh(self, count: int, rows: torch.Tensor) -> torch.Tensor:
        """(rows, count) uniforms; only the rows flagged in `rows` advance their generator."""
        if self.generators is None:
            return torch.rand(rows.shape[0], count, generator=self.generator).to(self.base.device)
        out = torch.zeros(rows.shape[0], count)
        for r in rows.nonzero().flatten().tolist():
            out[r] = torch.rand(count, generator=self.generators[r])
        return out.to(self.base.device)


class State:
    """Per-row tokens (committed and drafted), draft distributions and visit counts; drafts exist
    only within `window` passes of the commit point, so pass k's live at `q[:, k % window]`."""

    def __init__(self, rows: int, plan: Plan, vocab: int, window: int, draws: Draws):
        device = draws.base.device
        tokens = plan.num_tokens
        self.seq = torch.zeros(rows, tokens, dtype=torch.long, device=device)
        self.q = torch.zeros(rows, window, plan.regions, vocab, device=device)
        self.visits = torch.zeros(rows, tokens, dtype=torch.long, device=device)
        self.done = torch.zeros(rows, dtype=torch.long, device=device)  # committed plan passes
        self.drafted = torch.zeros(rows, dtype=torch.long, device=device)  # passes < it drafted
        self.draws = draws


class Jacobi:
    """The acceptance and commit rules over a plan's passes, for any source of probabilities."""

    def __init__(self, plan: Plan, vocab: int, window: int, init: str = "left"):
        self.plan, self.vocab, self.window, self.init = plan, vocab, window, init
        self.n, self.num_passes = plan.regions, plan.num_passes
        self.starts = torch.tensor([p.start for p in plan.passes])
        self.widths = torch.tensor([p.width for p in plan.passes])

    def _pass_positions(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions (..., n) of passes `index` (...), and which of them exist."""
        device = index.device
        inside = index < self.num_passes
        clamped = index.clamp(max=self.num_passes - 1).cpu()
        offsets = torch.arange(self.n)
        pos = (self.starts[clamped][..., None] + offsets).to(device)
        valid = inside[..., None] & (offsets < self.widths[clamped][..., None]).to(device)
        return torch.where(valid, pos, 0), valid

    def _write(self, state: State, pos, need, tokens, q=None, index=None) -> None:
        """Tokens (rows, n) at positions pos where `need`; with q, drafts of passes `index`."""
        rows, slot = need.nonzero(as_tuple=True)
        state.seq[rows, pos[rows, slot]] = tokens[rows, slot]
        if q is not None:
            state.q[rows, index[rows] % self.window, slot] = q[rows, slot]

    def _sample(self, state: State, pos, probs, need) -> torch.Tensor:
        """Draw at positions (rows, n); a first draw takes its base uniform, as `par` draws."""
        fresh = state.draws.fresh(self.n, need.any(1))
        first = state.visits.gather(1, pos) == 0
        u = torch.where(first, state.draws.base.gather(1, pos), fresh)
        state.visits.scatter_add_(1, pos, need.long())
        return draw(probs, u)

    def init_drafts(self, state: State) -> None:
        """One-hot drafts for the passes the next window feeds that have no prediction yet."""
        end = (state.done + self.window).clamp(max=self.num_passes) - 1
        active = state.done < self.num_passes
        for j in range(self.window - 1):
            index = state.drafted + j
            rows = active & (index < end)
            if not rows.any():
                break
            pos, valid = self._pass_positions(index)
            need = rows[:, None] & valid
            fresh = state.draws.fresh(self.n, rows)
            tokens = (fresh * self.vocab).long().clamp_(max=self.vocab - 1)
            if self.init == "left":
                # Same region, previous in-region position: the left (or upper-right) neighbour.
                before = pos - self.n
                copied = state.seq.gather(1, before.clamp(min=0))
                tokens = torch.where(before >= 0, copied, tokens)
            q = F.one_hot(tokens, self.vocab).float()
            self._write(state, pos, need, tokens, q, index)
        state.drafted = torch.where(active, torch.maximum(state.drafted, end), state.drafted)

    def iterate(self, state: State, probs: torch.Tensor, pos, valid) -> None:
        """Test and commit one window, probs (rows, window, n, V) its distributions."""
        active = state.done < self.num_passes
        in_plan = valid[:, :, 0]
        last = in_plan.sum(1) - 1  # the window pass after every draft: a bonus if all pass
        testing = active.clone()
        reached = torch.zeros_like(state.done)
        for i in range(self.window):
            rows = testing & in_plan[:, i]
            if not rows.any():
                break
            p, at, exists = probs[:, i], pos[:, i], valid[:, i]
            bonus, test = rows & (last == i), rows & (last != i)
            tokens = state.seq.gather(1, at)
            rejected = torch.zeros_like(rows)
            if bonus.any():
                need = bonus[:, None] & exists
                tokens = torch.where(need, self._sample(state, at, p, need), tokens)
            if test.any():
                need = test[:, None] & exists
                u_accept = state.draws.fresh(self.n, test)
                u_residual = state.draws.fresh(self.n, test)
                q = state.q[torch.arange(len(rows)), (state.done + i) % self.window]
                accepted, tested = accept_or_resample(p, q, tokens, u_accept, u_residual)
                tokens = torch.where(need, tested, tokens)
                rejected = (need & ~accepted).any(1)
            self._write(state, at, rows[:, None] & exists, tokens)
            reached = torch.where(rows, i + 1, reached)
            testing = testing & ~(bonus | rejected)
        # Passes past the commit point take new drafts from this iteration's distributions.
        for i in range(self.window):
            rows = active & in_plan[:, i] & (i >= reached)
            if rows.any():
                need = rows[:, None] & valid[:, i]
                tokens = self._sample(state, pos[:, i], probs[:, i], need)
                self._write(state, pos[:, i], need, tokens, probs[:, i], state.done + i)
        state.drafted = torch.where(active, state.done + last + 1, state.drafted)
        state.done = state.done + torch.where(active, reached, 0)

    def decode(
        self,
        state: State,
        forward: Callable[[State, torch.Tensor, torch.Tensor], torch.Tensor],
        on_pass: Callable[[Pass], None] | None = None,
    ) -> None:
        """Iterate until every row committed every pass; `forward(state, pos, valid)` gives the
        distributions (rows, window, n, V) of each row's window passes at positions `pos`."""
        reported = 0
        self.init_drafts(state)
        while bool((state.done < self.num_passes).any()):
            index = state.done[:, None] + torch.arange(self.window, device=state.done.device)
            pos, valid = self._pass_positions(index)
            self.iterate(state, forward(state, pos, valid), pos, valid)
            self.init_drafts(state)
            if on_pass is not None:
                done = int(state.done.min())
                for step in self.plan.passes[reported:done]:
                    on_pass(step)
                reported = done


class Sjd:
    """Speculative Jacobi decoding: `window` plan passes per forward pass, same law as `par`."""

    name = "sjd"

    def __init__(self, options):
        window = DEFAULT_WINDOW if options.window is None else options.window
        at_least_one(window=window)
        if options.draft not in INITS:
            raise SettingError("draft", f"must be {' or '.join(INITS)}, not {options.draft!r}")
        self.window, self.init = window, options.draft
        self._caches: list[KVCache] = []  # the last batch's, one per image (for tests)

    @torch.inference_mode()
    def generate(self, model, plan, labels, sampling, seed, indices, runner, on_pass=None):
        """Token grids and their cost; each image runs its windows in a cache of its own."""
        count, device, cfg = labels.shape[0], labels.device, model.cfg
        base = image_uniforms(seed, indices, plan.num_tokens, device)
        # A second stream per image, apart from its base uniforms, for every other draw.
        generators = [
            torch.Generator().manual_seed(image_seed(seed, index, 1)) for index in indices
        ]
        state = State(count, plan, cfg.vocab_size, self.window, Draws(base, generators))
        jacobi = Jacobi(plan, cfg.vocab_size, self.window, self.init)
        guided = [guided_labels(labels[i : i + 1], cfg.num_classes, sampling.guided)
                  for i in range(count)]  # fmt: skip
        # The dtype `par`'s runner keeps, so that a window of 1 rounds as `par` does.
        dtype = cache_dtype(model.dtype, model.device, plan.widest_pass)
        self._caches = caches = [
            KVCache(cfg, len(guided[0]), plan.num_slots, model.device, dtype) for _ in range(count)
        ]
        rope = slot_rotary(model, plan)
        full_mask = torch.from_numpy(plan.attention_mask()).to(model.device)
        stats = DecodeStats(images=count, committed_passes=count * plan.num_passes)

        def forward(state: State, pos: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
            """Each unfinished image's window distributions, from one pass over its slots."""
            out = torch.zeros(*pos.shape, cfg.vocab_size, device=pos.device)
            for r, first in enumerate(state.done.tolist()):
                if first >= plan.num_passes:
                    continue  # a finished image runs nothing
                last = min(first + self.window, plan.num_passes) - 1
                start, end = plan.passes[first].start, plan.passes[last].end
                seq = state.seq[r : r + 1].expand(guided[r].shape[0], -1)
                h = embed_slots(model, plan, guided[r], seq, start, end)
                # One pass sees every slot before its end: unmasked, as `par`'s runner runs it.
                mask = None if first == last else full_mask[start:end, :end]
                logits = model(h, rope[start:end], caches[r], start=start, mask=mask)
                if sampling.guided:
                    logits = mix_guidance(logits, sampling.cfg_scale)
                probs = warp(logits[0], sampling)
                out[r] = probs[(pos[r] - start).clamp(0, end - start - 1)]
                stats.passes += 1
                stats.query_tokens += end - start
            return out

        jacobi.decode(state, forward, on_pass)
        stats.iterations = stats.passes
        tokens = state.seq[:, device_inverse(plan, device)]
        return tokens.reshape(count, *plan.grid), stats
