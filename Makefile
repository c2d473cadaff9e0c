# pgolf: `make test` and `make smoke` work on a fresh clone with only Python 3.11 and git.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PGOLF  := $(VENV)/bin/pgolf
STAMP  := $(VENV)/.pgolf-installed

.PHONY: help setup test smoke lab bench device-wheels device-check clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

setup: $(STAMP)  ## create .venv and install pgolf with its dependencies

# --system-site-packages keeps a pod's preinstalled CUDA torch (and flash-attn) visible in the venv;
# torch==2.13.0 (CPU wheel here) is installed only when no torch is importable at all.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	@if $(PY) -c "import torch" 2>/dev/null; then \
	  echo "setup: keeping torch $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	else \
	  echo "setup: no torch importable, installing torch==2.13.0"; \
	  $(PY) -m pip install --quiet torch==2.13.0; \
	fi
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $@

test: setup  ## run the whole test suite (this is what CI runs)
	$(VENV)/bin/ruff check pgolf_core tests bench
	$(VENV)/bin/ruff format --check pgolf_core tests bench
	$(PY) -m pytest -q -n 2 --dist loadfile tests  # two workers, a file per worker (its fixtures once)

smoke: setup  ## the main job: the whole notebook suite on the embedded smoke corpus (~10 min on 2 cores)
	$(PGOLF) data smoke
	$(PGOLF) suite params/smoke

lab: setup  ## open JupyterLab on the project's environment (installs the [lab] extra once)
	@$(PY) -c "import jupyterlab" 2>/dev/null || $(PY) -m pip install --quiet -e ".[dev,lab]"
	$(VENV)/bin/jupyter lab notebooks/

bench: setup  ## run the benchmarks under bench/ (by hand; numbers go to bench/README.md)
	$(PY) bench/data_throughput.py
	$(PY) bench/train_throughput.py
	$(PY) bench/ngram.py
	$(PY) bench/quant.py

# The GPU machine's own python3 (the one holding its CUDA torch; a venv made from a venv would not see
# it), with pgolf installed into it: offline from $(WHEELS)/ where `make device-wheels` filled it and it
# was carried along (the lent machine reaches no package index), else from PyPI.
OUT ?= reports/device
DEVICE_PY ?= python3
WHEELS ?= .whl
device-wheels: setup  ## here, with PyPI: the wheels an offline GPU machine lacks -> $(WHEELS)/ (carry it there)
	$(PY) bench/device_wheels.py --out $(WHEELS)

device-check:  ## GPU machine: pgolf into python3 (offline from $(WHEELS)/ if there), then every GPU check in 8 min -> $(OUT)/
	@if [ -d $(WHEELS) ]; then set -x; $(DEVICE_PY) -m pip install -q --no-index --find-links $(WHEELS) \
	  --no-build-isolation -e . ; else set -x; $(DEVICE_PY) -m pip install -q -e . ; fi \
	  || echo "device-check: installing pgolf failed; the sections record what does not import"
	$(DEVICE_PY) bench/device_check.py --setup --out $(OUT)

clean:  ## remove the venv, built data and runs
	rm -rf $(VENV) data runs .pytest_cache
