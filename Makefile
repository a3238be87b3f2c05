# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# The service command; the Dockerfile's CMD is the same plus --host 0.0.0.0 --port 8000 (a test checks).
SERVE_ARGS := serve --config config/default.yaml
PYTEST_ARGS ?=

.PHONY: install tools run test lint format bench bench-quick bench-cpu bench-threads up down clean

install:
	@scripts/install.sh --dev --editable $(VENV)

tools:
	@scripts/install-tools.sh

run: install
	$(PY) -m service $(SERVE_ARGS)

test: install tools
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff format --check service models tests benchmarks
	$(VENV)/bin/ruff check service models tests benchmarks
	$(VENV)/bin/mypy service models

format: install
	$(VENV)/bin/ruff format service models tests benchmarks
	$(VENV)/bin/ruff check --fix service models tests benchmarks

bench: install
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.rerank
	$(PY) -m benchmarks.backends --model minilm
	$(PY) -m benchmarks.backends --model reranker
	$(PY) -m benchmarks.backends --model classifier
	$(PY) -m benchmarks.images
	$(PY) -m benchmarks.fairness

bench-quick: install
	$(PY) -m benchmarks.run --quick

# CPU seconds per request by process of the service's tree (add --profile DIR for py-spy profiles)
bench-cpu: install
	$(PY) -m benchmarks.cpu_per_request

# the worker's threading variants, alternating runs in one sitting
bench-threads: install
	$(PY) -m benchmarks.threads

up:
	docker compose up --build -d

down:
	docker compose down

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
