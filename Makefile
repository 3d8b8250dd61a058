# The two commands a newcomer needs (README.md): `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test test-fast imports lint bench clean browser browser-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Runtime install (the demo) and dev install (tests: pytest, ruff, lycoris-lora, peft, ray).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev,ray]'
	touch $@ $(VENV)/.installed

## demo: set up and run the CPU demo study end to end (the pretrained CPU world, LoRA/LoHa/LoKr, report)
demo: $(VENV)/.installed
	$(BIN)/lyco-bench run experiments/demo.yaml --jobs 2

## test: set up with the dev extras, check the import layering, run the whole test suite offline
test: imports browser-check
	$(BIN)/python -m pytest

## test-fast: the unit tests only (no whole studies, wheels, Ray or world findings): under two minutes
test-fast: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -m "not e2e" -n auto --dist loadfile

## imports: the layering contract of pyproject.toml (imports only go down, no cycles)
imports: $(VENV)/.installed-dev
	$(BIN)/lint-imports --no-cache

## browser: Chromium and chromedriver for the report's browser test (Debian/Ubuntu apt; sudo unless root)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  $$([ "$$(id -u)" = 0 ] || echo sudo) apt-get install -y chromium chromium-driver

# A missing browser does not fail the tests: the browser test skips, and this says so up front.
browser-check:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  echo "note: no chromium/chromedriver on PATH: the report's browser test will skip (make browser installs them)"

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/adapters.py --quick
	$(BIN)/python benchmarks/training.py --quick
	$(BIN)/python benchmarks/evaluation.py --quick
	$(BIN)/python benchmarks/sweep.py --quick

clean:
	rm -rf $(VENV) runs reports/*/ .pytest_cache .ruff_cache
