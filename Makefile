# cthm: `make run` installs what is missing and starts the service; `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cthm-installed
SYSTEM_STAMP := $(VENV)/.cthm-system-packages
# chromium: the status page's browser test (tests/browser), driven by Playwright.
DEBIAN_PACKAGES := nftables iptables iproute2 conntrack libnftables1 sip-tester postgresql chromium

# As `exclude` in pyproject.toml's [tool.mypy].
MYPY_OWN_ROOT_DIRS := agent cli neutron openstack traffic

.PHONY: run test unit lint typecheck bench bench-hosts bench-api bench-neutron install system-packages clean

install: $(STAMP)

system-packages: $(SYSTEM_STAMP)

$(SYSTEM_STAMP): Makefile  # the package list lives here: a new package is installed too
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
	@$(MAKE) --no-print-directory typecheck
	$(BIN)/lint-imports

# mypy --strict over src and tests (pre-commit runs this target too).
typecheck: install
	$(BIN)/mypy
	@# Directories whose tests import helpers by bare name: a run each, the directory a root.
	@for dir in $(MYPY_OWN_ROOT_DIRS); do \
		echo "MYPYPATH=tests/$$dir $(BIN)/mypy tests/$$dir/*.py"; \
		MYPYPATH=tests/$$dir $(BIN)/mypy $$(find tests/$$dir -name '*.py') || exit 1; \
	done

# The whole suite, on TEST_WORKERS parallel workers (pytest-xdist; a test file stays on one
# worker), then the few `serial` tests apart. Exit 5 (nothing selected by PYTEST_ARGS) is fine.
TEST_WORKERS ?= 2
test: lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not serial" $(PYTEST_ARGS) \
		|| [ $$? -eq 5 ]
	$(BIN)/python -m pytest -m serial $(PYTEST_ARGS) || [ $$? -eq 5 ]

# Pure and fake-backed tests: no root, no namespace, no cthm process, no database (seconds).
# tests/conftest.py marks kernel, server and database tests automatically. Bytecode and
# pytest's rewritten test modules are cached under the venv, never in the tree, even where
# PYTHONDONTWRITEBYTECODE is set: without that cache collecting alone takes ~10 s.
UNIT_MARKERS := not kernel and not server and not database and not traffic
unit: install
	PYTHONDONTWRITEBYTECODE= PYTHONPYCACHEPREFIX=$(abspath $(VENV))/pycache \
		$(BIN)/python -m pytest -q -m "$(UNIT_MARKERS)" $(PYTEST_ARGS)

# Issue 14's table (scripts/bench.py: the agent in-process per runner, then API -> kernel and
# POST acknowledged through real `cthm serve` processes, scripts/bench_api_kernel.py), then
# several hosts (scripts/bench_hosts.py: node agents in fake hosts against `cthm serve
# --no-agent`; 1000 namespaces at the default size), then the API's write throughput on
# SQLite, PostgreSQL and two replicas (scripts/bench_api.py; BENCH_API_ARGS="--configs sqlite"
# for SQLite alone).
# BENCH_ARGS=--quick: a few minutes (bench.py libnftables only with fewer rounds; the other
# two at a small size unless BENCH_HOSTS_ARGS / BENCH_API_ARGS say otherwise).
# bench.py also runs scripts/bench_neutron.py (issue 15: Neutron's L3 agent extension beside
# cthm's; skipped without the `neutron` package or with BENCH_ARGS=--no-neutron).
# BENCH_ARGS=--json: stdout is ONE JSON object, bench.py's (issue 14's and 15's keys); the commands are
# not echoed and the other two scripts print to stderr (their own JSON summaries included).
BENCH_QUICK = $(findstring --quick,$(BENCH_ARGS))
BENCH_JSON = $(findstring --json,$(BENCH_ARGS))
BENCH_HOSTS_ARGS ?= $(if $(BENCH_QUICK),--agents 3 --routers 10 --writes 20)
BENCH_API_ARGS ?= $(if $(BENCH_QUICK),--configs sqlite --creates 100)
BENCH_ECHO = $(if $(BENCH_JSON),@)
bench: install
	$(BENCH_ECHO)$(BIN)/python scripts/bench.py $(BENCH_ARGS)
	$(BENCH_ECHO)$(BIN)/python scripts/bench_hosts.py $(BENCH_HOSTS_ARGS) $(if $(BENCH_JSON),>&2)
	$(BENCH_ECHO)$(BIN)/python scripts/bench_api.py $(BENCH_API_ARGS) $(if $(BENCH_JSON),>&2)

bench-hosts: install
	$(BIN)/python scripts/bench_hosts.py $(BENCH_HOSTS_ARGS)

bench-api: install
	$(BIN)/python scripts/bench_api.py $(BENCH_API_ARGS)

# Issue 15: Neutron's L3 agent extension and cthm's side by side through one harness (needs the
# `neutron` package: the `test` extra). bench.py runs it too and merges its keys into --json.
BENCH_NEUTRON_ARGS ?= $(if $(BENCH_QUICK),--quick)
bench-neutron: install
	$(BIN)/python scripts/bench_neutron.py $(BENCH_NEUTRON_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
