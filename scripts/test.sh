#!/usr/bin/env bash
# The README's test command: sets up, builds the node and the worker, and runs every test.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"

"$REPO_ROOT/scripts/setup.sh"

step "building the node (embeds the wasm runtime) and the worker (release)"
build_release

step "unit, pallet, benchmark and try-state tests"
# The wasm runtime is not needed by these tests: the crates that build it (runtime/wasm,
# runtime/upgrade) are left out, so neither substrate-wasm-builder nor its C++ is compiled here.
# The node is tested end to end below, as a release binary, not rebuilt here for tests.
cargo test --workspace --no-fail-fast \
	--exclude openledger-node --exclude openledger-node-cli --exclude openledger-runtime-wasm --exclude openledger-runtime-upgrade \
	--exclude openledger-worker --exclude openledger-engine --exclude openledger-knowledge --exclude openledger-ledger --exclude openledger-tasks --exclude openledger-mcp \
	--features runtime-benchmarks,try-runtime ${OPENLEDGER_CARGO_TIMINGS:+--timings}

step "the worker's crates depend on each other one way (scripts/check-layers.sh)"
"$REPO_ROOT/scripts/check-layers.sh"

step "worker tests: engine, knowledge, ledger and the binary (release: they run the real SmolLM2 model)"
# The same packages as build_worker, so the release build's artifacts serve the tests.
cargo test --release "${WORKER_PACKAGES[@]}" --no-fail-fast ${OPENLEDGER_CARGO_TIMINGS:+--timings}

step "worker end to end: the official openai Python client against a running worker"
"$REPO_ROOT/scripts/worker-e2e.sh"

step "end-to-end tests with real nodes and polkadot.js"
"$REPO_ROOT/scripts/e2e.sh"

step "receipts end to end: dev node, worker on SmolLM2, openai client, polkadot.js"
"$REPO_ROOT/scripts/ledger-e2e.sh"
