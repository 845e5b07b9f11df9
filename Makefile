# Two entry points for a newcomer: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench gpu-wheels chromium clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch first so nothing later pulls a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/amt demo --strict --out runs/demo

test: lint
	$(BIN)/python -m pytest -q -n 2 tests

# ruff's lint rules and format live in pyproject.toml ([tool.ruff]).
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: $(STAMP)
	$(BIN)/amt bench --device cpu --preset tiny

# Wheels the GPU machine lacks, for benchmarks/gpu_session.sh (benchmarks/README.md "GPU").
gpu-wheels: $(STAMP)
	VENV_PYTHON=$(BIN)/python bash benchmarks/gpu_session.sh prepare

clean:
	rm -rf $(VENV) runs .gpu

# The HTML report's browser check: installs chromium (Debian: /usr/bin/chromium) and runs the test
# that screenshots report.html headless (skipped when chromium is absent).
.PHONY: report-check
report-check: $(STAMP)
	command -v chromium >/dev/null || (apt-get update && apt-get install -y --no-install-recommends chromium)
	$(BIN)/python -m pytest -q tests/evaluation/test_html_report.py -rs
