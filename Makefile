# The two commands of the README. Each installs what it needs first.
PYTHON ?= python3

.PHONY: install demo test lint gpu-check

install:
	$(PYTHON) -m pip install -q -e '.[dev,train]'

# Generating needs no extras: the demo installs only what `par generate` uses.
demo:
	$(PYTHON) -m pip install -q -e .
	par generate --model digits --class 7 --regions 16 -n 8 --scale 4 -o seven.png

test: install
	$(PYTHON) -m pytest -q

lint: install
	ruff check parcli tests
	ruff format --check parcli tests

# On a machine with a CUDA GPU (installs nothing): make gpu-check DIR=gpu-results
gpu-check:
	@test -n "$(DIR)" || { echo "usage: make gpu-check DIR=path"; exit 2; }
	measure/gpu_check.sh "$(DIR)"
