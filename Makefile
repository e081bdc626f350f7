# The two commands of the README: `make run` and `make test`. Both create the environment first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
RECSYS := $(VENV)/bin/recsys
# TFX 1.16's ml-metadata and TFDV wheels exist for Python 3.10 only on this platform.
PYTHON ?= $(shell for c in python3.10 $$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.10*/bin/python3.10 2>/dev/null); do \
	"$$c" -c 'import sys; assert sys.version_info[:2] == (3, 10)' 2>/dev/null && { echo "$$c"; break; }; done)

.PHONY: help env run test test-fast lint-imports lock clean

help:
	@echo "make run    train, validate, gate and push the recommender on the built-in dataset, then"
	@echo "            serve it on 127.0.0.1 and print one user's top-10 over gRPC"
	@echo "make test   run the test suite (end-to-end tests included) and the import contracts"
	@echo "make test-fast   everything but the end-to-end tests (tests/e2e/), for the edit loop"
	@echo "make lock   re-pin requirements.txt from requirements.in (and the image's requirements-gpu.txt)"

env: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	@if [ -z "$(PYTHON)" ]; then \
	  echo "error: Python 3.10 not found. TFX 1.16 needs exactly Python 3.10." >&2; \
	  echo "Install it (e.g. 'pyenv install 3.10' or your OS package python3.10) or pass PYTHON=/path/to/python3.10." >&2; \
	  exit 1; fi
	@"$(PYTHON)" -m uv --version >/dev/null 2>&1 || "$(PYTHON)" -m pip install --quiet uv
	"$(PYTHON)" -m uv venv --seed --allow-existing --python "$(PYTHON)" $(VENV)
	"$(PYTHON)" -m uv pip install --python $(PY) -r requirements.txt
	"$(PYTHON)" -m uv pip install --python $(PY) --no-deps -e .
	@touch $@

run: env
	$(RECSYS) run
	$(RECSYS) demo

test: lint-imports
	$(PY) -m pytest

test-fast: lint-imports
	$(PY) -m pytest --ignore=tests/e2e

# The layers of pyproject.toml's [tool.importlinter]: a backwards import fails the build.
lint-imports: env
	$(VENV)/bin/lint-imports

lock: env
	"$(PYTHON)" -m uv pip compile --python-version 3.10 requirements.in -o requirements.txt
	"$(PYTHON)" -m uv pip compile --python-version 3.10 requirements-gpu.in -o requirements-gpu.txt

clean:
	rm -rf .recsys
