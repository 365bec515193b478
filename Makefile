# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: help install demo run up status down trigger traffic browser postgres test test-unit test-integration test-stack reliability lint format ui benchmark benchmark-allocator benchmark-serving benchmark-families benchmark-tuning serve lock clean

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'

$(STAMP): requirements.lock pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)  ## Create .venv with the pinned dependencies

demo: $(STAMP)  ## Start the local stack, run the pipeline on it, then drifted traffic -> drift event -> retraining; leave it up
	$(BIN)/mlops up
	$(BIN)/mlops trigger --config configs/fraud_detection.yaml
	@# A retraining the model gate rejects (exit 3) is a valid end of the loop, not a failure.
	$(BIN)/mlops simulate-traffic --drift || [ $$? -eq 3 ]
	@echo ""
	@$(BIN)/mlops status --urls
	@echo "The stack keeps running. Stop it with: .venv/bin/mlops down   (or: make down)"

run: $(STAMP)  ## Run the pipeline in this process, no stack needed (stages as sub-flows)
	$(BIN)/mlops run --config configs/fraud_detection.yaml

up: $(STAMP)  ## Start the local stack (Prefect + MLflow servers, a serving instance, a worker per pool) in the background
	$(BIN)/mlops up

status: $(STAMP)  ## Show the local stack's components and their health
	$(BIN)/mlops status

down: $(STAMP)  ## Stop everything `mlops up` started
	$(BIN)/mlops down

trigger: $(STAMP)  ## Trigger the retraining-pipeline deployment on the running stack and follow it
	$(BIN)/mlops trigger

browser:  ## Install Debian's Chromium for the UI test when missing (needs root)
	@bash infra/local/install_chromium.sh

postgres:  ## Install Debian's PostgreSQL server when missing (needs root); the tests start their own
	@bash infra/local/install_postgres.sh

test: $(STAMP) browser postgres  ## Run the whole suite (unit, data/model checks, integration, the local stack)
	$(BIN)/python -m pytest

test-unit: $(STAMP) postgres  ## Unit tests and the offline data/model check suites (seconds)
	$(BIN)/python -m pytest tests/unit tests/data_checks tests/model_checks

test-integration: $(STAMP) postgres  ## Integration tests against real Prefect, Dask, MLflow and PostgreSQL
	$(BIN)/python -m pytest tests/integration

test-stack: $(STAMP) browser  ## The local stack end to end: deployments, a killed worker, the UIs
	$(BIN)/python -m pytest tests/stack

reliability: $(STAMP) postgres  ## Every failure scenario, the long ones included (~20 min); rewrites docs/reliability.md
	rm -rf test-artifacts/reliability
	$(BIN)/python -m pytest tests -m reliability ; status=$$? ; \
	$(BIN)/python -m tests.reliability.report && exit $$status

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

benchmark-serving: $(STAMP)  ## Our service vs `mlflow models serve` on the same model, of each family; updates docs/benchmarks.md
	$(BIN)/python benchmarks/serving.py

benchmark-families: $(STAMP)  ## LightGBM vs XGBoost on the same data (time, peak memory, test metric); updates docs/benchmarks.md
	$(BIN)/python benchmarks/families.py

serve: $(STAMP)  ## Serve the demo model's champion on 127.0.0.1:5001 (MLflow scoring protocol)
	$(BIN)/mlops serve fraud-detector

traffic: $(STAMP)  ## Send drifted traffic to the stack's serving instance and follow the retraining it triggers
	$(BIN)/mlops simulate-traffic --drift

benchmark-allocator: $(STAMP)  ## Profiling sweep + leave-one-dataset-out replay + simulator; updates docs/benchmarks.md
	$(BIN)/python benchmarks/allocator.py all

benchmark-tuning: $(STAMP)  ## Warm-started vs cold hyperparameter search on 14 datasets (~45 min on 2 cores); updates docs/benchmarks.md
	$(BIN)/python benchmarks/tuning.py

lock:  ## Re-resolve requirements.in into requirements.lock (needs the registry)
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install --quiet -r requirements.in
	.lock-venv/bin/python -m pip freeze --all | grep -v -e '^pip==' -e '^-e' > requirements.lock
	rm -rf .lock-venv

clean:  ## Stop the local stack, remove local state (.mlops) and the virtual environment
	-@test -x $(BIN)/mlops && $(BIN)/mlops down
	rm -rf .mlops $(VENV)
