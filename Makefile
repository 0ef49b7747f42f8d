# Sparse Experts Workbook. `make run` runs every notebook on the embedded data; `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PRESET ?= cpu
ONLY ?=
PYTEST_ARGS ?=
# OFFLINE=1 installs the loopback-only network guard in the runner and in every notebook kernel.
OFFLINE_ENV := $(if $(filter 1,$(OFFLINE)),SPARSE_EXPERTS_OFFLINE=1 PYTHONPATH=lib/sparse_experts/_offline_site,)

.PHONY: setup run test test-gpu gpu-wheels lab bench browser-check lint format strip lock help

help:
	@echo "make run [PRESET=smoke|cpu|gpu|tpu] [ONLY=02] [OFFLINE=1]  execute notebooks -> outputs/<preset>/"
	@echo "make test                                                  pytest, incl. every notebook under smoke"
	@echo "make test-gpu                                              GPU CI (.ci/gpu): GPU tests, 00-04 under gpu_embedded"
	@echo "make gpu-wheels                                            wheels a GPU machine without network lacks -> .whl/"
	@echo "make lab                                                   JupyterLab on 127.0.0.1 with the venv kernel"
	@echo "make bench                                                 benchmark scripts -> outputs/benchmarks/"
	@echo "make browser-check [NOTEBOOK=...]                          notebook 03 live in JupyterLab + headless Chromium"
	@echo "make setup | lint | format | strip | lock"

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -e .
	@touch $(STAMP)

run: setup
	$(OFFLINE_ENV) $(PY) -m sparse_experts.workbook run --preset $(PRESET) $(if $(ONLY),--only $(ONLY),)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# On a GPU machine (no venv, no network needed): see .ci/gpu for its settings.
test-gpu:
	bash .ci/gpu

# cp312 manylinux wheels of what the GPU image lacks (needs the package index), checked against the carry limit.
gpu-wheels: setup
	$(PY) -m tools.gpu_wheels

lab: setup
	$(VENV)/bin/jupyter lab --ip 127.0.0.1 --no-browser --notebook-dir notebooks $(if $(filter 0,$(shell id -u)),--allow-root,)

bench: setup
	@scripts=$$(ls benchmarks/*.py 2>/dev/null); \
	if [ -z "$$scripts" ]; then echo "no benchmark scripts in benchmarks/ yet"; fi; \
	for script in $$scripts; do echo "== $$script"; $(PY) $$script || exit 1; done

# Needs the system Chromium (installed here when missing and run as root); screenshots -> outputs/browser-check/.
browser-check: setup
	@if [ -z "$(CHROMIUM)" ] && ! command -v chromium >/dev/null && [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y chromium || { apt-get update && apt-get install -y chromium; }; \
	  else echo "browser-check needs Chromium: sudo apt-get install -y chromium (or pass CHROMIUM=/path/to/chromium)"; exit 2; fi; \
	fi
	$(PY) -m tools.browser_check $(if $(NOTEBOOK),--notebook $(NOTEBOOK),) $(if $(CHROMIUM),--chromium $(CHROMIUM),)

lint: setup
	$(VENV)/bin/ruff check lib tools tests benchmarks
	$(VENV)/bin/ruff format --check lib tools tests benchmarks

format: setup
	$(VENV)/bin/ruff format lib tools tests benchmarks
	$(VENV)/bin/ruff check --fix lib tools tests benchmarks

# Notebooks are committed without outputs.
strip: setup
	$(VENV)/bin/nbstripout notebooks/*.ipynb

# Rebuild the lock from the direct dependencies in a scratch venv, then mirror it into environment.yml.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q -e ".[test]"
	{ echo "# Exact pins (the lock) for the Sparse Experts Workbook: Python 3.11, CPU jax."; \
	  echo "# Regenerate: make lock (pip freeze of a fresh venv made from the direct dependencies in pyproject.toml)."; \
	  .lock-venv/bin/pip freeze --exclude-editable; } > requirements.txt
	.lock-venv/bin/python -c "import sys; sys.path.insert(0, 'lib'); from tools import envfile; envfile.write()"
	rm -rf .lock-venv
