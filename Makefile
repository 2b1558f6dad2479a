# equiserve: every target creates and reuses the virtual environment by itself.
SHELL := /bin/bash
PY_BOOT ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTO_SRC := $(wildcard protos/equiserve/v1/*.proto)
PROTO_OUT := services/api
PROTO_STAMP := $(PROTO_OUT)/.generated

.PHONY: venv run demo-models bench-scheduler test test-slow lint typecheck proto bench bench-tp bench-serve \
        serve clean help
.PHONY: monitor load-test soak

help:
	@echo "make run    - end-to-end campaign demo: Ray, Serve, gateway, scheduler (creates .venv)"
	@echo "make demo-models - model library alone: predict the bundled sample set"
	@echo "make bench-scheduler - scheduler dispatch rate, 1M-structure campaign RSS (JSON)"
	@echo "make test   - lint, type-check and run the test suite"
	@echo "make bench  - model-library benchmark (sevenn vs e3nn vs fused)"
	@echo "make bench-tp - TP backend microbenchmarks + SevenNet-0 speed/error frontier"
	@echo "make serve  - run Ray Serve + the gRPC gateway locally in the foreground"
	@echo "make bench-serve - served vs in-process throughput, latency (JSON)"

venv: $(STAMP)

# torch is installed first and alone so that no other requirement can pull a
# different (CUDA) build; pyproject.toml pins the same version.
$(STAMP): pyproject.toml
	@command -v $(PY_BOOT) >/dev/null || { echo "need $(PY_BOOT) on PATH"; exit 1; }
	test -x $(PY) || $(PY_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

proto: $(PROTO_STAMP)

$(PROTO_STAMP): $(STAMP) $(PROTO_SRC)
	@mkdir -p $(PROTO_OUT)
	@if [ -n "$(PROTO_SRC)" ]; then \
	  $(PY) -m grpc_tools.protoc -Iprotos --python_out=$(PROTO_OUT) \
	    --pyi_out=$(PROTO_OUT) --grpc_python_out=$(PROTO_OUT) $(PROTO_SRC); \
	  touch $(PROTO_OUT)/equiserve/v1/__init__.py; \
	fi
	touch $(PROTO_STAMP)

run: $(STAMP) proto
	$(PY) -m services.demo

# the model library alone: predict its sample set, print a table
demo-models: $(STAMP)
	$(PY) -m models.demo

# scheduler dispatch rate and a 1,000,000-structure campaign's RSS (stand-in model)
bench-scheduler: $(STAMP) proto
	$(PY) -m services.scheduler.bench --out bench_results/scheduler.json

lint: $(STAMP) proto
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check models services load_tests tests scripts

typecheck: $(STAMP) proto
	$(VENV)/bin/mypy models services load_tests

test: lint typecheck
	$(PY) -m pytest -q

test-slow: $(STAMP) proto
	$(PY) -m pytest -q -m slow

# TorchSim (a peer measured side by side) comes from the optional `bench` extra.
$(VENV)/.bench-installed: $(STAMP)
	$(PY) -m pip install -q -e '.[dev,bench]'
	touch $@

bench: $(VENV)/.bench-installed
	$(PY) -m models.bench --out bench_results/bench.json $(BENCH_ARGS)

# Tensor-product backends (issue 3): microbenchmarks and the SevenNet-0 speed/error
# frontier, CSV/JSON/PNG to bench_results/tp_*. BENCH_TP_ARGS="--device cuda" etc.
bench-tp: $(STAMP)
	$(PY) -m models.bench_tp --out bench_results $(BENCH_TP_ARGS)

# The platform in the foreground: local Ray, Serve deployments, gRPC gateway on
# 127.0.0.1:50051, metrics on 127.0.0.1:9464. A development API key unless one is set.
serve: $(STAMP) proto
	@echo "gRPC on $${EQUISERVE_GRPC_ADDRESS:-127.0.0.1:50051}, x-api-key dev-key by default"
	EQUISERVE_API_KEYS="$${EQUISERVE_API_KEYS:-dev:dev-key}" $(PY) -m services.serve_main

# gRPC + Ray Serve against the in-process model, side by side; JSON to bench_results/.
bench-serve: $(STAMP) proto
	$(PY) -m services.bench_serve --out bench_results/serve.json

# Monitoring and load (issue 6). monitor: a local Prometheus (Debian's package) on
# 127.0.0.1:9090 scraping the local platform's /metrics (EQUISERVE_METRICS_PORT).
monitor:
	deploy/local/monitor.sh

# load-test: start the local platform, run the three scenarios (20 s each), write
# load_results/loadtest.{json,png}. soak: 10 minutes, no errors, flat memory.
load-test: $(STAMP) proto
	$(PY) -m load_tests.run_local --duration 20 --out load_results

soak: $(STAMP) proto
	$(PY) -m load_tests.soak --duration 600 --out load_results/soak

clean:
	rm -rf $(VENV) $(PROTO_OUT)/equiserve/v1 $(PROTO_STAMP) bench_results .pytest_cache
