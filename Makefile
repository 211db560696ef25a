# Two commands on a fresh machine:  `make demo` (the main job) and `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOCK := requirements/dev.lock

.PHONY: install demo test test-fast lint typecheck lock bench

# The dev/CI environment comes from the lock file (exact versions), logferry itself from the
# work tree; `pip check` and check_lock.py fail when the lock no longer satisfies pyproject.toml
# (base dependencies and the local/dev extras): then run `make lock`.
$(BIN)/logferry: pyproject.toml $(LOCK) requirements/check_lock.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/pip check
	$(BIN)/python requirements/check_lock.py
	@touch $@

install: $(BIN)/logferry

# Refresh the lock after changing dependencies in pyproject.toml: resolve `.[local,dev]` in a
# throwaway venv and freeze it (review the diff; CI installs exactly that).
lock:
	set -e; tmp=$$(mktemp -d); \
	$(PYTHON) -m venv $$tmp/venv; \
	$$tmp/venv/bin/pip install --quiet --upgrade pip; \
	$$tmp/venv/bin/pip install --quiet -e '.[local,dev]'; \
	{ sed -n '/^#/p' $(LOCK); $$tmp/venv/bin/pip freeze --exclude-editable; } > $$tmp/dev.lock; \
	mv $$tmp/dev.lock $(LOCK); rm -rf $$tmp

demo: install
	$(BIN)/logferry serve --local

test: install
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest -n 2 --dist loadfile --durations=30

test-fast: install
	$(BIN)/python -m pytest -n 2 --dist loadfile -m 'not slow'

# mypy over src/ with pyproject's [tool.mypy] (strict where the issue-28 seams are). Part of
# `make lint` and `make test`.
typecheck: install
	$(BIN)/mypy

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
