"""Whether the per-machine int8 product choice (widen to bf16 past a row count timed on this
machine) is worth keeping: GPT-B int8 with the chosen products against the fused product alone.
Usage: python measure/int8_choice.py REGIONS BATCH"""

import sys

from parcli.config import GPTConfig
from parcli.engine.quantize import int8_linears, int8_products
from parcli.engine.threads import use_threads
from parcli.options import RunOptions
from parcli.quality import OURS
from parcli.quality.bench import BenchSettings, random_pipelines, run_bench
from parcli.sampling import SamplingConfig

regions, batch = int(sys.argv[1]), int(sys.argv[2])
cfg = GPTConfig.preset("GPT-B", grid=(24, 24))
opts = RunOptions(quantize="int8")
chosen = random_pipelines(cfg, [regions], opts)
fused = random_pipelines(cfg, [regions], opts)
use_threads(chosen[regions].model)
for pipes in (chosen, fused):
    pipes[regions].runner(2 * batch)
for linear in int8_linears(fused[regions].model):
    linear.widen_from_rows = None
print(
    "chosen:", int8_products(chosen[regions].model), "| other:", int8_products(fused[regions].model)
)
settings = BenchSettings((batch,), SamplingConfig(1.5), warmup=1, repeats=3, decode=False)
rows = run_bench({OURS: chosen, "fused": fused}, settings)
for r in rows:
    print(r.engine, r.regions, r.batch, f"{r.gen_s_per_image:.3f} s/img", r.speedup_vs_first)
