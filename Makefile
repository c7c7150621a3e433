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

# The whole model zoo (every case, target, precision and callback; long): failing cells are expected and
# recorded, the support table in docs/zoo-support.md is the output. One pytest process per case keeps the
# memory of one architecture at a time (tests/zoo/run.py); ZOO_ARGS narrows it, e.g. ZOO_ARGS="--only keras".
ZOO_RESULTS ?= zoo-results
ZOO_ARGS ?=
zoo: install
	$(PY) -m tests.zoo.run --results $(ZOO_RESULTS) --output docs/zoo-support.md $(ZOO_ARGS)

# Each README quickstart in a fresh venv holding one framework's extras (CI's second step; a few minutes).
one-framework: install
	$(PY) .ci/one_framework.py

bench: install
	$(PY) -m benchmarks --output benchmarks/results.md

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache fitslim-demo
