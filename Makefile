# Two commands do all set-up on a fresh machine:  make demo  ·  make test
# The virtual environment is (re)built whenever pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test clean-venv

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/anchorrec pipeline --dataset demo

# one worker per core (at most 4: each end-to-end test holds ~2 GB), a test file per worker (its module
# fixtures are built once): CI on 2 cores
# took 18 min in one process, most of it end-to-end tests that wait on subprocesses and servers
test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile

clean-venv:
	rm -rf $(VENV)
