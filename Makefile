# The common commands. `make run` and `make test` work on a fresh machine: each creates
# .venv and installs what it needs first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PROFILE ?= auto
# Without an NVIDIA GPU, take torch's CPU build (hundreds of MB instead of several GB), unless
# pip already has a local CPU wheel (find-links) that serves.
TORCH_CPU := $(shell command -v nvidia-smi >/dev/null 2>&1 || \
	ls $$($(PYTHON) -m pip config get global.find-links 2>/dev/null) $${PIP_FIND_LINKS} 2>/dev/null | \
	grep -q 'torch-.*+cpu' || echo --extra-index-url https://download.pytorch.org/whl/cpu)

.PHONY: help setup run test lint format bench clean

help:  ## list the commands
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(VENV)/.runtime: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_CPU) -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install -q $(TORCH_CPU) -r requirements-dev.txt
	touch $@

setup: $(VENV)/.runtime  ## create .venv and install the runtime packages

run: setup  ## the main job: build data, fine-tune, evaluate, demo (five notebooks) into runs/
	$(PY) -m correcteur.pipeline --profile $(PROFILE)

test: $(VENV)/.dev  ## run the test suite
	$(PY) -m pytest -q

lint: $(VENV)/.dev  ## ruff on code and notebooks
	$(VENV)/bin/ruff check .

format: $(VENV)/.dev
	$(VENV)/bin/ruff check --fix .

bench: $(VENV)/.dev  ## benchmarks; each writes its section of benchmarks/RESULTS.md
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:  ## remove generated files (keeps the embedded corpus and checkpoints/)
	rm -rf runs/ data/*.json data/*.png data/stats.md .pytest_cache test-artifacts
