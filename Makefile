# make demo   – create .venv, install, run the quickstart sweep (local Ray, local MLflow, bundled digits)
# make test   – create .venv if needed, install, run the lint gate and the whole test suite (slow tests included)
# make lint   – the lint gate alone: ruff check (pyflakes, pycodestyle, lines <= 120) and ruff format --check
# make format – ruff format and the fixable lint (what makes `make lint` pass); configured in pyproject.toml
# make test-fast – the suite without the slow (multi-trial, multi-node, browser) tests
# make postgresql – Debian's PostgreSQL for the multi-node test (once, where apt works; a no-op when installed)
# make ui     – serve the MLflow UI on ./mlruns.db and print where the newest sweep is (Ctrl+C stops it)
# make chromium – Debian's chromium for the browser test (once, where apt works; a no-op when installed)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo lint format test test-fast ui clean postgresql chromium

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: install
	$(BIN)/lslu-sweep run search_spaces/quickstart.yaml

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint postgresql chromium
	$(BIN)/python -m pytest

# The tests start their own throwaway instance (initdb + pg_ctl), so Debian's default cluster is not created.
# Without root or apt the multi-node test skips and says why.
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo "sudo -n" ); \
	  echo "installing Debian's postgresql for the multi-node test"; \
	  $$SUDO mkdir -p /etc/postgresql-common/createcluster.d && \
	  echo "create_main_cluster = false" | $$SUDO tee /etc/postgresql-common/createcluster.d/lslu-sweep.conf >/dev/null && \
	  $$SUDO apt-get update -qq >/dev/null && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	} || echo "postgresql could not be installed; the multi-node test will be skipped"

# Without root (or passwordless sudo) or apt the browser test skips and says why.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo "sudo -n" ); \
	  echo "installing Debian's chromium for the browser test"; \
	  $$SUDO apt-get update -qq >/dev/null 2>&1 && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1; \
	} || echo "chromium could not be installed; the browser test will be skipped"

test-fast: lint
	$(BIN)/python -m pytest -m "not slow"

ui: install
	$(BIN)/lslu-sweep ui

clean:
	rm -rf ray_results mlruns.db mlruns.db-wal mlruns.db-shm mlartifacts .pytest_cache
