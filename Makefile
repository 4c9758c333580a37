# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs what it needs on first use.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench profile instructions lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "mpesa-sync needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m devtools.demo

test: $(STAMP)
	@tests/support/install-pgbouncer
	$(PY) -m pytest -p no:cacheprovider $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks.run

profile: $(STAMP)
	$(PY) -m benchmarks.profile

instructions: $(STAMP)
	$(PY) -m benchmarks.instructions

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
