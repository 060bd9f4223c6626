# The two commands: `make run` and `make test`. Both create .venv and install first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= cluster.toml

.PHONY: install run test lint typecheck unit clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/flashsale up --config $(CONFIG) --demo

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest -m "not cluster"

test: install lint typecheck
	$(BIN)/pytest

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache

# A few minutes of selling while nodes are killed, paused and cut off; fails on any
# broken invariant (docs/RELIABILITY.md). Output in var/chaos/.
.PHONY: chaos
chaos: install
	$(BIN)/flashsale chaos run --scenario mixed --duration 180

# The shopper journey under locust against a local 3-node cluster, a gateway and the
# payments sandbox; summary on stdout, CSV/HTML reports in var/load/ (docs/BENCHMARKS.md).
.PHONY: load
load: install
	$(BIN)/python -m loadtests.run_load
