# Two entry points, each doing its own set-up on a fresh machine:
#   make demo   - run the main job (demo on built-in data, writes mlspec_report/index.html)
#   make test   - run the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench docs clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[tests,gui,docs]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hyperspy-mlspec demo --out mlspec_report

test: $(STAMP)
	bash .ci/browser.sh
	$(PY) -m ruff check hyperspy_mlspec tests benchmarks
	# the tests, and every example in the docstrings (they are the documentation)
	$(PY) -m pytest -q -n 2 tests --doctest-modules hyperspy_mlspec
	# the documentation builds without a warning (API pages are generated from the code)
	$(PY) -m sphinx -b html -W --keep-going -q docs docs/_build/html

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

docs: $(STAMP)
	$(PY) -m sphinx -b html -W --keep-going docs docs/_build/html

clean:
	rm -rf $(VENV) mlspec_report docs/_build
