#!/usr/bin/env bash
# The README's test command: sets up, builds the node and the worker, and runs every test.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"

"$REPO_ROOT/scripts/setup.sh"

step "building the node (embeds the wasm runtime) and the worker (release)"
build_release

step "building the upgrade runtime (this runtime with its spec version + 1)"
build_upgrade_runtime

# The chain's end-to-end tests mostly wait for blocks: they run beside the pallet tests, whose
# build and run keep both cores busy. Their output is shown when they are joined; the pallet
# tests run at a lower priority so the nodes under test keep their block times.
chain_log="$(mktemp)"
trap 'rm -f "$chain_log"' EXIT
step "end-to-end tests with real nodes and polkadot.js, in the background (joined after the pallet tests)"
(
	started=$(date +%s)
	status=0
	OPENLEDGER_PHASE_LOG='' OPENLEDGER_UPGRADE_BUILT=1 "$REPO_ROOT/scripts/e2e.sh" || status=$?
	echo "the chain end to end took $(( $(date +%s) - started )) s (exit $status)"
	exit "$status"
) >"$chain_log" 2>&1 &
chain_pid=$!

step "unit, pallet, benchmark and try-state tests (the chain end to end beside them)"
# The wasm runtime is not needed by these tests: the crates that build it (runtime/wasm,
# runtime/upgrade) are left out, so neither substrate-wasm-builder nor its C++ is compiled here.
# The node is tested end to end below, as a release binary, not rebuilt here for tests.
pallets=0
nice -n 10 cargo test --workspace --no-fail-fast \
	--exclude openledger-node --exclude openledger-node-cli --exclude openledger-runtime-wasm --exclude openledger-runtime-upgrade \
	--exclude openledger-worker --exclude openledger-engine --exclude openledger-knowledge --exclude openledger-ledger --exclude openledger-tasks --exclude openledger-mcp \
	--features runtime-benchmarks,try-runtime ${OPENLEDGER_CARGO_TIMINGS:+--timings} || pallets=$?

step "end-to-end tests with real nodes and polkadot.js: waiting for them, then their output"
chain=0
wait "$chain_pid" || chain=$?
sed 's/^/  | /' "$chain_log"
[ "$pallets" = 0 ] || die "the unit, pallet, benchmark or try-state tests failed (above)"
[ "$chain" = 0 ] || die "the chain end-to-end tests failed (their output is above, indented)"

step "the worker's crates depend on each other one way (scripts/check-layers.sh)"
"$REPO_ROOT/scripts/check-layers.sh"

step "worker tests: engine, knowledge, ledger and the binary (release: they run the real SmolLM2 model)"
# The same packages as build_worker, so the release build's artifacts serve the tests.
cargo test --release "${WORKER_PACKAGES[@]}" --no-fail-fast ${OPENLEDGER_CARGO_TIMINGS:+--timings}

step "worker end to end: the official openai Python client against a running worker"
"$REPO_ROOT/scripts/worker-e2e.sh"

step "receipts end to end: dev node, worker on SmolLM2, openai client, polkadot.js"
"$REPO_ROOT/scripts/ledger-e2e.sh"

step "the soak, short: two workers killed and a node restarted under mixed clients for 30 s"
# The full soak is 10 minutes (scripts/soak.sh; docs/benchmarks.md); this one checks its
# invariants on every change: nothing delivered unpaid, nothing paid twice, issuance exact.
"$REPO_ROOT/scripts/soak.sh" 30
