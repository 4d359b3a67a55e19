# Two commands for a fresh machine (see README):
#   make serve   installs into .venv and starts the server on its embedded defaults
#   make test    installs into .venv (with test tools) and runs the whole test suite
# TORCH pins the torch build. TORCH_INDEX picks where it comes from:
#   (unset)                                      PyPI's default build
#   TORCH_INDEX=https://download.pytorch.org/whl/cu130   CUDA 13, NVIDIA driver >= 580 (torch's stable CUDA build)
#   TORCH_INDEX=https://download.pytorch.org/whl/cu126   CUDA 12.6, for older drivers (torch's legacy CUDA build)
#   TORCH_INDEX=https://download.pytorch.org/whl/cpu     the small CPU wheel, on a machine without a GPU
# torch 2.12+ publishes no cu128 build. `imageserve doctor` says which build is installed and what it sees.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
# The torchao release the tests run against (the gpu extra, fp8); Dockerfile.cuda pins the same.
TORCHAO ?= torchao==0.18.0
TORCH_INDEX ?=
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install install-test serve test test-fast lint

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch first, pinned: otherwise the resolver may pick a multi-GB CUDA build on its own.
$(VENV)/.torch: | $(PY)
	$(PIP) install --quiet "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(PIP) install --quiet -e .
	touch $@

# The Node SDK tests (tests/node: the official `openai` package, pinned) need npm; without Node they skip.
$(VENV)/.installed-test: pyproject.toml tests/node/package.json $(VENV)/.torch
	$(PIP) install --quiet -e '.[test,bench,gpu,ray]' "$(TORCHAO)"
	if command -v npm >/dev/null; then cd tests/node && npm install --no-audit --no-fund --silent; fi
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

serve: install
	$(VENV)/bin/imageserve serve

# The layer contracts first (seconds; pyproject.toml [tool.importlinter]), then the whole suite.
test: install-test
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q

# Without the layers that start Ray or run the tiny diffusers pipelines (they still run in `make test` and CI).
test-fast: install-test
	$(PY) -m pytest -q -m "not ray and not slow"

lint: install-test
	$(VENV)/bin/ruff check .
