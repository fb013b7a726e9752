# myocohort: `make demo` and `make test` work from a clean clone (they run `make setup` first
# when .venv is missing).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DEMO_DIR ?= demo
# 100 participants: the smallest synthetic cohort on which the full 11-term published model
# is estimable (with 20, rare covariates such as osteoporosis separate the outcome perfectly).
DEMO_N ?= 100
PYTEST_ARGS ?=

.PHONY: setup setup-gpu setup-browser test demo lint bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch==2.13.0 comes from the constraints file: any other spec pulls GBs of CUDA wheels
	$(PIP) install --quiet -c constraints.txt -e ".[test]"
	touch $@

setup: $(VENV)/.installed

# GPU machines only: dask-cuda (pins dask/distributed) and CuPy for CUDA 12.
setup-gpu: setup
	$(PIP) install -c constraints.txt -e ".[gpu]"

# Headless Chromium for the report's browser test (Debian's package, root only); the test
# installs it itself when it can, and skips saying why when it cannot.
setup-browser: setup
	$(PY) -m tests.report.browser install

test: setup
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/myocohort synth --out $(DEMO_DIR)/cohort --participants $(DEMO_N)
	$(VENV)/bin/myocohort run $(DEMO_DIR)/cohort/manifest.csv \
		--covariates $(DEMO_DIR)/cohort/covariates.csv --workdir $(DEMO_DIR)/work --cluster local
	@echo "report: $(DEMO_DIR)/work/results/report.html"

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) -m benchmarks --out bench-results

clean:
	rm -rf $(DEMO_DIR) bench-results .pytest_cache
