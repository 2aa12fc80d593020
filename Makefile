# Two commands do all set-up on a fresh machine:  make demo  ·  make test
# The virtual environment is installed from requirements.lock (every package, exact versions) and is
# (re)installed whenever the lock or pyproject.toml changes. `make lock` re-resolves pyproject.toml
# and rewrites the lock (then: make test, and commit both).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
PIP_VERSION := 26.3

.PHONY: demo test lock clean-venv

# pip check fails when pyproject.toml asks for something the lock lacks: run `make lock`
$(STAMP): $(LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q pip==$(PIP_VERSION)
	$(BIN)/python -m pip install -q -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps -e .
	$(BIN)/python -m pip check || { echo "error: $(LOCK) does not satisfy pyproject.toml: run make lock"; exit 2; }
	touch $(STAMP)

# pip, not uv: torch/torchvision come from the local indexes only pip's config (/etc/xdg/pip) names
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q pip==$(PIP_VERSION)
	$(BIN)/python -m pip install -q --dry-run --ignore-installed --report $(LOCK).json -e '.[dev]'
	$(BIN)/python deploy/lock.py $(LOCK).json $(LOCK)
	rm -f $(LOCK).json

demo: $(STAMP)
	$(BIN)/anchorrec pipeline --dataset demo

# one worker per core (at most 4: each end-to-end test holds ~2 GB), a test file per worker (its module
# fixtures are built once): CI on 2 cores
# took 18 min in one process, most of it end-to-end tests that wait on subprocesses and servers
# the habits first (settings in pyproject.toml): `ruff format .` and `ruff check --fix .` mend most; then mypy
# on the package (about 20 s with its .mypy_cache/, 2-3 min without on 2 busy cores)
test: $(STAMP)
	$(BIN)/ruff format --check --quiet . || { echo "error: files need formatting: run $(BIN)/ruff format ."; exit 1; }
	$(BIN)/ruff check --quiet .
	$(BIN)/mypy || { echo "error: type errors above: fix them (which files, how strict: [tool.mypy] in pyproject.toml)"; exit 1; }
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile

clean-venv:
	rm -rf $(VENV)
