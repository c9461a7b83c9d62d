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
