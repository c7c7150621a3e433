# The two commands of the README: `make demo` and `make test`.
# Each creates .venv when missing and installs fitslim with every extra under constraints.txt;
# the install is skipped while pyproject.toml and constraints.txt are unchanged.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fitslim-installed
PYTEST_ARGS ?=

.PHONY: install demo test lint typecheck clean bench zoo one-framework

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

# The whole model zoo (every case, target and precision; long): failing cells are expected and recorded,
# the support table in docs/zoo-support.md is the output.
ZOO_RESULTS ?= zoo-results
zoo: install
	rm -f $(ZOO_RESULTS)/cells.jsonl
	-FITSLIM_ZOO=full FITSLIM_ZOO_RESULTS=$(ZOO_RESULTS) $(PY) -m pytest -m zoo tests/zoo $(PYTEST_ARGS)
	$(PY) -m tests.zoo.table $(ZOO_RESULTS)/cells.jsonl --output docs/zoo-support.md

# Each README quickstart in a fresh venv holding one framework's extras (CI's second step; a few minutes).
one-framework: install
	$(PY) .ci/one_framework.py

bench: install
	$(PY) -m benchmarks --output benchmarks/results.md

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache fitslim-demo
