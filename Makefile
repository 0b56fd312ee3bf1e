# Two entry points, each creating/refreshing the virtual environment itself:
#   make demo   -- the CSL-vs-SL robustness study on CPU (presets/cpu-small.yaml); report in runs/cpu-small/
#   make test   -- lint + the whole test suite (unit tests and the integration test)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Offline CIFAR-10 copy used when present; otherwise the official archive is downloaded.
CIFAR10_SOURCE ?= $(abspath ../shared/data/cifar10-jpeg.tar.gz)
DATA_FLAG := $(if $(wildcard $(CIFAR10_SOURCE)),--set base.data.source=$(CIFAR10_SOURCE),)
STUDY ?= presets/cpu-small.yaml

.PHONY: venv demo report status test lint clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch==2.13.0 first: on our machines it is a local CPU build (a bare 'torch' would pull CUDA wheels).
	$(BIN)/python -m pip install -q "torch==2.13.0" || $(BIN)/python -m pip install -q "torch>=2.4"
	$(BIN)/python -m pip install -q -e ".[dev,tensorboard,cluster]"
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/cslrobust study run $(STUDY) $(DATA_FLAG)

# The same overrides as `demo`, so the cells (identified by their config hash) match.
report: venv
	$(BIN)/cslrobust study report $(STUDY) $(DATA_FLAG)

status: venv
	$(BIN)/cslrobust study status $(STUDY) $(DATA_FLAG)

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: venv lint
	$(BIN)/python -m pytest --runslow -q

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
