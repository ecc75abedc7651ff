# The two commands of the README: `make up` runs the stack, `make test` runs every test.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: up test lint format deps bench coverage

deps:
	bash scripts/install-deps.sh

up: deps
	$(VENV)/bin/ds01 up $(ARGS)

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format:
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: deps lint
	$(PY) -m pytest -ra --durations=15

bench: deps
	$(PY) bench/summary.py

# Line and branch coverage, child processes included (needs `.venv/bin/pip install coverage`).
coverage: deps
	rm -rf .coverage-data && mkdir -p .coverage-data
	export COVERAGE_FILE=$(CURDIR)/.coverage-data/.coverage; \
	CI=true $(VENV)/bin/coverage run --rcfile=scripts/coverage.ini -m pytest -q && \
	$(VENV)/bin/coverage combine --rcfile=scripts/coverage.ini -q && \
	$(VENV)/bin/coverage report --rcfile=scripts/coverage.ini
