# One command runs what CI runs: `make check` (install dev deps, lint, types, tests).
PYTHON ?= python3

.PHONY: check services install lint types test bench demo

check: services install lint types test

# The team-journal tests start a real PostgreSQL server (tests/pg.py): its binaries must be here.
services:
	.ci/ensure-postgres

install:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[dev]'

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

types:
	$(PYTHON) -m mypy

test:
	$(PYTHON) -m pytest -q

bench: install
	$(PYTHON) bench/run.py

demo:
	$(PYTHON) -m pip install --quiet . && batch-enricher enrich sample_data/customers.xlsx --sandbox -o out.xlsx
