# Two commands do all the set-up on a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export REDFLAG_DATABASE_URL ?= sqlite:///./var/redflag.db

.PHONY: install run demo-reset test bench chaos lint format db-upgrade clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The benchmark suite (bench/): profilers on top of the dev install. BENCH_ARGS passes
# options through, e.g. `make bench BENCH_ARGS="--only ingest --backends sqlite"`.
BENCH_STAMP := $(VENV)/.bench-stamp
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

# The chaos run (bench/chaos.py, docs/RELIABILITY.md): 10 agents, 50 server and 50 agent
# SIGKILLs, two 60 s outages; fails unless every spooled event is stored exactly once.
# CHAOS_ARGS="--backend postgresql" also restarts the local PostgreSQL cluster once.
chaos: install
	$(BIN)/python -m bench.chaos $(CHAOS_ARGS)

db-upgrade: install
	$(BIN)/redflag-server db upgrade

# The demo supervisor upgrades the database itself, then starts the API, the console and
# the demo fleet; Ctrl-C stops them all. Pass options with DEMO_ARGS="--hosts 500".
run: install
	$(BIN)/redflag-demo $(DEMO_ARGS)

# The same, starting over: a new fleet, and the old demo agents removed from the database.
demo-reset: install
	$(BIN)/redflag-demo --reset $(DEMO_ARGS)

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache *.egg-info
