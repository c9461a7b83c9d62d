import argparse
import collections
import hashlib
import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import tiny_vq_config
from safetensors.torch import load_file, save_file

from parcli.config import GPTConfig
from parcli.errors import SettingError
from parcli.io.checkpoints import (
    build_meta,
    expected_shapes,
    load_transformer,
    load_vq,
    read_checkpoint,
    read_config,
    save_checkpoint,
    validate,
)
from parcli.io.convert import convert, detect_kind, infer_gpt_config, infer_vq_config
from parcli.io.files import OutputError
from parcli.io.tensors import WeightsError
from parcli.model import Transformer
from parcli.vq import VQConfig, VQModel

TINY = dict(n_layer=2, n_head=4, dim=64, vocab_size=32, num_classes=10)


def gpt_state(regions: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = Transformer(GPTConfig(regions=regions, **TINY))
    model.init_weights(std=0.3, zero_output=False)
    return {k: v.clone() for k, v in model.state_dict().items()}


def small_vq_config(norm_groups: int = 32) -> VQConfig:
    return tiny_vq_config(codebook_size=16, z_channels=8, ch=32, norm_groups=norm_groups)


def vq_state(norm_groups: int = 32) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return {k: v.clone() for k, v in VQModel(small_vq_config(norm_groups)).state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


def read_official(src: Path, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """The weights `convert` reads from a published file, as it writes them."""
    dst = src.parent / "read.safetensors"
    convert(src, dst, heads=4, use_ema=use_ema)
    return read_checkpoint(dst)[0]


def prefixed(state, prefix):
    return {prefix + k: v for k, v in state.items()}


def with_junk(state):
    junk = dict(state)
    junk["freqs_cis"] = torch.randn(8, 8, 2)
    junk["layers.0.attention.kv_cache.k_cache"] = torch.zeros(1, 4, 8, 16)
    junk["layers.1.attention.kv_cache.v_cache"] = torch.zeros(1, 4, 8, 16)
    junk["causal_mask"] = torch.ones(8, 8, dtype=torch.bool)
    return junk


LAYOUTS = {
    "flat": (lambda s: s, "flat"),
    "model": (
        lambda s: {
            "model": s,
            "args": argparse.Namespace(gpt_model="GPT-B", image_size=384, lr=1e-4, mixed=None),
            "steps": 5,
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
        },
        "model",
    ),
    "module": (lambda s: {"module": s}, "module"),
    "state_dict": (lambda s: {"state_dict": s}, "state_dict"),
    "orig_mod": (lambda s: {"model": prefixed(s, "_orig_mod.")}, "model"),
    "module_prefix": (lambda s: prefixed(s, "module."), "flat"),
    "both_prefixes": (lambda s: prefixed(s, "module._orig_mod."), "flat"),
    "both_prefixes_swapped": (lambda s: {"model": prefixed(s, "_orig_mod.module.")}, "model"),
    "junk": (lambda s: {"model": with_junk(s)}, "model"),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("regions", [1, 4, 16])
def test_convert_round_trip(tmp_path, layout, regions):
    state = gpt_state(regions)
    wrap, expected_layout = LAYOUTS[layout]
    src = tmp_path / "ckpt.pt"
    torch.save(wrap(state), src)
    dst = tmp_path / "ckpt.safetensors"

    meta = convert(src, dst, heads=4)

    loaded, kind, config, read_meta = read_checkpoint(dst)
    assert kind == "gpt"
    assert config == GPTConfig(regions=regions, grid=(24, 24), **TINY)
    assert_same(loaded, state)
    assert read_meta == meta
    assert meta["source_layout"] == expected_layout


def test_legacy_pickle_format(tmp_path):
    state = gpt_state(4)
    src = tmp_path / "legacy.pt"
    torch.save({"model": state}, src, _use_new_zipfile_serialization=False)
    assert_same(read_official(src), state)


def test_ema(tmp_path):
    state, ema = gpt_state(seed=0), gpt_state(seed=1)
    src = tmp_path / "ckpt.pt"
    torch.save({"model": state, "ema": prefixed(ema, "module.")}, src)
    assert_same(read_official(src), state)
    assert_same(read_official(src, use_ema=True), ema)
    dst = tmp_path / "ema.safetensors"
    assert convert(src, dst, heads=4, use_ema=True)["source_layout"] == "ema"
    assert_same(read_checkpoint(dst)[0], ema)

    torch.save({"model": state}, src)
    with pytest.raises(WeightsError, match="no 'ema' weights"):
        read_official(src, use_ema=True)


def test_metadata(tmp_path):
    src = tmp_path / "PAR-tiny-4x.pt"
    torch.save({"model": gpt_state(4)}, src)
    dst = tmp_path / "out.safetensors"
    meta = convert(src, dst, heads=4, grid=16, extra_metadata={"note": "hi", "epochs": 3})
    assert meta == read_checkpoint(dst)[3]
    assert all(isinstance(v, str) for v in meta.values())
    assert meta["format"] == "parcli"
    assert meta["format_version"] == "1"
    assert meta["kind"] == "gpt"
    assert meta["arch"] == "custom-2x64"
    assert meta["regions"] == "4"
    assert meta["grid"] == "16x16"
    assert meta["num_classes"] == "10"
    assert meta["vocab_size"] == "32"
    assert meta["dtype"] == "fp32"
    assert meta["source_file"] == "PAR-tiny-4x.pt"
    assert meta["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert meta["note"] == "hi"
    assert meta["epochs"] == "3"
    assert GPTConfig.from_dict(json.loads(meta["config"])) == GPTConfig(
        regions=4, grid=(16, 16), **TINY
    )
    # The file is plain safetensors to any other reader.
    assert_same(load_file(dst), gpt_state(4))


@pytest.mark.parametrize(
    ("dtype", "torch_dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)]
)
def test_dtype_conversion(tmp_path, dtype, torch_dtype):
    state = gpt_state(4)
    state["counter"] = torch.arange(3)
    src = tmp_path / "ckpt.pt"
    torch.save(state, src)
    dst = tmp_path / "out.safetensors"
    with pytest.raises(WeightsError, match=r"1 unexpected \(counter\)"):
        convert(src, dst, heads=4, dtype=dtype)
    del state["counter"]

    torch.save(state, src)
    assert convert(src, dst, heads=4, dtype=dtype)["dtype"] == dtype
    loaded = read_checkpoint(dst)[0]
    assert_same(loaded, {k: v.to(torch_dtype) for k, v in state.items()})

    # Loading can cast again; only floating tensors change.
    back = read_checkpoint(dst, dtype="fp32")[0]
    assert all(t.dtype == torch.float32 for t in back.values())


def test_save_keeps_non_float_tensors(tmp_path):
    state = {"a": torch.randn(3, 5), "b": torch.arange(7), "c": torch.tensor([True, False])}
    state["d"] = torch.randn(4, 6).t()  # not contiguous
    state["e"] = torch.randn(10)[2:5]  # a view into a larger storage
    cfg = GPTConfig(**TINY)
    path = tmp_path / "x.safetensors"
    save_checkpoint(path, state, "gpt", cfg, dtype="bf16")
    loaded = load_file(path)
    assert loaded["b"].dtype == torch.int64 and torch.equal(loaded["b"], state["b"])
    assert loaded["c"].dtype == torch.bool and torch.equal(loaded["c"], state["c"])
    assert torch.equal(loaded["d"], state["d"].bfloat16())
    assert torch.equal(loaded["e"], state["e"].bfloat16())


def test_load_transformer(tmp_path):
    state = gpt_state(4)
    src = tmp_path / "ckpt.pt"
    torch.save({"model": state}, src)
    dst = tmp_path / "out.safetensors"
    convert(src, dst, heads=4, grid=8)

    model, meta = load_transformer(dst)
    assert meta["regions"] == "4"
    assert not model.training
    assert model.cfg == GPTConfig(regions=4, grid=(8, 8), **TINY)
    assert_same(model.state_dict(), state)

    half, _ = load_transformer(dst, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())

    with pytest.raises(WeightsError, match="not a VQ tokenizer"):
        load_vq(dst)


def test_vq_round_trip(tmp_path):
    state = vq_state()
    src = tmp_path / "vq.pt"
    official = dict(state)
    official["quantize.codebook_used"] = torch.zeros(65536)
    torch.save({"model": prefixed(official, "module."), "steps": 3}, src)
    assert detect_kind(read_official(src)) == "vq"
    assert "quantize.codebook_used" not in read_official(src)

    dst = tmp_path / "vq.safetensors"
    meta = convert(src, dst, dtype="bf16")
    assert meta["kind"] == "vq"
    assert meta["arch"] == "VQ-2"
    assert meta["vocab_size"] == "16"
    assert VQConfig.from_dict(json.loads(meta["config"])) == small_vq_config()

    model, meta2 = load_vq(dst)
    assert meta2 == meta
    assert not model.training
    assert_same(model.state_dict(), {k: v.bfloat16() for k, v in state.items()})
    codes = torch.randint(0, 16, (1, 2, 2))
    assert model.float().decode_codes(codes).shape == (1, 3, 4, 4)

    with pytest.raises(WeightsError, match="not a transformer"):
        load_transformer(dst)


def test_vq_norm_groups():
    state = vq_state(norm_groups=8)
    assert infer_vq_config(state) == small_vq_config(32)  # LlamaGen's group count, always


def test_llamagen_ds16_shapes_infer_on_meta():
    cfg = VQConfig()
    state = build_meta("vq", cfg).state_dict()
    assert detect_kind(state) == "vq"
    assert infer_vq_config(state) == cfg


@pytest.mark.parametrize(
    ("preset", "regions"), [("GPT-B", 1), ("GPT-XL", 4), ("GPT-XXL", 4), ("GPT-3B", 16)]
)
def test_preset_inferred_on_meta(preset, regions):
    cfg = GPTConfig.preset(preset, regions=regions)
    state = build_meta("gpt", cfg).state_dict()
    assert all(t.is_meta for t in state.values())
    assert detect_kind(state) == "gpt"
    assert infer_gpt_config(state) == cfg
    # Shapes alone work too.
    assert infer_gpt_config({k: tuple(v.shape) for k, v in state.items()}) == cfg
    validate(state, expected_shapes("gpt", cfg))


def test_infer_errors():
    state = gpt_state()
    with pytest.raises(WeightsError, match="cannot tell the attention heads") as info:
        infer_gpt_config(state)
    assert info.value.setting == "heads"
    assert infer_gpt_config(state, heads=8).n_head == 8
    with pytest.raises(WeightsError, match="another number of heads") as info:
        infer_gpt_config(state, heads=5)
    assert info.value.setting == "heads"

    gqa = dict(state)
    gqa["layers.0.attention.wqkv.weight"] = torch.zeros(64 + 2 * 32, 64)
    with pytest.raises(WeightsError, match="grouped-query attention"):
        infer_gpt_config(gqa, heads=4)

    odd = gpt_state(4)
    odd["spe_tok_embeddings.special_embeddings.weight"] = torch.zeros(7, 64)
    with pytest.raises(WeightsError, match="7 rows"):
        infer_gpt_config(odd, heads=4)

    untied = dict(state)
    untied["output.weight"] = torch.zeros(33, 64)
    with pytest.raises(WeightsError, match="inconsistent"):
        infer_gpt_config(untied, heads=4)

    with pytest.raises(WeightsError, match="cannot be split into 16 regions") as info:
        infer_gpt_config(gpt_state(16), heads=4, grid=(6, 6))
    assert info.value.setting == "grid"

    with pytest.raises(WeightsError, match="neither"):
        detect_kind({"foo.weight": torch.zeros(1)})


def test_validate_one_message():
    cfg = GPTConfig(**TINY)
    state = gpt_state()
    state["output.weight"] = torch.zeros(33, 64)
    del state["norm.weight"]
    del state["layers.1.ffn_norm.weight"]
    state["bogus.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError) as info:
        validate(state, expected_shapes("gpt", cfg))
    message = str(info.value)
    assert "\n" not in message
    assert "2 missing (layers.1.ffn_norm.weight, norm.weight)" in message
    assert "1 unexpected (bogus.weight)" in message
    assert "1 wrong shape (output.weight (33, 64) != (32, 64))" in message


def test_validate_lists_first_few():
    expected = {f"k{i}": (1,) for i in range(10)}
    with pytest.raises(WeightsError, match=r"10 missing \(k0, k1, k2, \.\.\.\)"):
        validate({}, expected)
    validate({k: torch.zeros(1) for k in expected}, expected)


def test_convert_rejects_mismatched_layer(tmp_path):
    state = gpt_state()
    state["layers.1.attention.wo.weight"] = torch.zeros(64, 32)
    src = tmp_path / "bad.pt"
    torch.save(state, src)
    with pytest.raises(WeightsError, match=r"wrong shape \(layers\.1\.attention\.wo\.weight"):
        convert(src, tmp_path / "out.safetensors", heads=4)
    assert not (tmp_path / "out.safetensors").exists()


class Exploit:
    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Dict(collections.OrderedDict):
    def __setitem__(self, key, value):
        with open(self.marker, "w") as handle:
            handle.write("ran")
        super().__setitem__(key, value)


@pytest.mark.parametrize("legacy", [False, True])
def test_refuses_code_execution(tmp_path, legacy):
    marker = tmp_path / "PWNED"
    exploit = Exploit()
    exploit.marker = str(marker)
    src = tmp_path / "evil.pt"
    torch.save(
        {"model": gpt_state(), "args": exploit}, src, _use_new_zipfile_serialization=not legacy
    )
    with pytest.raises(WeightsError, match="arbitrary-code unpickling") as info:
        read_official(src)
    assert "1 disallowed global(s) (posix.system)" in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(WeightsError, match="will not be loaded"):
        convert(src, tmp_path / "out.safetensors", heads=4)
    assert not marker.exists()


def test_refuses_custom_dict_subclass(tmp_path):
    marker = tmp_path / "RAN"
    Dict.marker = str(marker)
    custom = Dict(gpt_state())
    marker.unlink()
    src = tmp_path / "custom.pt"
    torch.save(custom, src)
    with pytest.raises(WeightsError, match=r"test_weights\.Dict.*arbitrary-code"):
        read_official(src)
    assert not marker.exists()


def test_refuses_module_pickle(tmp_path):
    src = tmp_path / "module.pt"
    torch.save(Transformer(GPTConfig(**TINY)), src)
    with pytest.raises(WeightsError, match="arbitrary-code unpickling"):
        read_official(src)


def test_bad_source_files(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"model": gpt_state()}, good)
    data = good.read_bytes()
    cases = {
        "trunc.pt": (data[: len(data) // 2], "truncated or corrupt"),
        "tail.pt": (data[:-10], "truncated or corrupt"),
        "empty.pt": (b"", "is empty"),
        "text.pt": (b"hello, I am not a checkpoint\n", "not a PyTorch checkpoint"),
        "lfs.pt": (b"version https://git-lfs.github.com/spec/v1\noid sha256:00\n", "LFS pointer"),
    }
    for name, (content, match) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(WeightsError, match=match) as info:
            read_official(path)
        assert name in str(info.value)
        assert "\n" not in str(info.value)

    legacy = tmp_path / "legacy.pt"
    torch.save({"model": gpt_state()}, legacy, _use_new_zipfile_serialization=False)
    (tmp_path / "legacy_trunc.pt").write_bytes(legacy.read_bytes()[:300])
    with pytest.raises(WeightsError, match="legacy_trunc.pt is truncated or corrupt"):
        read_official(tmp_path / "legacy_trunc.pt")

    with pytest.raises(WeightsError, match="does not exist"):
        read_official(tmp_path / "missing.pt")
    with pytest.raises(WeightsError, match="not a file"):
        read_official(tmp_path)

    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="not a state dict"):
        read_official(tmp_path / "list.pt")
    torch.save({"epoch": 3, "best": 0.5}, tmp_path / "notes.pt")
    with pytest.raises(WeightsError, match="has no weights"):
        read_official(tmp_path / "notes.pt")


def test_plain_safetensors_source(tmp_path):
    state = gpt_state(4)
    src = tmp_path / "hf.safetensors"
    save_file(prefixed(state, "_orig_mod."), src)
    convert(src, tmp_path / "out.safetensors", heads=4)
    assert_same(read_checkpoint(tmp_path / "out.safetensors")[0], state)


def test_read_checkpoint_errors(tmp_path):
    pickle_file = tmp_path / "ckpt.pt"
    torch.save(gpt_state(), pickle_file)
    plain = tmp_path / "plain.safetensors"
    save_file(gpt_state(), plain)
    good = tmp_path / "good.safetensors"
    convert(pickle_file, good, heads=4)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    text = tmp_path / "text.safetensors"
    text.write_text("not weights at all\n")
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")

    cases = [
        (pickle_file, "ckpt.pt is a PyTorch pickle, not a parcli checkpoint; convert it with"),
        (plain, "plain.safetensors is not a parcli checkpoint; convert it with `par convert"),
        (truncated, "truncated.safetensors is not a readable safetensors file"),
        (text, "text.safetensors is not a readable safetensors file"),
        (empty, "empty.safetensors is empty"),
        (tmp_path / "nope.safetensors", "nope.safetensors does not exist"),
    ]
    for path, message in cases:
        for reader in (read_checkpoint, read_config, load_transformer):
            with pytest.raises(WeightsError) as info:
                reader(path)
            assert message in str(info.value)
            assert "\n" not in str(info.value)


def rewrite_metadata(path, **changes):
    """Rewrite a safetensors header in place (same tensors), changing metadata fields."""
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    header["__metadata__"].update(changes)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + size :])


def test_checkpoint_not_matching_its_config(tmp_path):
    src = tmp_path / "ckpt.pt"
    torch.save(gpt_state(), src)
    dst = tmp_path / "out.safetensors"
    convert(src, dst, heads=4)
    config = GPTConfig(regions=4, **TINY).to_dict()
    rewrite_metadata(dst, config=json.dumps(config))
    with pytest.raises(WeightsError, match=r"1 missing \(spe_tok_embeddings"):
        load_transformer(dst)
    rewrite_metadata(dst, format_version="2")
    with pytest.raises(WeightsError, match="upgrade parcli"):
        read_checkpoint(dst)
    rewrite_metadata(dst, format_version="1", config="{not json")
    with pytest.raises(WeightsError, match="unreadable config"):
        read_checkpoint(dst)


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    state = gpt_state()
    cfg = GPTConfig(**TINY)
    path = tmp_path / "out.safetensors"
    calls = []
    real = torch.Tensor.contiguous

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "contiguous", failing)
    with pytest.raises(OutputError, match="cannot write .*out.safetensors: disk full"):
        save_checkpoint(path, state, "gpt", cfg)
    assert list(tmp_path.iterdir()) == []

    # An existing file survives a failed rewrite untouched.
    monkeypatch.setattr(torch.Tensor, "contiguous", real)
    save_checkpoint(path, state, "gpt", cfg)
    before = path.read_bytes()
    calls.clear()
    monkeypatch.setattr(torch.Tensor, "contiguous", failing)
    with pytest.raises(OutputError):
        save_checkpoint(path, gpt_state(seed=3), "gpt", cfg)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.safetensors"]

    # Interrupts clean up too, and propagate.
    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.Tensor, "contiguous", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "other.safetensors", state, "gpt", cfg)
    assert [p.name for p in tmp_path.iterdir()] == ["out.safetensors"]


def test_convert_paths(tmp_path):
    src = tmp_path / "ckpt.pt"
    torch.save(gpt_state(), src)
    with pytest.raises(WeightsError, match="refusing to overwrite the source"):
        convert(src, src, heads=4)
    link = tmp_path / "link.pt"
    link.symlink_to(src)
    with pytest.raises(WeightsError, match="refusing to overwrite the source"):
        convert(src, link, heads=4)
    with pytest.raises(WeightsError, match="does not exist; create it first"):
        convert(src, tmp_path / "no" / "out.safetensors", heads=4)
    with pytest.raises(SettingError, match="unknown dtype 'int4'; use keep, fp32"):
        convert(src, tmp_path / "out.safetensors", heads=4, dtype="int4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt", "link.pt"]


def test_official_read_is_weights_only_and_memory_mapped(tmp_path, monkeypatch):
    state = gpt_state()
    src = tmp_path / "ckpt.pt"
    torch.save(state, src)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    assert_same(read_official(src), state)
    assert calls == [dict(map_location="cpu", weights_only=True, mmap=True)]

    calls.clear()
    torch.save(state, src, _use_new_zipfile_serialization=False)
    assert_same(read_official(src), state)
    assert calls == [dict(map_location="cpu", weights_only=True)]  # legacy: never mmap


def test_unsafe_message_lists_first_few(tmp_path):
    src = tmp_path / "module.pt"
    torch.save(Transformer(GPTConfig(**TINY)), src)
    with pytest.raises(WeightsError) as info:
        read_official(src)
    message = str(info.value)
    assert "disallowed global(s) (" in message and ", ...)" in message
    assert len(message.replace(str(src), "")) < 300


def test_corrupt_pickle_inside_zip(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"model": gpt_state()}, good)
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(bad, "w") as target:
        for name in source.namelist():
            data = source.read(name)
            if name.endswith("data.pkl"):
                data = data[:5] + b"\xff" + data[6:]
            target.writestr(name, data)
    with pytest.raises(WeightsError) as info:
        read_official(bad)
    message = str(info.value)
    assert "bad.pt is truncated or corrupt (Unsupported operand 255)" in message
    assert "weights_only" not in message


def test_save_refuses_unsupported_dtype(tmp_path):
    state = {"a": torch.zeros(2, dtype=torch.complex64)}
    with pytest.raises(WeightsError, match="'a' has dtype torch.complex64"):
        save_checkpoint(tmp_path / "x.safetensors", state, "gpt", GPTConfig(**TINY))
    assert list(tmp_path.iterdir()) == []


def test_building_on_meta_stays_cheap():
    # Meta kernels of some init ops import torch._dynamo (seconds); build_meta skips them.
    code = (
        "import sys\n"
        "from parcli.config import GPTConfig\n"
        "from parcli.vq import VQConfig\n"
        "from parcli.io.checkpoints import build_meta\n"
        "before = 'torch._dynamo' in sys.modules\n"
        "build_meta('gpt', GPTConfig.preset('GPT-3B', regions=16))\n"
        "build_meta('vq', VQConfig())\n"
        "assert before or 'torch._dynamo' not in sys.modules\n"
    )
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=root)
