# codediff — every set-up step lives here, so a fresh machine needs only `make demo` or `make test`.
PY       ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.installed
# Tests and the demo read the shared data folder beside the checkout unless told otherwise.
export CODEDIFF_DATA ?= $(abspath ../shared/data)

.PHONY: install test lint demo bench clean

install: $(STAMP)

# Re-installs only when pyproject.toml changes; torch comes first so the CPU wheel is used.
$(STAMP): pyproject.toml
	@command -v bwrap >/dev/null 2>&1 || { echo "installing bubblewrap (the execution sandbox)"; \
	  (apt-get update -qq && apt-get install -y -qq bubblewrap) >/dev/null 2>&1 || \
	  (sudo apt-get update -qq && sudo apt-get install -y -qq bubblewrap) >/dev/null 2>&1 || \
	  echo "warning: could not install bubblewrap; install the 'bubblewrap' package by hand"; }
	@command -v chromedriver >/dev/null 2>&1 || { echo "installing chromium (the browser test of the HTML reports)"; \
	  (apt-get update -qq && apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 || \
	  (sudo apt-get update -qq && sudo apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 || \
	  echo "warning: could not install chromium; tests/test_browser.py will skip (install 'chromium' and 'chromium-driver' by hand)"; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,hf]'
	touch $(STAMP)

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .

demo: install
	$(BIN)/codediff demo

bench: install
	$(BIN)/python bench/harness_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache demo-out
