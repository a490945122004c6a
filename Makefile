# `make dev` and `make test` set up whatever is missing on a fresh Debian machine, then run.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv
UV_PIN := $(shell grep -m1 '^uv==' constraints.txt)
# uv uses this machine's Python 3.11 and never downloads another.
export UV_PYTHON_DOWNLOADS := never
# pip compiled bytecode at install time; uv does only when asked. Without it every
# process started under PYTHONDONTWRITEBYTECODE compiles its imports again.
export UV_COMPILE_BYTECODE := 1
# The client generators, apart: openapi-python-client pins a typer older than ours.
CODEGEN ?= .venv-codegen
NODE_TOOLS := clients/typescript/node_modules
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends

.PHONY: dev test lint format bench install system-deps test-system-deps clean

dev: system-deps $(VENV)/.installed
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
	for b in queue_latency sse_fanout init_throughput migrate_overhead refresh schema_introspection api_throughput; do $(BIN)/python -m bench.$$b || exit 1; done

install: test-system-deps $(VENV)/.installed $(CODEGEN)/.installed $(NODE_TOOLS)/.installed

# uv does the installing (fast, from the pins); pip only fetches uv itself, once.
$(UV):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --isolated --quiet --disable-pip-version-check '$(UV_PIN)'

$(VENV)/.installed: pyproject.toml constraints.txt | $(UV)
	$(UV) pip install --quiet --python $(BIN)/python -c constraints.txt -e '.[dev]'
	touch $@

$(CODEGEN)/.installed: clients/codegen-constraints.txt | $(UV)
	$(UV) venv --quiet --allow-existing --python $(PYTHON) $(CODEGEN)
	$(UV) pip install --quiet --python $(CODEGEN)/bin/python \
		-c clients/codegen-constraints.txt openapi-python-client
	touch $@

$(NODE_TOOLS)/.installed: clients/typescript/package-lock.json
	npm ci --prefix clients/typescript --no-audit --no-fund --loglevel=error
	touch $@

# Debian packages: `make dev` needs the first group; `make test` also the tools of its
# client, browser and CI-script tests.
system-deps:
	@$(call apt_missing,redis-server:redis-server git:git curl:curl psql:postgresql-client-15 \
		/usr/lib/postgresql/15/bin/initdb:postgresql-15)

test-system-deps: system-deps
	@$(call apt_missing,npm:npm chromium:chromium jq:jq)

# apt_missing COMMAND:PACKAGE...: install the packages whose command is missing.
define apt_missing
	missing=""; \
	for pair in $(1); do \
		command -v "$${pair%%:*}" >/dev/null || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && $(APT_INSTALL) $$missing; \
	fi
endef

clean:
	rm -rf $(VENV) $(CODEGEN) $(NODE_TOOLS) .hatchery .pytest_cache .mypy_cache .ruff_cache
