#!/usr/bin/env bash
# The GPU check, for a machine with one CUDA GPU: the tests only a GPU can run, then GPT-3B's
# speed with random weights (graphed, against the plain engine), GPT-B's in bf16, fp32 and int8
# side by side, the VQ decoder's layouts, the int8 product against bf16 and against gpt-fast's
# compiled form, the reference's attention kernel against the fused ones, and last GPT-3B
# compiled. Every step has its own time limit, so that the whole
# stays within 6 minutes on one H100, compilation included; nothing is installed. Everything it
# prints and writes lands in DIR: gpu-check.log (the summary), one log per step, the bench JSON
# files.
set -uo pipefail
DIR=${1:?usage: measure/gpu_check.sh DIR}
mkdir -p "$DIR"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
LOG="$DIR/gpu-check.log"

step() {  # name, time limit in seconds, command...
  local name=$1 limit=$2 started rc
  shift 2
  echo "== $name (at most ${limit} s): $*" | tee -a "$LOG"
  started=$(date +%s)
  timeout "$limit" "$@" >"$DIR/$name.log" 2>&1
  rc=$?
  echo "   exit $rc after $(($(date +%s) - started)) s (124: ran out of time)" | tee -a "$LOG"
  tail -n 30 "$DIR/$name.log" | tee -a "$LOG"
}

nvidia-smi >"$DIR/nvidia-smi.txt" 2>&1
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" \
  2>&1 | tee -a "$LOG"
# -v: a line per test as it ends, so that a step cut short still says which passed.
step tests 75 "$PY" -m pytest -v -p no:cacheprovider -m cuda tests/test_cuda.py
# Without compiling first: these steps cannot run long, so their figures are certain.
step bench-3b-vs-plain 70 "$PY" -m parcli bench --arch GPT-3B --regions 1,4,16 \
  --batch-size 1,32 --repeats 1 --warmup 1 --no-compile --baseline -v \
  --json "$DIR/bench-3b-vs-plain.json"
step bench-b-dtypes 45 "$PY" -m parcli bench --arch GPT-B --regions 1,4,16 --batch-size 1 \
  --repeats 1 --warmup 1 --no-compile --dtype bf16,fp32 --quantize int8 --no-decode -v \
  --json "$DIR/bench-b-dtypes.json"
# Speculative decoding's cost side at GPT-3B's shapes: query tokens and seconds per pass (random
# weights accept few drafts, so its passes per image say little here; the digits models do).
step bench-3b-sjd 20 "$PY" -m parcli bench --arch GPT-3B --regions 1,4,16 --batch-size 1 \
  --repeats 1 --warmup 1 --no-compile --strategy par,sjd --no-decode -v \
  --json "$DIR/bench-3b-sjd.json"
step vq-layouts 20 "$PY" measure/vq_cuda_layouts.py 4
step int8-products 30 "$PY" measure/int8_products.py GPT-3B 512
# The price of the reference's attention kernel (its tokens in bf16) for the default engine.
step attention-kernels 15 "$PY" measure/attention_kernels.py GPT-3B 5
# Last, the default engine (compiled): about ten compiles of GPT-3B, which may not all fit. The
# bench logs each case's seconds as it ends (a warm-up's include its compiling), and rewrites its
# JSON as each case is measured, so a step cut short still says how far compiling got and what
# the compiled cases measured.
step bench-3b 85 "$PY" -m parcli bench --arch GPT-3B --regions 1,4,16 --batch-size 1,32 \
  --repeats 1 --warmup 1 -v --json "$DIR/bench-3b.json"
# Markdown tables of every bench's JSON for docs/benchmarks.md, and the targets (JSON only: instant).
"$PY" measure/bench_tables.py "$DIR"/bench-*.json >"$DIR/tables.md" 2>&1
grep "^\* target" "$DIR/tables.md" | tee -a "$LOG"
echo "== done; figures in $DIR (tables: $DIR/tables.md)" | tee -a "$LOG"
