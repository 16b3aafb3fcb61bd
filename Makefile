# oidc-filter — build, test and demo.
#
#   make demo    Envoy + the filter + a local OpenID provider + a sample upstream
#   make test    everything CI runs
#   make wasm    dist/oidc_filter.wasm
#
# The wasm build uses rustup's wasm32 target when one is installed; otherwise Debian's
# rustc-web/cargo-web/rust-web-src with -Zbuild-std (installed on demand).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

WASM      := dist/oidc_filter.wasm
WASM_TARGET_DIR := target/wasm
SOURCES   := $(shell find filter/src -name '*.rs') filter/Cargo.toml Cargo.toml $(wildcard Cargo.lock)
APT_WASM  := rustc-web cargo-web rust-web-src lld-19

.PHONY: help wasm test unit lint fmt-check e2e host-tests demo bench bench-host image istio-test clean tools-wasm

help:
	@echo "make demo | make test | make wasm | make bench | make image"

wasm: $(WASM)

# Picks the build route: rustup's wasm32-unknown-unknown, rustup's wasm32-wasip1, or Debian's
# rustc-web with build-std.
$(WASM): $(SOURCES)
	@mkdir -p dist
	@installed="$$(rustup target list --installed 2>/dev/null || true)"; \
	if grep -qx wasm32-unknown-unknown <<<"$$installed"; then \
	  echo "wasm: rustup target wasm32-unknown-unknown"; \
	  cargo build --release -p oidc-filter --target wasm32-unknown-unknown --target-dir $(WASM_TARGET_DIR); \
	  out=$(WASM_TARGET_DIR)/wasm32-unknown-unknown/release/oidc_filter.wasm; \
	elif grep -qx wasm32-wasip1 <<<"$$installed"; then \
	  echo "wasm: rustup target wasm32-wasip1"; \
	  cargo build --release -p oidc-filter --target wasm32-wasip1 --target-dir $(WASM_TARGET_DIR); \
	  out=$(WASM_TARGET_DIR)/wasm32-wasip1/release/oidc_filter.wasm; \
	else \
	  echo "wasm: no rustup wasm32 target; using Debian rustc-web with -Zbuild-std"; \
	  $(MAKE) --no-print-directory tools-wasm; \
	  linker=$$(command -v rust-lld || command -v wasm-ld-19 || command -v wasm-ld); \
	  RUSTC_BOOTSTRAP=1 RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc \
	  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=$$linker \
	  /usr/bin/cargo build --release -p oidc-filter --target wasm32-unknown-unknown \
	    --target-dir $(WASM_TARGET_DIR)/debian -Zbuild-std=std,panic_abort; \
	  out=$(WASM_TARGET_DIR)/debian/wasm32-unknown-unknown/release/oidc_filter.wasm; \
	fi; \
	cp "$$out" $@; \
	echo "wasm: $@ $$(stat -c %s $@) bytes"

tools-wasm:
	@if [ ! -x /usr/bin/cargo ] || [ ! -d /usr/lib/rustlib/src/rust/library ] || ! { command -v rust-lld || command -v wasm-ld-19; } >/dev/null; then \
	  echo "installing $(APT_WASM) (apt)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_WASM) >/dev/null; \
	fi

unit:
	cargo test -p oidc-filter

lint:
	cargo clippy -p oidc-filter --all-targets -- -D warnings
	cargo clippy -p oidc-filter --lib --release -- -D warnings

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

test: fmt-check lint unit $(WASM) host-tests istio-test e2e
	@echo "make test: all passed"

demo: $(WASM)
	bash envoy/demo.sh

clean:
	rm -rf dist target
