# The two commands of the README: `make demo` and `make test`.
# Each creates .venv when missing and installs fitslim with every extra under constraints.txt;
# the install is skipped while pyproject.toml and constraints.txt are unchanged.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fitslim-installed
PYTEST_ARGS ?=

.PHONY: install demo test lint typecheck clean bench

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install --quiet -e '.[all]' -c constraints.txt
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/fitslim demo

lint: install
	$(VENV)/bin/ruff check .

typecheck: install
	$(VENV)/bin/mypy

test: lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	$(PY) -m benchmarks --output benchmarks/results.md

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache fitslim-demo
