# Property-Friends valuation platform. `make` lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

PYTHON ?= python3
VENV := .venv
CHECKOV_VENV := .venv-checkov
BIN := $(CURDIR)/$(VENV)/bin
STATE := $(CURDIR)/.run
LOGS := $(STATE)/logs
DATA ?=
SAMPLE_DATA := $(CURDIR)/data
SOURCE = $(if $(DATA),$(DATA),$(SAMPLE_DATA))
MODEL_PORT ?= 5001
GATEWAY_PORT ?= 8000
MLFLOW_UI_PORT ?= 5000
CONTROLLER_METRICS_PORT ?= 9101
API_KEY_FILE := $(STATE)/api-key
STARTUP_SECONDS ?= 90

export PATH := $(BIN):$(PATH)
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
export MLFLOW_EXPERIMENT_NAME ?= property-friends
export STATE_DIR ?= $(STATE)
export MODEL_PORT GATEWAY_PORT CONTROLLER_METRICS_PORT

.PHONY: help
help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# Exactly the versions of uv.lock (exported with hashes to requirements/dev.txt), then the
# project itself, editable.
$(VENV)/.installed: pyproject.toml requirements/dev.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes --no-deps -r requirements/dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

.PHONY: install
install: $(VENV)/.installed ## create or update the virtualenv (.venv) from the lock file

.PHONY: lock
lock: install ## resolve uv.lock again from pyproject.toml; export requirements/*.txt from it
	$(BIN)/uv lock
	$(BIN)/uv export --frozen --no-emit-project --quiet -o requirements/gateway.txt
	$(BIN)/uv export --frozen --no-emit-project --quiet --extra model -o requirements/model.txt
	$(BIN)/uv export --frozen --no-emit-project --quiet --all-extras -o requirements/dev.txt

$(CHECKOV_VENV)/.installed: docker/kubernetes/requirements-checkov.txt
	test -d $(CHECKOV_VENV) || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet -r $<
	touch $@

.PHONY: checkov
checkov: $(CHECKOV_VENV)/.installed ## checkov (Kubernetes manifests) in a venv of its own (.venv-checkov)

# Installs the Debian packages the shell variable `missing` names (as root), or says how.
APT_INSTALL_MISSING = if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "missing:$$missing; install with: sudo apt-get update && sudo apt-get install -y$$missing"; exit 1; fi; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq$$missing >/dev/null

.PHONY: system-deps
system-deps: ## install what the tests run when missing: PostgreSQL, Prometheus (promtool), Alertmanager (amtool), Java (Spark)
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v amtool >/dev/null || missing="$$missing prometheus-alertmanager"; \
	command -v java >/dev/null || missing="$$missing openjdk-17-jre-headless"; \
	$(APT_INSTALL_MISSING)

$(SAMPLE_DATA)/train.csv: | install
	$(BIN)/python -m steps.generate --out $(SAMPLE_DATA)

.PHONY: data
data: $(SAMPLE_DATA)/train.csv ## generate the synthetic sample CSVs into data/

.PHONY: pipeline
pipeline: install $(if $(DATA),,data) ## ingest, train, evaluate, promote (DATA=folder or SQLAlchemy URL)
	$(BIN)/mlflow run . -e main --env-manager local -P source=$(SOURCE)

.PHONY: run
run: pipeline controller gateway ## everything from nothing: venv, data, pipeline, model server pool, gateway
	@echo
	@echo "  model servers $$($(BIN)/python -c "import json; print(' '.join(json.load(open('$(STATE)/served-model.json'))['servers']))")"
	@echo "  controller    http://127.0.0.1:$(CONTROLLER_METRICS_PORT)/metrics   (logs: $(LOGS)/controller.log)"
	@echo "  gateway       http://127.0.0.1:$(GATEWAY_PORT)   docs: http://127.0.0.1:$(GATEWAY_PORT)/docs"
	@echo "  API key       $(API_KEY_FILE)"
	@echo "  MLflow UI     make mlflow-ui  (http://127.0.0.1:5000)"
	@echo "  try:  curl -s http://127.0.0.1:$(GATEWAY_PORT)/invocations -H \"X-API-Key: \$$(cat $(API_KEY_FILE))\" \\"
	@echo "          -H 'Content-Type: application/json' \\"
	@echo "          -d '{\"dataframe_records\": [{\"type\": \"departamento\", \"sector\": \"las condes\", \"net_usable_area\": 140, \"net_area\": 170, \"n_rooms\": 3, \"n_bathroom\": 2, \"latitude\": -33.4172, \"longitude\": -70.5476}]}'"
	@echo "  stop: make stop"

$(API_KEY_FILE):
	mkdir -p $(STATE) && umask 077 && $(BIN)/python -c "import secrets; print(secrets.token_urlsafe(32), end='')" > $@

.PHONY: serve
serve: install ## start one model server on MODEL_URI, without the controller (follows no promotion)
	@$(MAKE) --no-print-directory stop-one NAME=model-server
	mkdir -p $(LOGS)
	setsid nohup $(BIN)/python -m serving.serve > $(LOGS)/model-server.log 2>&1 & echo $$! > $(STATE)/model-server.pid
	@$(MAKE) --no-print-directory wait-for URL=http://127.0.0.1:$(MODEL_PORT)/ping NAME=model-server

.PHONY: controller
controller: install ## start the rollout controller and its pool of model servers (MODEL_SERVERS) in the background
	@$(MAKE) --no-print-directory stop-one NAME=controller
	mkdir -p $(LOGS)
	setsid nohup $(BIN)/python -m serving.controller > $(LOGS)/controller.log 2>&1 & echo $$! > $(STATE)/controller.pid
	@target=$$($(BIN)/python -c "from steps.registry import resolve; from config.settings import Settings; print(resolve(Settings.from_env().model_uri)['version'])" 2>/dev/null); \
	for i in $$(seq 1 $$(( $(STARTUP_SECONDS) * 3 ))); do \
	  if grep -qs '"servers"' $(STATE)/served-model.json && grep -qs "\"version\": \"$$target\"" $(STATE)/served-model.json; then \
	    echo "model server pool is up on version $$target"; exit 0; fi; \
	  if ! kill -0 $$(cat $(STATE)/controller.pid) 2>/dev/null; then break; fi; sleep 1; done; \
	echo "no model server pool on version $$target; last lines of $(LOGS)/controller.log:"; tail -20 $(LOGS)/controller.log; exit 1

.PHONY: gateway
gateway: install $(API_KEY_FILE) ## start the gateway (gunicorn) in the background
	@$(MAKE) --no-print-directory stop-one NAME=gateway
	mkdir -p $(LOGS)
	GATEWAY_API_KEYS="$${GATEWAY_API_KEYS:-local:sha256:$$(sha256sum < $(API_KEY_FILE) | cut -d' ' -f1)}" \
	  setsid nohup $(BIN)/gunicorn -c gateway/gunicorn.conf.py > $(LOGS)/gateway.log 2>&1 & echo $$! > $(STATE)/gateway.pid
	@$(MAKE) --no-print-directory wait-for URL=http://127.0.0.1:$(GATEWAY_PORT)/health NAME=gateway

.PHONY: wait-for
wait-for:
	@for i in $$(seq 1 $(STARTUP_SECONDS)); do \
	  if curl -sf -o /dev/null $(URL); then echo "$(NAME) is up"; exit 0; fi; \
	  if ! kill -0 $$(cat $(STATE)/$(NAME).pid) 2>/dev/null; then break; fi; sleep 1; done; \
	echo "$(NAME) did not start; last lines of $(LOGS)/$(NAME).log:"; tail -20 $(LOGS)/$(NAME).log; exit 1

.PHONY: stop
stop: ## stop the gateway, the controller and its model servers started by make run
	@$(MAKE) --no-print-directory stop-one NAME=gateway
	@$(MAKE) --no-print-directory stop-one NAME=controller
	@$(MAKE) --no-print-directory stop-one NAME=model-server
	@if [ -f $(STATE)/served-model.json ]; then $(BIN)/python -m serving.controller --stop; fi

.PHONY: stop-one
stop-one:
	@pidfile=$(STATE)/$(NAME).pid; \
	if [ -f $$pidfile ]; then \
	  pid=$$(cat $$pidfile); \
	  if kill -TERM -- -$$pid 2>/dev/null; then \
	    for i in $$(seq 1 20); do kill -0 -- -$$pid 2>/dev/null || break; sleep 0.5; done; \
	    kill -KILL -- -$$pid 2>/dev/null || true; echo "stopped $(NAME)"; fi; \
	  rm -f $$pidfile; fi

.PHONY: rollback
rollback: install ## make the previous champion the champion again (the controller rolls it out)
	$(BIN)/mlflow run . -e rollback --env-manager local

.PHONY: accuracy
accuracy: install ## live accuracy per model version from the realized prices (MLflow run, gauges)
	$(BIN)/mlflow run . -e accuracy --env-manager local

.PHONY: mlflow-ui
mlflow-ui: install ## MLflow UI on http://127.0.0.1:5000 (runs, registry, aliases)
	$(BIN)/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --host 127.0.0.1 --port $(MLFLOW_UI_PORT)

.PHONY: lint
lint: install ## ruff (rules and format), mypy, hadolint; .pre-commit-config.yaml runs the same
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint docker/Dockerfile

.PHONY: image-deps
image-deps: ## install what the image suite runs when missing: Docker engine (docker.io), debootstrap
	@missing=""; \
	command -v dockerd >/dev/null || missing="$$missing docker.io"; \
	command -v debootstrap >/dev/null || missing="$$missing debootstrap"; \
	$(APT_INSTALL_MISSING)

.PHONY: test
test: install system-deps checkov ## the test suite: unit and integration (real servers on 127.0.0.1)
	$(BIN)/pytest -m "not slow and not images"

.PHONY: test-slow
test-slow: install system-deps ## the slow suites (load, soak, faults)
	$(BIN)/pytest -m slow

.PHONY: test-images
test-images: install system-deps image-deps ## build both images and run their containers as compose does (starts dockerd if none runs)
	$(BIN)/pytest -m images --timeout 3600 tests/images

.PHONY: bench
bench: install ## benchmarks: in-process vs model server vs gateway; saves bench-results/bench.json
	$(BIN)/python -m tests.benchmarks.run --output bench-results/bench.json

.PHONY: model-table
model-table: install ## test MAE of every candidate and baseline on two generated worlds (Markdown)
	$(BIN)/python -m tests.benchmarks.models --variant realistic --variant noisy

.PHONY: bench-batch
bench-batch: install system-deps ## batch scoring of 1,000,000 listings: pandas vs Spark (local)
	$(BIN)/python -m tests.benchmarks.batch --output bench-results/batch.json

K8S_RULES := docker/kubernetes/base/prometheus-rule.yaml

.PHONY: kubernetes-rules
kubernetes-rules: install ## write the Kubernetes PrometheusRule from docker/prometheus/alerts.yml
	$(BIN)/python docker/kubernetes/prometheus-rule.py > $(K8S_RULES)

.PHONY: clean
clean: stop ## remove generated data, runs, models and state (keeps .venv)
	rm -rf $(SAMPLE_DATA) mlruns mlartifacts mlflow.db $(STATE)
