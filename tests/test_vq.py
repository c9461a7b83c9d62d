import json

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_vq_config

from parcli.vq import VectorQuantizer, VQConfig, VQModel, from_pixels, to_pixels

# vq_ds16_c2i: encoder 29,298,176 + decoder 42,449,795 + quant convs 2,056 + 2,304
# + codebook 131,072 = 71,883,403 (LlamaGen publishes it as "72M").
DS16_PARAMS = 71_883_403


def tiny_config(**overrides) -> VQConfig:
    grey = dict(codebook_size=64, z_channels=8, in_channels=1, out_channels=1)
    return tiny_vq_config(**{**grey, **overrides})


def tiny_model(seed: int = 0, **overrides) -> VQModel:
    torch.manual_seed(seed)
    return VQModel(tiny_config(**overrides)).eval()


def expected_llamagen_keys(ch_mult, num_res_blocks) -> set[str]:
    """Key names of LlamaGen's VQModel (its tokenizer/tokenizer_image/vq_model.py), written out."""

    def conv(p):
        return {f"{p}.weight", f"{p}.bias"}

    def res(p, shortcut):
        keys = set().union(*(conv(f"{p}.{n}") for n in ("norm1", "conv1", "norm2", "conv2")))
        return keys | (conv(f"{p}.nin_shortcut") if shortcut else set())

    def attn(p):
        return set().union(*(conv(f"{p}.{n}") for n in ("norm", "q", "k", "v", "proj_out")))

    def mid(p):
        return res(f"{p}.0", False) | attn(f"{p}.1") | res(f"{p}.2", False)

    last = len(ch_mult) - 1
    keys = conv("encoder.conv_in") | conv("encoder.norm_out") | conv("encoder.conv_out")
    keys |= mid("encoder.mid")
    prev = 1
    for i, m in enumerate(ch_mult):
        for j in range(num_res_blocks):
            keys |= res(f"encoder.conv_blocks.{i}.res.{j}", j == 0 and m != prev)
            if i == last:
                keys |= attn(f"encoder.conv_blocks.{i}.attn.{j}")
        if i != last:
            keys |= conv(f"encoder.conv_blocks.{i}.downsample.conv")
        prev = m
    keys |= conv("decoder.conv_in") | conv("decoder.norm_out") | conv("decoder.conv_out")
    keys |= mid("decoder.mid")
    prev = ch_mult[-1]
    for i, m in enumerate(reversed(ch_mult)):
        for j in range(num_res_blocks + 1):
            keys |= res(f"decoder.conv_blocks.{i}.res.{j}", j == 0 and m != prev)
            if i == 0:
                keys |= attn(f"decoder.conv_blocks.{i}.attn.{j}")
        if i != last:
            keys |= conv(f"decoder.conv_blocks.{i}.upsample.conv")
        prev = m
    return keys | conv("quant_conv") | conv("post_quant_conv") | {"quantize.embedding.weight"}


def test_ds16_preset_matches_llamagen_layout():
    cfg = VQConfig()
    assert cfg.downsample == 16
    with torch.device("meta"):
        model = VQModel(cfg)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert set(shapes) == expected_llamagen_keys((1, 1, 2, 2, 4), 2)
    assert len(shapes) == 343
    assert "quantize.codebook_used" not in shapes
    representative = {
        "encoder.conv_in.weight": (128, 3, 3, 3),
        "encoder.conv_blocks.0.res.0.norm1.weight": (128,),
        "encoder.conv_blocks.2.res.0.nin_shortcut.weight": (256, 128, 1, 1),
        "encoder.conv_blocks.3.downsample.conv.weight": (256, 256, 3, 3),
        "encoder.conv_blocks.4.attn.1.proj_out.weight": (512, 512, 1, 1),
        "encoder.mid.1.q.weight": (512, 512, 1, 1),
        "encoder.conv_out.weight": (256, 512, 3, 3),
        "quant_conv.weight": (8, 256, 1, 1),
        "quantize.embedding.weight": (16384, 8),
        "post_quant_conv.weight": (256, 8, 1, 1),
        "decoder.conv_in.weight": (512, 256, 3, 3),
        "decoder.conv_blocks.0.attn.2.k.weight": (512, 512, 1, 1),
        "decoder.conv_blocks.0.upsample.conv.weight": (512, 512, 3, 3),
        "decoder.conv_blocks.1.res.0.nin_shortcut.weight": (256, 512, 1, 1),
        "decoder.conv_blocks.4.res.2.conv2.weight": (128, 128, 3, 3),
        "decoder.norm_out.weight": (128,),
        "decoder.conv_out.weight": (3, 128, 3, 3),
    }
    for key, shape in representative.items():
        assert shapes[key] == shape, key
    assert "decoder.conv_blocks.4.upsample.conv.weight" not in shapes
    assert sum(p.numel() for p in model.parameters()) == DS16_PARAMS
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert {(m.num_groups, m.eps) for m in norms} == {(32, 1e-6)}


def test_tiny_layout_follows_same_rules():
    model = tiny_model()
    assert set(model.state_dict()) == expected_llamagen_keys((1, 2), 1)


def test_checkpoint_usage_buffer_is_accepted_but_not_required():
    model = tiny_model()
    state = model.state_dict()
    model.load_state_dict(state)
    model.load_state_dict({**state, "quantize.codebook_used": torch.zeros(65536)})


def test_config_roundtrip_and_validation():
    cfg = tiny_config()
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["ch_mult"] == [1, 2]
    assert VQConfig.from_dict(data) == cfg
    with pytest.raises(ValueError):
        tiny_config(norm_groups=32)


def test_encode_decode_shapes_and_range():
    model = tiny_model()
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        z_q, codes = model.encode(x)
        out = model.decode_codes(codes)
    assert z_q.shape == (2, 4, 16, 16)
    assert codes.shape == (2, 16, 16) and codes.dtype == torch.int64
    assert codes.min() >= 0 and codes.max() < 64
    assert out.shape == (2, 1, 32, 32) and out.dtype == torch.float32
    torch.testing.assert_close(z_q, model.quantize.lookup(codes).permute(0, 3, 1, 2))


def test_decode_codes_equals_manual_lookup():
    model = tiny_model()
    codes = torch.randint(0, 64, (2, 5, 3))
    with torch.no_grad():
        codebook = F.normalize(model.quantize.embedding.weight, p=2, dim=-1)
        z = codebook[codes.flatten()].view(2, 5, 3, 4).permute(0, 3, 1, 2).contiguous()
        manual = model.decoder(model.post_quant_conv(z))
        out = model.decode_codes(codes)
    assert out.shape == (2, 1, 10, 6)
    torch.testing.assert_close(out, manual, rtol=0, atol=0)


def test_nearest_code_is_max_cosine_similarity():
    torch.manual_seed(1)
    quantizer = VectorQuantizer(tiny_config(codebook_size=200, codebook_dim=8))
    with torch.no_grad():
        quantizer.embedding.weight.normal_()  # not normalised: the search must do it
    z = torch.randn(500, 8) * 3
    cosine = F.normalize(z, dim=-1) @ F.normalize(quantizer.embedding.weight, dim=-1).t()
    assert torch.equal(quantizer.nearest(z), cosine.argmax(dim=1))


def test_to_pixels_truncates_like_llamagen():
    x = torch.tensor([-2.0, -1.0, -1.004, 0.0, 0.5, 0.99, 1.0, 3.0, 0.2, -0.2])
    expected = torch.tensor([0, 0, 0, 128, 191, 254, 255, 255, 153, 102], dtype=torch.uint8)
    # 127.5 * 0.99 + 128 = 254.225 -> 254; 0.5 -> 191.75 -> 191; 0.2 -> 153.5 -> 153.
    image = x.view(1, 1, 1, -1).expand(1, 3, 1, -1)
    pixels = to_pixels(image)
    assert pixels.shape == (1, 1, 10, 3) and pixels.dtype == torch.uint8
    assert torch.equal(pixels[0, 0, :, 0], expected)
    half = image.to(torch.bfloat16)
    assert torch.equal(to_pixels(half), to_pixels(half.float()))


def test_pixels_roundtrip():
    p = torch.arange(256, dtype=torch.uint8).view(1, 16, 16, 1)
    x = from_pixels(p)
    assert x.shape == (1, 1, 16, 16)
    assert x.min() == -1 and x.max() == 1
    assert torch.equal(to_pixels(x), p)
    halves = torch.tensor([[[[0.0, 0.5, 1.0]]]])
    expected = torch.tensor([[[[-1.0, 0.0, 1.0]]]])
    assert torch.equal(from_pixels(halves, channels_last=False), expected)


def test_training_forward_losses_and_straight_through_gradients():
    model = tiny_model().train()
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    recon, losses = model(x)
    assert recon.shape == x.shape
    assert set(losses) == {"codebook", "commitment"}
    assert all(torch.isfinite(v) for v in losses.values())
    F.mse_loss(recon, x).backward(retain_graph=True)
    # Only the straight-through path can carry the reconstruction loss to the encoder.
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    assert model.quant_conv.weight.grad.abs().sum() > 0
    model.zero_grad()
    sum(losses.values()).backward()
    assert model.quantize.embedding.weight.grad.abs().sum() > 0
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0


def test_channels_last_fast_path_matches():
    model = tiny_model()
    codes = torch.randint(0, 64, (2, 8, 8))
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        ref_img, ref_codes = model.decode_codes(codes), model.encode(x)[1]
        model.to(memory_format=torch.channels_last)
        weight = model.decoder.conv_in.weight
        assert weight.is_contiguous(memory_format=torch.channels_last)
        assert not weight.is_contiguous()
        img, enc_codes = model.decode_codes(codes), model.encode(x)[1]
    torch.testing.assert_close(img, ref_img, rtol=1e-4, atol=1e-5)
    assert torch.equal(enc_codes, ref_codes)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs(dtype):
    model = tiny_model()
    codes = torch.randint(0, 64, (1, 4, 4))
    with torch.no_grad():
        full = model.decode_codes(codes)
        model = model.to(dtype)
        out = model.decode_codes(codes)
        _, enc = model.encode(out)
    assert out.dtype == dtype and torch.isfinite(out.float()).all()
    # Half precision rounds, but decodes the same image: within 5 % of its range.
    assert (out.float() - full).abs().max() <= 0.05 * full.abs().max()
    assert enc.shape == (1, 4, 4) and enc.dtype == torch.int64
