# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: help install demo test test-unit test-integration lint format ui benchmark lock clean

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)  ## Create .venv with the pinned dependencies

demo: $(STAMP)  ## Run the whole pipeline on the bundled fraud-detection use case
	$(BIN)/mlops run --config configs/fraud_detection.yaml

test: $(STAMP)  ## Run the whole suite (unit, data checks, model checks, integration)
	$(BIN)/python -m pytest

test-unit: $(STAMP)  ## Unit tests and the offline data/model check suites (seconds)
	$(BIN)/python -m pytest tests/unit tests/data_checks tests/model_checks

test-integration: $(STAMP)  ## Integration tests against real Prefect, Dask and MLflow
	$(BIN)/python -m pytest tests/integration

lint: $(STAMP)  ## ruff check + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)  ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

ui: $(STAMP)  ## Open the MLflow UI on the project's store (127.0.0.1:5000)
	$(BIN)/mlops ui

benchmark: $(STAMP)  ## Run benchmarks/pipeline.py (1M and 10M rows; long) and update docs/benchmarks.md
	$(BIN)/python benchmarks/pipeline.py

lock:  ## Re-resolve requirements.in into requirements.lock (needs the registry)
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet -r requirements.in
	.lock-venv/bin/python -m pip freeze --all | grep -v -e '^pip==' -e '^-e' > requirements.lock
	rm -rf .lock-venv

clean:  ## Remove local state (.mlops) and the virtual environment
	rm -rf .mlops $(VENV)
