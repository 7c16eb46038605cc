# Everything a newcomer needs: `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -eu -o pipefail -c

PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt pyproject.toml | sha1sum | cut -c1-12)

# A repo-local Airflow with SQLite, these DAGs and plugins, and the embedded dataset store.
export PATH := $(BIN):$(PATH)
export AIRFLOW_HOME ?= $(CURDIR)/.airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__UNIT_TEST_MODE := False
export PYTHONPATH := $(CURDIR)/plugins
export LIGHTLY_HOME ?= $(CURDIR)/.lightly

DEMO_DIR := $(CURDIR)/.demo
DEMO_CONF = {"datasource": {"uri": "file://$(DEMO_DIR)/images"}, "dataset": "demo", "stopping_condition": {"n_samples": 20}, "artifacts_root": "file://$(DEMO_DIR)/artifacts", "store_url": "sqlite:///$(DEMO_DIR)/store.db", "dump": {"output": "file://$(DEMO_DIR)/selected"}}
CONF ?= {}

.PHONY: help venv demo run ui test test-slow test-integration lint lock bench system-packages clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	rm -f $(VENV)/.installed-*
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	echo "installing the locked requirements into $(VENV) (a few minutes the first time)"
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -r requirements-dev.txt 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e . 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	$(BIN)/pip check --disable-pip-version-check
	touch $@

venv: $(STAMP) ## create .venv with the locked runtime and test requirements

$(AIRFLOW_HOME)/airflow.db: | $(STAMP)
	mkdir -p $(AIRFLOW_HOME)
	airflow db migrate > $(AIRFLOW_HOME)/migrate.log 2>&1 || { cat $(AIRFLOW_HOME)/migrate.log; exit 1; }

demo: venv $(AIRFLOW_HOME)/airflow.db ## build a real image folder (with broken files) and curate it once
	rm -rf $(DEMO_DIR)
	python -m lightly_tasks.demo_data $(DEMO_DIR)/images
	airflow dags test lightly_curation -c '$(DEMO_CONF)' > $(DEMO_DIR)/airflow-dags-test.log 2>&1 \
	  || { tail -n 80 $(DEMO_DIR)/airflow-dags-test.log; echo "demo run failed; full log: $(DEMO_DIR)/airflow-dags-test.log"; exit 1; }
	python -m lightly_tasks summary file://$(DEMO_DIR)/artifacts/demo
	echo "Airflow log of the run: $(DEMO_DIR)/airflow-dags-test.log"

run: venv $(AIRFLOW_HOME)/airflow.db ## one curation run with CONF='<json>' (what a UI trigger does)
	airflow dags test lightly_curation -c '$(CONF)'

UI_PORT ?= 8080
ui: venv $(AIRFLOW_HOME)/airflow.db ## airflow standalone with these DAGs on http://localhost:$(UI_PORT)
	AIRFLOW__API__PORT=$(UI_PORT) AIRFLOW__API__BASE_URL=http://localhost:$(UI_PORT) exec airflow standalone

system-packages: ## Debian packages the tests need (docker-compose to validate the compose file, node/npm for Azurite)
	scripts/install-system-packages.sh

# Azurite, the Azure Blob emulator of the tests, pinned by tests/azurite/package-lock.json (repo-local node_modules)
AZURITE := tests/azurite/node_modules/.bin/azurite-blob
$(AZURITE): tests/azurite/package.json tests/azurite/package-lock.json | system-packages
	npm ci --prefix tests/azurite --ignore-scripts --omit=dev --no-audit --no-fund --loglevel=error
	touch $@

test: venv system-packages $(AZURITE) ## run the test suite (what CI runs)
	python -m pytest || { rc=$$?; [ $$rc -ne 5 ] || echo "pytest collected no tests: that is a failure"; exit $$rc; }

test-slow: venv system-packages $(AZURITE) ## the heavy checks kept out of `make test`
	python -m pytest -m slow

test-integration: venv system-packages ## real Airflow processes: api-server REST checks, backfill CLI, scheduler runs
	python -m pytest -m integration

lint: venv ## ruff over the code
	ruff check lightly_tasks plugins dags tests bench

bench: venv ## run the benchmarks; they print their figures
	pip install --quiet --no-deps -r requirements-bench.txt 2>&1 | { grep -v "is ignored" || true; }
	for b in bench/*.py; do echo "== $$b"; python $$b; done

lock: ## recompile the lock files from requirements*.in (needs network)
	test -x $(VENV)/bin/uv || $(BIN)/pip install --quiet uv==0.13.8
	$(BIN)/uv pip compile --python-version 3.11 --python-platform x86_64-manylinux_2_28 requirements.in -o requirements.txt
	$(BIN)/uv pip compile --python-version 3.11 --python-platform x86_64-manylinux_2_28 requirements-dev.in -o requirements-dev.txt
	$(BIN)/uv pip compile --python-version 3.11 --python-platform x86_64-manylinux_2_28 requirements-bench.in -o requirements-bench.txt

clean: ## remove the local Airflow home, demo data and caches (keeps .venv)
	rm -rf $(AIRFLOW_HOME) $(DEMO_DIR) $(LIGHTLY_HOME) .pytest_cache
