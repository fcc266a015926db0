# `make run` sets everything up and starts the app on the sandbox portal;
# `make test` sets up what the tests need and runs them.
# `make bench` runs the ping fan-out benchmark and prints its figures (it asserts nothing);
# vary it with e.g. `make bench BENCH_PORTALS=200 BENCH_INTERVAL=0.2`.
# `make bench-log` times the admin page's log queries on a million rows (BENCH_ROWS) and its
# summary on a busy hour (with BENCH_DATABASE_URL on a scratch database of that PostgreSQL server).

PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 5000
BENCH_PORTALS ?= 50
BENCH_INTERVAL ?= 1
BENCH_SECONDS ?= 20
BENCH_ROWS ?= 1000000
BENCH_DATABASE_URL ?=

.PHONY: run test setup test-setup browser lint bench bench-log

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.requirements: $(BIN)/activate requirements.txt
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.test-requirements: $(VENV)/.requirements tests/requirements.txt
	$(BIN)/pip install --quiet -r tests/requirements.txt
	touch $@

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund

setup: $(VENV)/.requirements node_modules/.package-lock.json

# `make run PORT=5001` (or PORT in the environment) moves the app and the sandbox portal to
# that port together.
PORT_URLS = $(if $(filter command line environment,$(origin PORT)),\
  B24_PUBLIC_URL=http://127.0.0.1:$(PORT) B24_SANDBOX_URL=http://localhost:$(PORT))

run: setup
	$(PORT_URLS) $(BIN)/flask --app wsgi db-upgrade
	$(PORT_URLS) $(BIN)/flask --app wsgi serve --host $(HOST) --port $(PORT)

# The browser tests drive Debian's Chromium; install it when missing and we may.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
	  else echo "Chromium is missing: install it (apt-get install chromium); browser tests will be skipped."; fi; }

test-setup: $(VENV)/.test-requirements node_modules/.package-lock.json browser

test: test-setup
	$(BIN)/pytest

lint: $(VENV)/.test-requirements
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

# The benchmark starts its server with the tests' fixtures, which need pytest.
bench: setup $(VENV)/.test-requirements
	$(BIN)/python -m tests.benchmarks.ping_fanout --portals $(BENCH_PORTALS) \
	  --interval $(BENCH_INTERVAL) --seconds $(BENCH_SECONDS)

bench-log: setup
	$(BIN)/python -m tests.benchmarks.event_log_paging --rows $(BENCH_ROWS) \
	  $(if $(BENCH_DATABASE_URL),--database-url $(BENCH_DATABASE_URL))
