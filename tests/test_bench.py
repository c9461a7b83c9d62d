import torch
from conftest import TINY_VQ, tiny_model

from parcli.options import RunOptions
from parcli.pipeline import Pipeline
from parcli.quality.bench import weight_bytes
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
    assert pipe.packed and weight_bytes(pipe) == before
    assert not any(isinstance(m, torch.nn.Linear) for m in pipe.model.modules())


def test_random_pipelines_share_one_weight_set():
    from parcli.config import GPTConfig
    from parcli.quality.bench import random_pipelines

    cfg = GPTConfig(n_layer=2, n_head=4, dim=64, vocab_size=32, grid=(8, 8))
    pipes = random_pipelines(cfg, [1, 4, 16], RunOptions(), TINY_VQ)
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


def test_summary_rows_say_speed_ups_and_noise():
    from parcli.quality.bench import OURS, PLAIN, Case, summarise

    ours = {n: Pipeline(tiny_model(regions=n), VQModel(TINY_VQ).eval()) for n in (1, 4)}
    plain = {n: pipe.plain_engine_twin() for n, pipe in ours.items()}
    cases = [
        Case(1, 2, OURS, gen_seconds=[2.0, 2.1, 2.0], decode_seconds=[0.5, 0.5, 0.5]),
        Case(1, 2, PLAIN, gen_seconds=[3.0, 3.0, 3.0], decode_seconds=[0.6, 0.6, 0.6]),
        Case(4, 2, OURS, gen_seconds=[0.5, 0.6, 0.45], decode_seconds=[0.5, 0.5, 0.5]),
        Case(4, 2, PLAIN, gen_seconds=[1.0, 1.0, 1.0], decode_seconds=[0.6, 0.6, 0.6]),
    ]
    rows = summarise(cases, {OURS: ours, PLAIN: plain})
    by = {(r.regions, r.engine): r for r in rows}
    one, four = by[1, OURS], by[4, OURS]
    assert one.gen_s_per_image == 1.0 and one.gen_s_per_image_max == 1.05
    assert one.total_s_per_image == 1.25 and one.images_per_s == 2 / 2.5
    assert one.speedup_vs_1 == 1.0 and four.speedup_vs_1 == 4.0
    assert one.speedup_vs_plain == 1.5 and four.speedup_vs_plain == 2.0
    assert by[4, PLAIN].speedup_vs_plain is None
    # Spread (max - min) / median: 0.1 / 2.0 is quiet, 0.15 / 0.5 is noisy.
    assert not one.noisy and four.noisy and not by[4, PLAIN].noisy
    assert four.passes == 19


def test_each_case_warms_up_just_before_its_first_measurement():
    from parcli.quality.bench import Case, schedule

    cases = [Case(1, 1, "ours"), Case(4, 1, "ours")]
    rounds = [(r, c.regions) for r, c in schedule(cases, warmup=2, repeats=3)]
    first_measures = [(0, 1), (1, 1), (2, 1), (0, 4), (1, 4), (2, 4)]
    assert rounds == first_measures + [(3, 1), (3, 4), (4, 1), (4, 4)]
    assert [(r, c.regions) for r, c in schedule(cases, warmup=0, repeats=1)] == [(0, 1), (0, 4)]
    assert schedule(cases, warmup=1, repeats=0) == [(0, cases[0]), (0, cases[1])]
