# Two commands: `make test` and `make book`. Both create the virtual environment on first use.
PYTHON ?= python3
VENV   ?= .venv
# This machine's pip holds a CPU build of torch 2.13.0; installing it first keeps pip from pulling a
# multi-GB CUDA build for the bare `torch` requirement. Elsewhere point pip at the CPU wheels, e.g.
#   make test TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC     ?= torch==2.13.0
TORCH_PIP_ARGS ?=
PYTEST_WORKERS ?= 2
# One BLAS/OpenMP thread per test worker (and per notebook kernel it starts): with two workers on two
# cores, torch's default of one thread per core oversubscribes the CPU. Measured on the 2-core machine:
# 5 min for the whole suite against 20-28 min with the default.
TEST_THREADS   ?= 1

BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# Runs never touch the network: no hub downloads, no telemetry.
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: setup lint test floors unit notebooks book bench-notebooks strip-outputs zoo clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	# torchdistill is a peer for the distillation tests; its torchvision requirement would replace
	# the CPU torch with a CUDA build, and its loss modules need no torchvision: install it alone.
	$(BIN)/python -m pip install -q --no-deps "torchdistill>=1.1"
	# mergekit is the peer of the merging tests; it pins pydantic and accelerate to older releases than
	# the book's, and the merge code it is tested on imports fine with ours: install it alone too.
	$(BIN)/python -m pip install -q --no-deps "mergekit>=0.1.5"
	touch $@

## lint: ruff over the package, tests and scripts (rules and line length in pyproject.toml)
lint: setup
	$(BIN)/ruff check .

## test: lint, unit tests of lfm_ref plus nbval over every chapter, spread over the cores, then the floors check
test: setup lint
	OMP_NUM_THREADS=$(TEST_THREADS) MKL_NUM_THREADS=$(TEST_THREADS) $(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadscope \
		--nbval-lax --nbval-current-env tests notebooks
	$(MAKE) floors

## floors: the zoo and language-model tests on the declared floors of transformers and tokenizers
floors: setup
	OMP_NUM_THREADS=$(PYTEST_WORKERS) MKL_NUM_THREADS=$(PYTEST_WORKERS) $(BIN)/python scripts/check_floors.py

unit: setup
	OMP_NUM_THREADS=$(TEST_THREADS) MKL_NUM_THREADS=$(TEST_THREADS) $(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) tests

notebooks: setup
	OMP_NUM_THREADS=$(TEST_THREADS) MKL_NUM_THREADS=$(TEST_THREADS) $(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadscope --nbval-lax --nbval-current-env notebooks

## book: build the HTML book (notebooks executed, warnings are errors) into _build/html
book: setup
	$(BIN)/jupyter-book build . -W -n --keep-going
	@test -f _build/html/index.html || { echo "no _build/html/index.html: the book did not build"; exit 1; }
	@echo "The book is in $(abspath _build/html/index.html)"

## bench-notebooks: wall time of every chapter against the 60 s budget (a report, not a test)
bench-notebooks: setup
	$(BIN)/python scripts/bench_notebooks.py

## strip-outputs: clear the outputs of every notebook (they are committed without outputs)
strip-outputs: setup
	$(BIN)/python scripts/strip_outputs.py

## zoo: rebuild the zoo's weights from scratch (deterministic; minutes on a CPU)
zoo: setup
	$(BIN)/python -m lfm_ref.zoo build

clean:
	rm -rf _build .pytest_cache .venv-floors
