# The two commands of the README, `make demo` and `make test`. Each first makes a virtual
# environment in .venv (git-ignored) with what it needs, so a fresh clone and Python >= 3.10 are
# enough. Later runs reuse it; `make clean-venv` starts over.
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
# PyTorch's CPU builds. A plain `torch` requirement on PyPI is the multi-GB CUDA build.
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
# If that index cannot be reached: a pinned release (a CPU wheel on the machine this was
# written on, which keeps one on disk; from PyPI on Linux it would be the CUDA build).
TORCH_FALLBACK ?= torch==2.13.0

.PHONY: demo test lint docs gpu-check clean-venv

$(VPY):
	$(PYTHON) -m venv $(VENV)

# Without an NVIDIA GPU (no nvidia-smi), the CPU build first, so that installing parcli finds
# torch satisfied. --isolated: take torch from the CPU index alone, not from another index a
# pip configuration adds (which could offer a CUDA build of a newer version).
$(VENV)/.torch: | $(VPY)
	@if command -v nvidia-smi >/dev/null 2>&1; then \
	  echo "NVIDIA GPU found: installing PyTorch's CUDA build (several GB in $(VENV))"; \
	else \
	  echo "No NVIDIA GPU: installing PyTorch's CPU build into $(VENV) (about 1.2 GB; 1.6 GB with the test extras)"; \
	  $(VPY) -m pip install -q --isolated --timeout 15 --retries 1 torch \
	    --index-url $(TORCH_CPU_INDEX) 2>/dev/null \
	  || { echo "$(TORCH_CPU_INDEX) not reachable: installing $(TORCH_FALLBACK) instead"; \
	       $(VPY) -m pip install -q '$(TORCH_FALLBACK)'; }; \
	fi
	@touch $@

# Generating needs no extras: the demo installs only what `par generate` uses.
$(VENV)/.parcli: pyproject.toml $(VENV)/.torch
	$(VPY) -m pip install -q -e .
	@touch $@

$(VENV)/.parcli-dev: pyproject.toml $(VENV)/.torch
	$(VPY) -m pip install -q -e '.[dev,train]'
	@touch $@ $(VENV)/.parcli

demo: $(VENV)/.parcli
	mkdir -p out
	$(VENV)/bin/par generate --model digits --class 7 --regions 16 -n 8 --scale 4 -o out/seven.png

test: $(VENV)/.parcli-dev
	$(VPY) -m pytest -q

lint: $(VENV)/.parcli-dev
	$(VPY) -m ruff check parcli tests
	$(VPY) -m ruff format --check parcli tests

# docs/cli.md, every command's options, generated from the CLI itself (tests/test_docs.py checks
# that it is current).
docs: $(VENV)/.parcli-dev
	$(VPY) -m typer parcli.cli utils docs --name par --output docs/cli.md

# On a machine with a CUDA GPU (installs nothing, runs with the system's python3):
# make gpu-check DIR=gpu-results
gpu-check:
	@test -n "$(DIR)" || { echo "usage: make gpu-check DIR=path"; exit 2; }
	measure/gpu_check.sh "$(DIR)"

clean-venv:
	rm -rf $(VENV)
