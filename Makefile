# prism: every target creates .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.prism-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: venv demo test unit bench clean

venv: $(STAMP)

# torch is installed first, pinned, so nothing can pull a CUDA build in its place.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m cluster.cli.demo

# The linter first (seconds); then every test, the 30 slowest listed at the end. Three xdist workers on two cores:
# most of the suite waits on servers starting and answering (2026-12-05, both beside a 200k-point benchmark at load
# 50-95: -n 3 943.9 s, -n 2 1259.6 s).
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -p no:cacheprovider -n 3 --durations=30 tests

unit: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

bench: $(STAMP)
	$(PY) -m deploy.bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
