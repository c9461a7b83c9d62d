import torch
from conftest import TINY_VQ, tiny_model

from parcli.bench import weight_bytes
from parcli.pipeline import Pipeline
from parcli.vq import VQModel


def test_weight_bytes_count_what_a_pass_reads():
    pipe = Pipeline(tiny_model(regions=4), VQModel(TINY_VQ).eval(), plain_engine=True)
    cfg = pipe.model.cfg
    per_layer = 4 * cfg.dim * cfg.dim + 3 * cfg.dim * cfg.ffn_hidden + 2 * cfg.dim
    expected = 4 * (cfg.n_layer * per_layer + cfg.dim + cfg.vocab_size * cfg.dim)
    assert weight_bytes(pipe) == expected  # embedding tables are gathered, not read whole


def test_weight_bytes_count_packed_projections_once():
    pipe = Pipeline(tiny_model(regions=4), VQModel(TINY_VQ).eval())
    before = weight_bytes(pipe)
    pipe.runner(sequences=8)
    # MKL keeps the plain weight for other row counts; a pass reads only one of the two.
    assert pipe.packed and weight_bytes(pipe) == before
    assert not any(isinstance(m, torch.nn.Linear) for m in pipe.model.modules())


def test_random_pipelines_share_one_weight_set():
    from parcli.bench import random_pipelines
    from parcli.config import GPTConfig

    cfg = GPTConfig(n_layer=2, n_head=4, dim=64, vocab_size=32, grid=(8, 8))
    pipes = random_pipelines(cfg, [1, 4, 16], torch.device("cpu"), torch.float32, TINY_VQ)
    assert [p.model.cfg.regions for p in pipes.values()] == [1, 4, 16]
    weights = [p.model.layers[1].attention.wqkv.weight for p in pipes.values()]
    assert len({w.data_ptr() for w in weights}) == 1  # shared, not copied
    rows16 = pipes[16].model.spe_tok_embeddings.special_embeddings.weight
    rows4 = pipes[4].model.spe_tok_embeddings.special_embeddings.weight
    assert rows16.shape == (15, 64) and torch.equal(rows4, rows16[:3])
    assert rows4.data_ptr() == rows16.data_ptr()
    assert all(p.vq is pipes[1].vq for p in pipes.values())
    assert pipes[4].model.output.weight.abs().sum() > 0  # a random model worth sampling
    tokens = pipes[4].generate([1, 2], pipes[4].sampling(), seed=0, batch_size=2)
    assert tokens.shape == (2, 8, 8)
