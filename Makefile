# make demo   – create .venv, install, run the quickstart sweep (local Ray, local MLflow, bundled digits)
# make test   – create .venv if needed, install, run the whole test suite (slow tests included)
# make test-fast – the suite without the slow (multi-trial, multi-node, browser) tests
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast ui clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: install
	$(BIN)/lslu-sweep run search_spaces/quickstart.yaml

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlruns.db --host 127.0.0.1 --port 5000 --workers 1

clean:
	rm -rf ray_results mlruns.db mlartifacts .pytest_cache
