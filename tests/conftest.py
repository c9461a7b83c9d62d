import os

import pytest
import torch

from parcli.config import GPTConfig
from parcli.io.catalogue import use_catalogue
from parcli.io.checkpoints import save_checkpoint
from parcli.model import Transformer
from parcli.vq import VQConfig, VQModel

# The suite's models are tiny: one thread is as fast, and keeps the suite quick when another
# process keeps the machine busy (PARCLI_TEST_THREADS to try others).
torch.set_num_threads(int(os.environ.get("PARCLI_TEST_THREADS", "1")))

# A VQ small enough to build in milliseconds; codebook 32 matches tiny_config's vocabulary.
TINY_VQ = VQConfig(
    codebook_size=32,
    codebook_dim=4,
    z_channels=16,
    ch=16,
    ch_mult=(1, 2),
    num_res_blocks=1,
    norm_groups=8,
)


@pytest.fixture(autouse=True)
def _packaged_catalogue():
    """A command run in-process leaves its --catalogue chosen for the process, as the CLI means
    it to; the next test starts from the packaged one."""
    yield
    use_catalogue(None)


def tiny_vq_config(**overrides) -> VQConfig:
    """TINY_VQ with some fields changed."""
    return VQConfig(**{**TINY_VQ.to_dict(), **overrides})


def tiny_config(regions: int = 1, grid=(8, 8), **overrides) -> GPTConfig:
    base = dict(n_layer=2, n_head=4, dim=64, vocab_size=32, num_classes=10)
    base.update(overrides)
    return GPTConfig(grid=grid, regions=regions, **base)


def tiny_model(regions: int = 1, grid=(8, 8), seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(tiny_config(regions, grid, **overrides))
    model.init_weights(std=0.3, zero_output=False)
    return model.eval()


@pytest.fixture
def make_model():
    return tiny_model


@pytest.fixture(scope="session")
def files(tmp_path_factory):
    """Tiny random checkpoints for end-to-end runs of `par`: gpt1, gpt4, gpt16, gpt4video, vq."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    vq = VQModel(TINY_VQ)
    save_checkpoint(root / "vq.safetensors", vq.state_dict(), "vq", TINY_VQ)
    paths = {"vq": root / "vq.safetensors"}
    for n, grid in ((1, (8, 8)), (4, (8, 8)), (16, (8, 8)), (4, (2, 8, 8))):
        model = tiny_model(regions=n, grid=grid)
        name = f"gpt{n}" + ("video" if len(grid) == 3 else "")
        save_checkpoint(root / f"{name}.safetensors", model.state_dict(), "gpt", model.cfg)
        paths[name] = root / f"{name}.safetensors"
    small = tiny_vq_config(codebook_size=16)
    save_checkpoint(root / "vq16.safetensors", VQModel(small).state_dict(), "vq", small)
    paths["vq16"] = root / "vq16.safetensors"
    return paths


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's parcli cache: each gets a fresh one."""
    monkeypatch.setenv("PARCLI_HOME", str(tmp_path_factory.mktemp("parcli-home")))
