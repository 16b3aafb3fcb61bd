# oidc-filter — build, test and demo.
#
#   make demo    Envoy + the filter + a local OpenID provider + a sample upstream
#   make test    everything CI runs
#   make wasm    dist/oidc_filter.wasm
#   make fuzz    fuzz every parser (FUZZ_SECONDS=60 each)
#

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

WASM      := dist/oidc_filter.wasm
SOURCES   := $(shell find filter/src filter/core/src -name '*.rs') filter/Cargo.toml filter/core/Cargo.toml Cargo.toml $(wildcard Cargo.lock)
NOOP_WASM := dist/noop.wasm
FLOOR_WASM := dist/cookie_floor.wasm
CALLS_WASM := dist/host_calls_floor.wasm

.PHONY: help check wasm test unit lint fmt-check e2e host-tests demo bench bench-host image istio-test clean fuzz fuzz-replay

help:
	@echo "make demo | make test | make wasm | make bench | make image"

wasm: $(WASM)

# filter/build-wasm.sh picks the route: rustup's wasm32 target when installed, else Debian's
# rustc-web with -Zbuild-std; then wasm-opt -Os.
$(WASM): $(SOURCES) filter/build-wasm.sh filter/wasm-exports
	bash filter/build-wasm.sh $@

# The wasm floor `make bench` compares against: a filter that does nothing.
$(NOOP_WASM): filter/examples/noop.rs filter/Cargo.toml Cargo.toml filter/build-wasm.sh
	bash filter/build-wasm.sh $@ --example noop

# The least a cookie-session filter does: read the Cookie header, set one header.
$(FLOOR_WASM): filter/examples/cookie_floor.rs filter/Cargo.toml Cargo.toml filter/build-wasm.sh
	bash filter/build-wasm.sh $@ --example cookie_floor

# The host calls an authenticated request makes, without the filter's work.
$(CALLS_WASM): filter/examples/host_calls_floor.rs filter/Cargo.toml Cargo.toml filter/build-wasm.sh
	bash filter/build-wasm.sh $@ --example host_calls_floor

unit:
	cargo test -p oidc-filter-core -p oidc-filter -p oidc-filter-cli

lint:
	cargo clippy -p oidc-filter-core -p oidc-filter -p oidc-filter-cli --all-targets -- -D warnings
	cargo clippy -p oidc-filter-core -p oidc-filter --lib --release -- -D warnings
	cargo clippy -p host-tests --all-targets -- -D warnings

# The filter's config validation on a JSON config, an Envoy YAML or an Istio WasmPlugin:
#   make check CONFIG=istio/wasmplugin.yaml [CHECK_ARGS="--env NAME=VALUE"]
CONFIG ?= envoy/envoy.yaml
check:
	cargo run -q -p oidc-filter-cli -- check $(CONFIG) $(CHECK_ARGS)

fmt-check:
	cargo fmt --all -- --check

e2e: $(WASM)
	E2E_BROWSER=1 bash envoy/run-e2e.sh

host-tests: $(WASM)
	OIDC_FILTER_WASM=$(CURDIR)/$(WASM) cargo test -p host-tests

# Deterministic cost per request kind: wasmtime fuel consumed by the real module.
bench-host: $(WASM)
	cargo run -q -p host-tests --bin bench-host -- $(WASM)

istio-test:
	bash istio/tests/run.sh

# The OCI image Istio pulls (FROM scratch, /plugin.wasm), built without docker.
image: $(WASM)
	python3 istio/build-image.py --wasm $(WASM) --out dist/oidc-filter-image

# Coverage-guided fuzzing of the parsers (filter/fuzz): each target FUZZ_SECONDS, or a few
# targets with FUZZ_TARGETS="config jwks". Not part of `make test`, which only replays the
# committed seed corpus (fuzz-replay).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?=
fuzz:
	bash filter/fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

fuzz-replay:
	bash filter/fuzz/run.sh --replay

test: fmt-check lint unit fuzz-replay $(WASM) host-tests istio-test e2e
	@echo "make test: all passed"

# Not part of `make test`: about six minutes of load. e.g. BENCH_ARGS="--rounds 5" or "--memory-requests 0".
bench: $(WASM) $(NOOP_WASM) $(FLOOR_WASM) $(CALLS_WASM) bench-host
	bash envoy/bench/run.sh $(BENCH_ARGS)

demo: $(WASM)
	bash envoy/demo.sh

clean:
	rm -rf dist target
