# Two entry points, each self-installing on a machine that has only Python 3.11:
#   make demo   trains the default UNet on the embedded MNI152 dataset (CPU, a few minutes)
#   make test   runs the whole test suite
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

.PHONY: demo test lint
demo: $(STAMP)
	$(VENV)/bin/jaxseg train --config=configs/demo.py --workdir=runs/demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .
