# cthm: `make run` installs what is missing and starts the service; `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cthm-installed
SYSTEM_STAMP := $(VENV)/.cthm-system-packages
DEBIAN_PACKAGES := nftables iptables iproute2 conntrack libnftables1

.PHONY: run test lint bench install system-packages clean

install: $(STAMP)

system-packages: $(SYSTEM_STAMP)

$(SYSTEM_STAMP):
	@scripts/install-system-packages.sh $(DEBIAN_PACKAGES)
	@mkdir -p $(VENV) && touch $@

$(STAMP): pyproject.toml $(SYSTEM_STAMP)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	@touch $@

run: install
	$(BIN)/cthm serve

lint: install
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python scripts/bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
