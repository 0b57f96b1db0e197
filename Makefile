# Every target sets up what it needs: a fresh clone runs `make demo` or `make test` directly.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.modmerge-installed

.PHONY: venv test test-fast demo lint bench-deps bench-merge clean

venv: $(STAMP)

# torch is installed first and pinned: an unpinned torch pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

test: venv
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not slow"

lint: venv
	$(VENV)/bin/ruff check modmerge tests benchmarks

demo: venv
	$(PY) -m modmerge.demo

# mergekit lives in its own environment (its pins differ from ours); torch pinned first, as above.
MERGEKIT_VENV := .venv-mergekit
bench-deps: $(MERGEKIT_VENV)/bin/mergekit-yaml
$(MERGEKIT_VENV)/bin/mergekit-yaml:
	$(PYTHON) -m venv $(MERGEKIT_VENV)
	$(MERGEKIT_VENV)/bin/pip install -q torch==2.13.0
	$(MERGEKIT_VENV)/bin/pip install -q mergekit==0.1.5

bench-merge: venv bench-deps
	$(PY) benchmarks/merge_speed.py

clean:
	rm -rf $(VENV) .pytest_cache
