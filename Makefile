# Two entry points (see README): `make run` runs the default experiment, `make test` installs the
# test needs and runs the suite. Each creates or reuses ./.venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test install install-test

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e .

install-test: $(BIN)/python
	$(BIN)/pip install -q -e '.[test,parity,reasoning]'

run: install
	$(BIN)/python -m experiments.default --workdir runs/default

# one style first (ruff format + lint), then the suite: two workers (one per core), a test file
# per worker so module fixtures are built once
test: install-test
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=20 tests
