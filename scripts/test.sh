#!/usr/bin/env bash
# The README's test command: sets up, builds the node, and runs every test.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"

"$REPO_ROOT/scripts/setup.sh"

step "building the node (release; embeds the wasm runtime)"
cargo build --release -p openledger-node

step "unit, pallet, benchmark and try-state tests"
# The wasm runtime is not needed by these tests; skipping it keeps the feature builds apart.
# The node is tested end to end below, as a release binary, not rebuilt here for tests.
SKIP_WASM_BUILD=1 cargo test --workspace --exclude openledger-node --exclude openledger-worker --no-fail-fast \
	--features runtime-benchmarks,try-runtime

step "worker tests (release: they run the real SmolLM2 model)"
cargo test --release -p openledger-worker --no-fail-fast

step "worker end to end: the official openai Python client against a running worker"
"$REPO_ROOT/scripts/worker-e2e.sh"

step "end-to-end tests with real nodes and polkadot.js"
"$REPO_ROOT/scripts/e2e.sh"

step "receipts end to end: dev node, worker on SmolLM2, openai client, polkadot.js"
cargo build --release -p openledger-worker
"$REPO_ROOT/scripts/ledger-e2e.sh"
