# Two commands on a fresh machine:  `make demo` (the main job) and `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test test-fast lint bench

$(BIN)/logferry: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[local,dev]'
	@touch $@

install: $(BIN)/logferry

demo: install
	$(BIN)/logferry serve --local

test: install
	$(BIN)/ruff check src tests bench
	$(BIN)/python -m pytest -n 2 --dist loadfile

test-fast: install
	$(BIN)/python -m pytest -n 2 --dist loadfile -m 'not slow'

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
