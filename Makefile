# Two entry points. Each creates (or reuses) .venv and installs from this repo's own files.
#   make demo   set up, then run the CPU demo: corpus -> sweep -> fits -> figures -> report
#   make test   set up, then run the test suite
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PYTHON := $(VENV)/bin/python

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -e '.[test,cloud,hf]'
	touch $(STAMP)

.PHONY: setup demo test
setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/scaling demo

test: $(STAMP)
	$(PYTHON) -m pytest -q
