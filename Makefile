# `make dev` and `make test` set up whatever is missing on a fresh Debian machine, then run.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends

.PHONY: dev test lint format bench install system-deps clean

dev: install
	$(BIN)/hatchery dev

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

format: install
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

bench: install
	for b in queue_latency sse_fanout init_throughput migrate_overhead schema_introspection; do $(BIN)/python -m bench.$$b || exit 1; done

install: system-deps $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v git >/dev/null || missing="$$missing git"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	command -v psql >/dev/null || missing="$$missing postgresql-client-15"; \
	[ -x /usr/lib/postgresql/15/bin/initdb ] || missing="$$missing postgresql-15"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && $(APT_INSTALL) $$missing; \
	fi

clean:
	rm -rf $(VENV) .hatchery .pytest_cache .mypy_cache .ruff_cache
