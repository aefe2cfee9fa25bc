# Set-up, tests and the pipeline. Every target creates the virtualenv on first use.
#   make repro   set up, then `dvc repro` the embedded default pipeline
#   make test    set up, then run the test suite
#   make gpu-check   on a CUDA machine: the CUDA tests and GPU benchmarks (bench/gpu_check.sh)
# Every machine installs the pinned releases of constraints/default.txt (torch 2.14.1 + torchvision 0.29.1,
# timm, ptlflow, onnx/onnxruntime). Elsewhere, CPU wheels instead of PyPI's CUDA build of torch:
#   make setup PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"
VENV ?= .venv
PYTHON ?= python3
CONSTRAINTS ?= constraints/default.txt
EXTRAS ?= dev,raft,timm,export
PIP_ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?= -n 2

.PHONY: setup repro test bench gpu-check lint clean-data

setup: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIP_ARGS) $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[$(EXTRAS)]"
	touch $@

repro: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc repro

test: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m bench

gpu-check: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" bash bench/gpu_check.sh

lint: setup
	$(BIN)/ruff check videomamba_depth stages tests bench
