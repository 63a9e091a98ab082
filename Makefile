# Every target runs the project's own virtual environment (.venv, made by `make setup`), offline, without
# telemetry. `make help` lists them.

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
UV_VERSION := 0.13.9
PORT ?= 5000
# .copier/ (the template's task script) exists only in the template repository.
LINT_PATHS := src tests benchmarks scripts $(wildcard .copier)
ARGS ?=

export PATH := $(BIN):$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export DVC_NO_ANALYTICS := 1
export AWS_EC2_METADATA_DISABLED := true
export UV_PYTHON_DOWNLOADS := never
# PYTHONDONTWRITEBYTECODE is set on some machines: compile at install or every stage recompiles ~3000 modules.
export UV_COMPILE_BYTECODE := 1

# uv from PATH, else a pinned copy installed into .uv/ (works where the system pip is locked down).
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.uv/bin/uv)

.PHONY: help setup repro add-data score experiment exps compare sweep metrics plots ui check-deps test test-all check check-lock lint format push pull dagshub remote sync bench bench-floor clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(CURDIR)/.uv/bin/uv:
	python3 -m venv .uv && .uv/bin/pip install --quiet uv==$(UV_VERSION)

# Optional extras of pyproject.toml, e.g. `make setup EXTRAS=dask` (preprocess.engine: dask). uv sync is exact: a later
# `make setup` without EXTRAS removes the extra's packages again.
EXTRAS ?=

setup: $(if $(findstring /.uv/,$(UV)),$(CURDIR)/.uv/bin/uv) ## Create .venv from uv.lock, turn telemetry off, restore the example data (EXTRAS=dask: + the Dask engine)
	$(UV) sync --frozen $(addprefix --extra ,$(EXTRAS))
	$(BIN)/python scripts/bootstrap.py

# DVC removes a stage's outputs before running it: if one fails, the last good ones (dvc.lock) are put back.
repro: ## Run the pipeline (dvc repro): preprocess -> train -> evaluate; a failed stage's last good outputs put back
	@dvc repro || { python -m segmentation.stages.runner --restore; exit 1; }

# FILE reaches dvc through the environment as typed (as INPUT below). dvc comes from .venv (PATH above): no activation.
unexport FILE
add-data: export SEGMENTATION_DATA_FILE = $(value FILE)
add-data: ## Track your data file with DVC: make add-data FILE=data/raw/customers.csv (then set preprocess.data.path)
	@test -n "$$SEGMENTATION_DATA_FILE" || { echo 'make add-data: name the file: make add-data FILE=data/raw/<name>.csv' >&2; exit 2; }
	@dvc add --quiet "$$SEGMENTATION_DATA_FILE" && echo "make add-data: $$SEGMENTATION_DATA_FILE tracked by DVC (its .dvc file staged in git); now set preprocess.data.path in params.yaml"

# INPUT, OUTPUT and SEPARATOR reach the command through the environment as typed (as OWNER and REPO below): a file
# name with spaces, quotes or $ is data, never shell syntax. SEPARATOR: the input's own (SEPARATOR=, or '\t'),
# default the training data's (preprocess.data.separator, which stays the pipeline's).
unexport INPUT OUTPUT SEPARATOR
score: export SEGMENTATION_SCORE_INPUT = $(value INPUT)
score: export SEGMENTATION_SCORE_OUTPUT = $(value OUTPUT)
score: export SEGMENTATION_SCORE_SEPARATOR = $(value SEPARATOR)
score: ## Score new customers: make score INPUT=new.csv [OUTPUT=scores/new_segments.csv] [SEPARATOR=,] (ID -> segment; drift summary)
	@if [ -z "$$SEGMENTATION_SCORE_INPUT" ]; then echo "error: make score needs INPUT=<csv of new customers>" >&2; exit 2; fi
	python -m segmentation.tools.score --input "$$SEGMENTATION_SCORE_INPUT" $${SEGMENTATION_SCORE_OUTPUT:+--output "$$SEGMENTATION_SCORE_OUTPUT"} $${SEGMENTATION_SCORE_SEPARATOR:+--separator="$$SEGMENTATION_SCORE_SEPARATOR"}

# `make exps`: DVC's table (dvc exp show --csv, printed by scripts/exps_table.py: the same decimals in every column),
# the params that differ between the rows and the key metrics (--keep: even when equal everywhere, as the names);
# --drop removes every other column (the lookahead keeps the params, named by their params.yaml section). As wide as
# the terminal; in a log (no terminal) every column, however wide.
KEY_METRICS := k_best|silhouette|calinski_harabasz|davies_bouldin
EXPS := @python scripts/exps_table.py --hide-workspace --only-changed --keep '^(Experiment|rev)$$|($(KEY_METRICS))$$' \
	--drop '(?!(preprocess|train|evaluate)\.)'

# ARGS and NAMES reach the command through the environment, split by xargs (quotes as in a shell, no $(...) or
# `...` run): an argument is data, never shell syntax.
unexport NAMES
experiment: export SEGMENTATION_EXP_ARGS = $(value ARGS)
experiment: ## Run a DVC experiment in a temporary copy (workspace untouched), then the table: ARGS="-S train.k_max=12"
	printf '%s\n' "--temp $$SEGMENTATION_EXP_ARGS" | xargs dvc exp run
	@echo
	$(EXPS)

# `make sweep`: one queued experiment per combination of ARGS' values, run JOBS at a time and waited for (at most
# SWEEP_WAIT_S); scripts/sweep.py says how. ARGS and JOBS are data (as above).
JOBS ?= 1
SWEEP_WAIT_S ?= 7200
unexport JOBS SWEEP_WAIT_S
sweep: export SEGMENTATION_EXP_ARGS = $(value ARGS)
sweep: export SEGMENTATION_SWEEP_JOBS = $(value JOBS)
sweep: export SEGMENTATION_SWEEP_WAIT_S = $(value SWEEP_WAIT_S)
sweep: ## Queue one DVC experiment per combination, run the queue (JOBS=2: two at a time), then the table: ARGS="-S train.k_max=8,10"
	@python scripts/sweep.py
	@echo
	$(EXPS)

exps: ## The experiments: changed params and key metrics (all columns: dvc exp show)
	$(EXPS)

compare: export SEGMENTATION_NAMES = $(value NAMES)
# After each experiment's `dvc exp diff`, scripts/compare_segments.py: how alike HEAD's and its segments are.
compare: ## Each experiment beside HEAD (dvc exp diff): changed params and metrics, segment sizes, the segments' adjusted Rand index (NAMES="a b" to pick)
	@set -f; names=$$(printf '%s\n' "$$SEGMENTATION_NAMES" | xargs -n 1); names=$${names:-$$(dvc exp ls --name-only)}; \
	[ -n "$$names" ] || echo 'no experiment of HEAD yet: make experiment ARGS="-S train.k_max=12"'; \
	for name in $$names; do dvc exp diff HEAD "$$name" && python scripts/compare_segments.py "$$name" || exit; echo; done

metrics: ## Show metrics and params differences against HEAD
	dvc metrics show
	dvc params diff

plots: ## Render the DVC plots to dvc_plots/index.html
	dvc plots show

# Without MLflow's job runner (10 processes, ~2.3 GiB) and with one worker (the default 4: 7 processes, ~1.3 GiB,
# up in ~14 s): 2 processes, ~0.5 GiB, up in ~7 s.
# tests/test_ui.py runs this target and loads the experiment and run pages (endpoints and headless Chromium).
ui: ## Open the MLflow UI over the local store on http://127.0.0.1:5000 (PORT=...): pipeline runs, stages, models
	@echo "MLflow UI (model training): http://127.0.0.1:$(PORT)/#/experiments?workflowType=machine_learning"
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port $(PORT) --workers 1

check-deps: $(if $(findstring /.uv/,$(UV)),$(CURDIR)/.uv/bin/uv) ## Check that the installed packages' requirements agree (uv pip check on .venv)
	$(UV) pip check --python $(BIN)/python

# The slow suites carry markers (pyproject.toml): `make test` leaves them to `make test-all`.
FAST := not pipeline and not remote and not template and not ui and not dask
# `make test` runs on WORKERS processes (pytest-xdist), each test file whole on one of them (its module fixtures made
# once). `make test-all` stays serial: its fault tests time their kills against a loaded machine.
WORKERS ?= 2

test: ## Fast feedback: unit and bad-input tests, report in Chromium (skipped without it), scoring, your pipeline
	$(BIN)/python -m pytest -m "$(FAST)" -n $(WORKERS) --dist loadfile

test-all: ## The full suite, what CI runs (~26 min on 2 cores): + end to end, faults, DagsHub, MLflow UI, Dask, template
	$(BIN)/python -m pytest -n $(WORKERS) --dist loadfile

# `make check`: first dvc.lock against the working tree (scripts/check_lock.py: each dep or params section `dvc status`
# finds modified), then a fresh clone of HEAD (this DVC cache, its own MLflow store): dvc repro, then dvc repro
# --force, must leave git status empty.
check-lock: ## Check that dvc.lock matches the code, params and data (the first half of make check)
	@python scripts/check_lock.py

check: check-lock ## Check that the committed results reproduce: dvc.lock up to date, a fresh clone's repro leaves git clean
	@cache=$$(dvc cache dir) && tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	git clone -q --no-hardlinks . "$$tmp/clone" && cd "$$tmp/clone" && dvc cache dir --local "$$cache" && \
	export MLFLOW_TRACKING_URI="sqlite:///$$tmp/clone/mlflow.db" DVC_SITE_CACHE_DIR="$$tmp/site" && \
	for data in $$(git ls-files '*.dvc'); do dvc checkout -q "$$data" || dvc pull -q "$$data" || { \
	  echo "error: $$data: data neither in the DVC cache nor on the remote; run dvc push" >&2; exit 1; }; done && \
	for repro in repro "repro --force"; do \
	  dvc $$repro > "$$tmp/log" 2>&1 || { tail -n 3 "$$tmp/log" >&2; \
	    echo "error: dvc $$repro failed in a fresh clone" >&2; exit 1; }; \
	  changed=$$(git status --porcelain); [ -z "$$changed" ] || { sed "s/^/error: after dvc $$repro: /" \
	    <<< "$$changed" >&2; echo "fix: commit every result of \`dvc repro\` (dvc.lock, metrics/, reports/)" >&2; \
	    exit 1; }; done && echo "check: in a fresh clone, dvc repro and dvc repro --force leave git status empty"

lint: ## Check code style with ruff (lint + format check)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

format: ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix $(LINT_PATHS)
	$(BIN)/ruff format $(LINT_PATHS)

push: ## Push the raw data and every pipeline output to the default DVC remote
	dvc push

pull: ## Pull the raw data and every pipeline output from the default DVC remote
	dvc pull

# Remote tracking is an optional part of a generated project (copier's remote_tracking): without it, one line says so.
REMOTE_PART = @test -d src/segmentation/tracking/remote || { echo 'make $@: this project was generated without \
remote tracking (runs kept in mlruns-pending/ are recorded by the next stage); add it with \
`copier update --trust --defaults --data remote_tracking=true`' >&2; exit 1; }

# OWNER, REPO and S3 reach the command through the environment as typed ($(value ...): not expanded by make, not
# exported as make would expand them, never on a shell command line), so a value holding `...`, $(...) or quotes
# runs nothing; segmentation.tracking.remote checks the names. Never write $(OWNER) in a recipe.
unexport OWNER REPO S3
dagshub: export SEGMENTATION_DAGSHUB_OWNER = $(value OWNER)
dagshub: export SEGMENTATION_DAGSHUB_REPO = $(value REPO)
dagshub: export SEGMENTATION_DAGSHUB_S3 = $(value S3)
dagshub: ## Use DagsHub: make dagshub OWNER=me REPO=segments [S3=1] (token from DAGSHUB_USER_TOKEN)
	$(REMOTE_PART)
	python -m segmentation.tracking.remote dagshub

remote: ## Show where data and runs go (DVC remotes, MLflow tracking), without secrets
	$(REMOTE_PART)
	python -m segmentation.tracking.remote show

sync: ## Deliver MLflow runs kept locally (tracker unreachable) to the remote tracker
	$(REMOTE_PART)
	python -m segmentation.tracking.remote sync

bench: ## Speed and scale: the seed's script vs dvc repro, example to 1M rows (LARGE=1: also 3M and 10M rows); local vs dask engine at 1M (LARGE=1: 10M)
	$(BIN)/python benchmarks/bench_scale.py $(if $(LARGE),--large) $(ARGS)

bench-floor: ## The example's fixed costs: DVC's own, the libraries' import, MLflow's, beside the seed's script
	$(BIN)/python benchmarks/bench_floor.py $(ARGS)

clean: ## Remove the local MLflow store and Python caches (keeps data, DVC cache and .venv)
	rm -rf mlflow.db mlruns .pytest_cache .ruff_cache dvc_plots
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
