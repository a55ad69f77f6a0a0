# Set-up and checks for developers and CI. `make test` works on a fresh machine: it creates
# .venv, installs the CPU build of torch that lies on this machine's disk (an unpinned torch would
# pull a multi-GB CUDA build), then cycleqd with its test extra, and runs lint and the tests.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test lint bench

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

setup: $(VENV)/.installed

lint: setup
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/materialize.py
