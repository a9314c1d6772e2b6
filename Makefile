# Two entry points. Each creates (or reuses) .venv and installs from this repo's own files.
#   make demo   install the package alone (no SkyPilot, no Hugging Face), then run the CPU demo:
#               corpus -> sweep -> fits -> figures -> report
#   make test   install the package with [test,cloud], then run the test suite (what CI runs). The
#               cloud extra is installed so the SkyPilot task tests run; tests whose optional
#               package is absent (datasets: the hf extra) skip and say why.
PY ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python
DEMO_STAMP := $(VENV)/.installed-demo
TEST_STAMP := $(VENV)/.installed-test

$(VENV)/bin/python:
	$(PY) -c 'import sys; sys.exit("make: Python >= 3.11 needed (the JAX stack has no wheels for " + sys.version.split()[0] + "); run make PY=python3.11") if sys.version_info < (3, 11) else None'
	$(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip

$(DEMO_STAMP): pyproject.toml $(VENV)/bin/python
	$(PYTHON) -m pip install -q -e .
	touch $@

# --no-compile: pip would byte-compile every installed module (~12,700 files, ~40 CPU-s measured);
# Python compiles the ones a run imports on first import instead (same packages installed).
$(TEST_STAMP): pyproject.toml $(VENV)/bin/python
	$(PYTHON) -m pip install -q --no-compile -e '.[test,cloud]'
	touch $@

.PHONY: setup demo test
setup: $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(VENV)/bin/scaling demo

test: $(TEST_STAMP)
	$(PYTHON) -m pytest -q -n 2 --durations=15
