PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# Test processes: most of a test's time is spent waiting on Ray, subprocesses and sockets,
# not on the CPU, so a few run well side by side even on two cores.
TEST_PROCS ?= 3

.PHONY: install demo test test-all test-labelstudio lint bench clean

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
	$(PY) -m pytest -q -m "not slow" -n $(TEST_PROCS)

test-all: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_PROCS)

# The real Label Studio server pins many packages: it gets a virtualenv of its own, and the
# slow round-trip test (tests/review/test_labelstudio_server.py) drives it over HTTP.
LS_VENV := .venv-labelstudio
$(LS_VENV)/bin/label-studio:
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install --quiet label-studio

test-labelstudio: $(STAMP) $(LS_VENV)/bin/label-studio
	SEGPIPE_LABEL_STUDIO=$(CURDIR)/$(LS_VENV)/bin/label-studio $(PY) -m pytest -q -m slow \
		tests/review/test_labelstudio_server.py

lint: $(STAMP)
	$(PY) -m ruff check segpipe tests benchmarks jobs
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) $(LS_VENV) demo-out
