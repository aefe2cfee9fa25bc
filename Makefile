# Set-up, tests and the pipeline. Every target creates the virtualenv on first use.
#   make repro   set up, then `dvc repro` the embedded default pipeline
#   make test    set up, then run the test suite
# CPU machines take torch==2.13.0 (CPU wheel) through constraints/cpu.txt. On a CUDA machine:
#   make setup TORCH_CONSTRAINTS=        (no constraint: pip installs the CUDA build of torch)
VENV ?= .venv
PYTHON ?= python3
TORCH_CONSTRAINTS ?= constraints/cpu.txt
EXTRAS ?= dev
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?= -n 2

.PHONY: setup repro test bench lint clean-data

setup: $(STAMP)

$(STAMP): pyproject.toml constraints/cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(if $(TORCH_CONSTRAINTS),-c $(TORCH_CONSTRAINTS)) -e ".[$(EXTRAS)]"
	touch $@

repro: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" dvc repro

test: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m bench

lint: setup
	$(BIN)/ruff check videomamba_depth stages tests bench
