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

# The tests run JAX in pytest's own process, which the jaxseg command's re-exec does not reach:
# huge pages for malloc's large blocks (jaxseg/cli.py: MALLOC_TUNABLE) are set here instead.
# One pytest worker per core (pytest-xdist): most of the suite is XLA compiling small models,
# mostly on one thread, so two workers on CI's two cores take ~3/4 of one worker's time.
test: $(STAMP)
	GLIBC_TUNABLES=$${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1} $(VENV)/bin/python -m pytest -q -n auto tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# What a lent GPU machine's image lacks, as Python 3.12 wheels in .whl/ (git-ignored), for
# benchmarks/gpu_session.sh: grain with two of its needs, ml-collections, nibabel.
DEVICE_WHEELS := grain==0.2.18 array-record==0.8.6 portpicker==1.6.0 ml-collections==1.1.0 \
	nibabel==5.4.2
.PHONY: device-wheels
device-wheels:
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 --platform any -d .whl $(DEVICE_WHEELS)
