# Two commands on a fresh machine: `make run` and `make test`.
# Everything installed comes from uv.lock (exact versions and hashes); uv itself from
# requirements-uv.txt (hashes). `make lock` upgrades the lock.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV_HOME := .uv
UV := $(UV_HOME)/bin/uv
HOST ?= 127.0.0.1
PORT ?= 8000

# uv uses this machine's Python and never downloads one.
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: run test lint format migrate install install-dev lock bench prodcheck clean

$(UV): requirements-uv.txt
	test -x $(UV_HOME)/bin/python || $(PYTHON) -m venv $(UV_HOME)
	$(UV_HOME)/bin/python -m pip install --quiet --require-hashes --no-deps -r requirements-uv.txt
	touch $@

# What the server needs; leaves the dev tools alone if they are there.
install: $(UV)
	$(UV) sync --locked --no-dev --inexact --python $(PYTHON) --quiet

# Everything in the lock, the test tools and provider SDKs included.
install-dev: $(UV)
	$(UV) sync --locked --python $(PYTHON) --quiet

lock: $(UV)
	$(UV) lock --upgrade

migrate: install
	$(PY) manage.py migrate --noinput

run: migrate
	$(PY) -m uvicorn costr.asgi:application --host $(HOST) --port $(PORT) --http costr.server:HttpToolsProtocol --no-access-log

# The Node clients of the real-client suite (tests/test_real_clients.py), installed from their
# lock (exact versions and integrity hashes) whenever node_modules is missing or older than it;
# install scripts are not run. No npm is an error, never a silent skip of those tests.
NODE_CLIENTS := tests/clients/node
NODE_CLIENTS_STAMP := $(NODE_CLIENTS)/node_modules/.installed

$(NODE_CLIENTS_STAMP): $(NODE_CLIENTS)/package.json $(NODE_CLIENTS)/package-lock.json
	@command -v npm >/dev/null || { echo "npm not found: the real-client tests need Node 20+ and npm" >&2; exit 1; }
	cd $(NODE_CLIENTS) && npm ci --ignore-scripts --no-audit --no-fund
	touch $@

# The TypeScript client SDK (sdk/js, @costr/sdk): its build and test tools and the official
# clients it is tested with, installed from its lock the same way; `npm test` builds it and runs
# its tests against a real Costr (stopped and restarted) and the fake provider.
SDK_JS := sdk/js
SDK_JS_STAMP := $(SDK_JS)/node_modules/.installed

$(SDK_JS_STAMP): $(SDK_JS)/package.json $(SDK_JS)/package-lock.json
	@command -v npm >/dev/null || { echo "npm not found: the sdk/js tests need Node 20+ and npm" >&2; exit 1; }
	cd $(SDK_JS) && npm ci --ignore-scripts --no-audit --no-fund
	touch $@

test: install-dev $(NODE_CLIENTS_STAMP) $(SDK_JS_STAMP)
	$(PY) manage.py makemigrations --check --dry-run
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest
	cd $(SDK_JS) && COSTR_PYTHON=$(CURDIR)/$(PY) npm test

# Proxy overhead against the fake provider, then the sink, writer and reporting benchmarks on
# PostgreSQL (BENCH_DATABASE_URL); about ten minutes; writes docs/benchmarks.md and .json.
bench: install-dev
	$(PY) -m bench.run $(BENCH_ARGS)
	$(PY) -m bench.extras

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: install-dev
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) $(UV_HOME) .pytest_cache .ruff_cache
