# Set-up and checks for developers and CI. `make test` works on a fresh machine: it installs
# bubblewrap (the sandbox), creates .venv with the CPU build of torch that lies on this machine's
# disk (an unpinned torch would pull a multi-GB CUDA build), then cycleqd with its test extra, and
# runs lint and the tests.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup system test lint bench

# bubblewrap isolates model-written code (cycleqd.sandbox); setpriv (util-linux) and the system
# python3 run inside it
system:
	@command -v bwrap >/dev/null && command -v setpriv >/dev/null && test -x /usr/bin/python3 || \
		{ apt-get update -qq && apt-get install -y -qq bubblewrap util-linux python3; }

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

setup: system $(VENV)/.installed

lint: setup
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -P -m pytest -q

bench: setup
	$(PY) bench/materialize.py
