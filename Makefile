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

# A few minutes of selling while nodes are killed, paused, cut off, slowed down and
# given a wrong clock; fails on any broken invariant (docs/RELIABILITY.md). Output in
# var/chaos/. The clock skews need libfaketime (Debian's faketime, installed here when
# apt-get can; without it they are skipped, and the report says so).
.PHONY: chaos faketime
faketime:
	@dpkg -s faketime >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime >/dev/null 2>&1 \
	  || echo "faketime is not installed (apt-get install faketime): clock skews will be skipped" >&2

chaos: install faketime
	$(BIN)/flashsale chaos run --scenario mixed --duration 180

# The shopper journey under locust against a local 3-node cluster, a gateway and the
# payments sandbox; summary on stdout, CSV/HTML reports in var/load/ (docs/BENCHMARKS.md).
.PHONY: load
load: install
	$(BIN)/python -m loadtests.run_load

# Shoppers and bots side by side (swarm, scripted, replay, account farm) with every bot
# defence on, about 80 s: who got the units (from the ledger's feed), answers per class,
# the gateway's bot decisions; reports in var/load/bots/ (docs/BENCHMARKS.md, docs/BOTS.md).
.PHONY: load-bots
load-bots: install
	$(BIN)/python -m loadtests.run_bots

# Every load at rising concurrency (inventory reads, reserves before and after sell-out,
# checkout+payment, 1/2/4 gateways) next to its ceilings (bare aiohttp handler, raw
# pysyncobj commits, one Redis with a Lua decrement), measured in one run of about 5
# minutes; prints the table and writes it into docs/BENCHMARKS.md between its markers.
# wrk (Debian) is the load generator; it is installed when missing (root, apt).
.PHONY: bench
bench: install
	command -v wrk >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk
	$(BIN)/python -m loadtests.bench_harness --docs docs/BENCHMARKS.md

# Overload: the sustainable rate of a reserve-heavy mix (a short ramp), then 2.5x that,
# open-loop, for 60 s against a local 3-node cluster and one gateway behind HAProxy;
# prints what was shed (503/429 + Retry-After), the p99 of what was served, every
# process's peak memory and CPU, and checks that no process died and the sale stayed
# exact (docs/BENCHMARKS.md). HAProxy (Debian) is installed when missing (root, apt);
# `--front none` (ARGS="--front none") measures the gateway without it.
.PHONY: overload
overload: install
	command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] \
	  || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy
	$(BIN)/python -m loadtests.bench_overload $(ARGS)
