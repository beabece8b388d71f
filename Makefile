# smoothexplain — every entry point. `make run` and `make test` work on a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# pip prints one warning per missing local mirror folder on these machines; drop only those lines.
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
QUIET := 2>&1 | { grep -v '^WARNING: Location' || true; }

.PHONY: help install java browser protos model run stop test lint unit bench bench-gpu report report-real soak clean

help:
	@echo "make run     install, build the demo model, start TorchServe, explain one image"
	@echo "make test    install and run the whole test suite (lint, types, unit, integration)"
	@echo "make bench   benchmarks (results in bench/results/, summarised in README.md)"
	@echo "make bench-gpu  the performance benchmarks on a CUDA device"
	@echo "make report  explanation quality report (docs/quality.md, docs/figures/; hours on 2 cores)"
	@echo "make report-real  only its pretrained-network part (EfficientNet-Lite0/1/2 on photographs)"
	@echo "make soak    long reliability runs (docs/reliability.md; ~20 min, not in CI)"
	@echo "make stop    stop the server started by make run"

install: $(STAMP) java protos

# Generated gRPC/protobuf modules (git-ignored); a no-op when the .proto files are unchanged.
protos: $(STAMP)
	$(BIN)/python tools/gen_protos.py

# The demo models: the shapes CNN (trained once, ~90 s on 2 cores) archived three ways, and the
# pretrained EfficientNet-Lite0 archived through `smoothexplain archive`.
model: install
	@echo "== demo models: the shapes CNN (trained once, about 90 s on 2 cores), three archives"
	$(BIN)/python -m smoothexplain.demo.archive --artifacts artifacts/demo --store model_store
	@echo "== the pretrained EfficientNet-Lite0, through smoothexplain archive (checked first)"
	$(BIN)/python -m smoothexplain.demo.lite0 --artifacts artifacts/lite0 --store model_store

$(STAMP): pyproject.toml constraints.txt
	@echo "== installing into $(VENV): PyTorch 2.14.1, TorchServe 0.12.0 and the rest (minutes, once)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip $(QUIET)
	$(PIP) install -c constraints.txt torch==2.14.1 torchvision==0.29.1 $(QUIET)
	$(PIP) install -c constraints.txt -e '.[serve,demo,dev]' $(QUIET)
	touch $(STAMP)

# TorchServe needs Java 17; install Debian's headless JRE where none is on PATH.
java:
	@command -v java >/dev/null || { apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q openjdk-17-jre-headless; }

# The explorer's browser tests (tests/integration/test_explorer.py) drive Debian's Chromium
# through its chromedriver; install both where either is missing.
browser:
	@{ command -v chromium && command -v chromedriver; } >/dev/null || { apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
		chromium chromium-driver; }

# Start TorchServe in the background (run/), explain a generated image over gRPC, print where.
run: model
	$(BIN)/python -m smoothexplain.demo.run --run-dir run --store model_store

stop:
	@if [ -x $(BIN)/smoothexplain ]; then $(BIN)/smoothexplain stop --workdir run/server; fi

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

unit: install
	$(BIN)/pytest tests/unit

test: install lint model browser
	$(BIN)/pytest

# Performance benchmarks on CPU (about 15 min on 2 cores), then README tables + plots.
PERF_BENCH := engine fusion memory serving admission_lite0
bench: install model
	for b in $(PERF_BENCH); do $(BIN)/python bench/$$b.py; done
	$(BIN)/python bench/ig_sampling.py  # smoothed IG error vs passes (~5 min on 2 idle cores)
	$(BIN)/python bench/sampling.py     # iid / antithetic / QMC / adaptive stopping (~15 min)
	$(BIN)/python bench/precision.py    # bf16 / fp16 autocast vs fp32
	$(BIN)/python bench/report.py

# The same on a CUDA device (ResNet-50 TF32/bf16/channels_last, cudnn.benchmark); without one,
# a CPU smoke run of the same code paths (nothing written to bench/results/).
bench-gpu: install model
	for b in $(PERF_BENCH) precision sampling; do $(BIN)/python bench/$$b.py --device cuda; done
	$(BIN)/python bench/report.py

# Long reliability runs (not in CI; about 20 min on 2 cores): bad-input corpus under load, load
# at k = 1, 4, 8, 16, repeated faults, a full metrics disk (needs root for a tmpfs mount).
# Figures go into docs/reliability.md and docs/reliability-soak.json.
soak: install model
	cd tests/integration && ../../$(BIN)/python -m reliability.soak

# Explanation quality report: Quantus and matplotlib come with the dev extra (via `report`).
# Both parts: the shapes models (75 min on 2 cores) and the pretrained networks (report-real).
# Each keeps its own cache in artifacts/quality; the report is rendered from both, so either
# part can be re-measured alone (QUALITY_FLAGS=--quick for a few-minute trial run,
# QUALITY_FLAGS=--render-only to re-render from the caches).
QUALITY := PYTHONPATH=quality $(BIN)/python -m smoothexplain_quality.run --docs docs \
	--cache artifacts/quality $(QUALITY_FLAGS)
report: install model
	$(QUALITY)

# The pretrained part alone: EfficientNet-Lite0/1/2 on the 8 shipped photographs; the shapes
# part of docs/quality.md is re-rendered from its cache, or kept as it is without one. Each
# network is kept in artifacts/quality/real-networks/ as it finishes: a cut-off run, started
# again with the same plan, measures only the networks it had not finished.
report-real: install
	$(QUALITY) --part real

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
