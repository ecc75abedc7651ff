# The two commands of the README: `make up` runs the stack, `make test` runs every test.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: up test lint format deps bench

deps:
	bash scripts/install-deps.sh

up: deps
	$(VENV)/bin/ds01 up $(ARGS)

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format:
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: deps lint
	$(PY) -m pytest -ra --durations=15

bench: deps
	$(PY) bench/summary.py
