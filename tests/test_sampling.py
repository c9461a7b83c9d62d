import pytest
import torch

from parcli.sampling import SamplingConfig, filter_logits, mix_guidance, sample


def test_guidance_mixes_conditional_first_rows():
    cond = torch.tensor([[1.0, 2.0]])
    uncond = torch.tensor([[0.5, 4.0]])
    mixed = mix_guidance(torch.cat([cond, uncond]), 2.0)
    assert torch.equal(mixed, uncond + (cond - uncond) * 2.0)


def test_guidance_only_above_one():
    assert SamplingConfig(cfg_scale=1.5).guided
    assert not SamplingConfig(cfg_scale=1.0).guided


def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0]])
    kept = filter_logits(logits, top_k=2, top_p=1.0)
    assert torch.isinf(kept[0, [0, 3]]).all() and torch.equal(kept[0, [1, 2]], logits[0, [1, 2]])


def test_top_p_keeps_the_smallest_nucleus_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = filter_logits(probs.log(), top_k=0, top_p=0.7)
    assert torch.isfinite(kept[0, :2]).all() and torch.isinf(kept[0, 2:]).all()
    assert torch.isfinite(filter_logits(probs.log(), 0, 0.01)[0, 0])


def test_top_k_one_is_greedy():
    logits = torch.randn(64, 100)
    tokens = sample(logits, SamplingConfig(top_k=1), torch.rand(64))
    assert torch.equal(tokens, logits.argmax(-1))


def test_seeded_sampling_is_reproducible_and_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]])).expand(20000, -1)
    config = SamplingConfig()
    draws = torch.rand(20000, generator=torch.Generator().manual_seed(1))
    a = sample(logits, config, draws)
    b = sample(logits, config, draws.clone())
    assert torch.equal(a, b)
    freq = torch.bincount(a, minlength=3).float() / a.numel()
    assert torch.allclose(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.02)


@pytest.mark.parametrize(
    "kwargs", [dict(top_p=0.0), dict(top_p=1.5), dict(top_k=-1), dict(temperature=-1.0)]
)
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        SamplingConfig(**kwargs)


def test_each_image_has_its_own_draws():
    from parcli.sampling import image_seed, image_uniforms

    together = image_uniforms(7, range(8), 50)
    assert torch.equal(image_uniforms(7, [5], 50)[0], together[5])
    assert torch.equal(image_uniforms(7, [3, 1], 50), together[[3, 1]])
    assert len({image_seed(seed, index) for seed in range(4) for index in range(100)}) == 400
    assert not torch.equal(image_uniforms(8, [5], 50)[0], together[5])
    assert together.min() >= 0.0 and together.max() < 1.0
    with pytest.raises(ValueError, match="must be >= 0"):
        image_seed(-1, 0)
