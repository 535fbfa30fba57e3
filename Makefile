PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all lint bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch and torchvision are pinned in constraints.txt; everything else follows pyproject's ranges.
# panopticapi-lite (the tests' reference PQ) declares numpy<2, which no resolver can pair with
# our numpy 2 stack; its evaluation needs only numpy and pillow, so it goes in without its deps.
$(STAMP): $(VENV)/bin/python pyproject.toml constraints.txt
	$(PIP) install --quiet -c constraints.txt torch torchvision
	$(PIP) install --quiet -c constraints.txt -e ".[test]"
	$(PIP) install --quiet --no-deps "panopticapi-lite>=0.2"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/segpipe demo --out demo-out

test: $(STAMP)
	$(PY) -m ruff check segpipe tests benchmarks jobs
	$(PY) -m mypy
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check segpipe tests benchmarks jobs
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) demo-out
