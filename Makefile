# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install dev bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml saferoom/_hmac.c
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.dev: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

dev: $(VENV)/.dev

demo: $(VENV)/.installed
	$(BIN)/saferoom demo --dir demo

test: $(VENV)/.dev
	$(BIN)/ruff check saferoom tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest -q
	$(BIN)/python -m pytest -q -c tests/sqlalchemy_suite/pytest.ini tests/sqlalchemy_suite

bench: $(VENV)/.installed
	$(BIN)/python bench/guard.py

clean:
	rm -rf $(VENV) demo .pytest_cache
