#!/usr/bin/env bash
# The README's test command: sets up, builds the node and the worker, and runs every test.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"

"$REPO_ROOT/scripts/setup.sh"

# The pallet and runtime tests, in the debug profile: primitives, the four pallets (unit,
# property, benchmark and try-state tests), the runtime. The wasm runtime is not needed by them:
# the crates that build it (runtime/wasm, runtime/upgrade) are left out, and the node is tested end
# to end below as a release binary, not rebuilt here for tests.
pallet_tests=(cargo test --workspace --no-fail-fast
	--exclude openledger-node --exclude openledger-node-cli --exclude openledger-runtime-wasm --exclude openledger-runtime-upgrade
	--exclude openledger-worker --exclude openledger-engine --exclude openledger-knowledge --exclude openledger-factory --exclude openledger-ledger --exclude openledger-tasks --exclude openledger-mcp
	--features runtime-benchmarks,try-runtime ${OPENLEDGER_CARGO_TIMINGS:+--timings})

# What runs beside the builds is logged here and shown when it is joined; what still runs when
# a step fails is stopped with everything it started (each runs in a process group of its own).
pallet_build_log="$(mktemp)" pallet_log="$(mktemp)" chain_log="$(mktemp)" llama_log="$(mktemp)" cuda_log="$(mktemp)"
llama_pid='' cuda_pid=''
cleanup() {
	local pid
	for pid in $llama_pid $cuda_pid; do kill -- -"$pid" 2>/dev/null || true; done
	rm -f "$pallet_build_log" "$pallet_log" "$chain_log" "$llama_log" "$cuda_log"
}
trap cleanup EXIT

# llama.cpp, the reference engine of the model-family checks, compiles (once per machine)
# beside the node's build, at a lower priority.
OPENLEDGER_PHASE_LOG="" setsid nice -n 10 "$REPO_ROOT/scripts/families-check.sh" --install-only >"$llama_log" 2>&1 &
llama_pid=$!

# The node's release build leaves a core idle for minutes at a time (the runtime's wasm build,
# then the node crate, each mostly one process), so the pallet tests' debug build runs beside it
# at a lower priority. Cargo locks one profile's directory, not the whole target directory, so
# the two builds do not wait for each other.
step "building the node (release, embeds the wasm runtime), the pallet tests' debug build beside it"
nice -n 10 "${pallet_tests[@]}" --no-run >"$pallet_build_log" 2>&1 &
pallet_build_pid=$!
build_node

step "building the upgrade runtime (this runtime with its spec version + 1)"
build_upgrade_runtime

step "waiting for the pallet tests' build"
pallet_build=0
wait "$pallet_build_pid" || pallet_build=$?
if [ "$pallet_build" != 0 ]; then
	tail -n 60 "$pallet_build_log" | sed 's/^/  | /'
	die "the pallet and runtime tests did not build (the end of their build log is above)"
fi

# The chain's end-to-end tests mostly wait for blocks, and the pallet tests are now built: both
# run beside the worker's release build, which with them keeps both cores busy. The build and the
# pallet tests run at a lower priority so the nodes under test keep their block times.
step "building the worker (release), the chain end to end and the pallet tests beside it"
(
	started=$(date +%s)
	status=0
	OPENLEDGER_PHASE_LOG='' OPENLEDGER_UPGRADE_BUILT=1 "$REPO_ROOT/scripts/e2e.sh" || status=$?
	echo "the chain end to end took $(( $(date +%s) - started )) s (exit $status)"
	exit "$status"
) >"$chain_log" 2>&1 &
chain_pid=$!
(
	started=$(date +%s)
	status=0
	nice -n 10 "${pallet_tests[@]}" || status=$?
	echo "the pallet tests took $(( $(date +%s) - started )) s (exit $status)"
	exit "$status"
) >"$pallet_log" 2>&1 &
pallet_pid=$!
worker=0
# A subshell lowers its own priority, so the build keeps common.sh's functions and settings.
(renice -n 10 -p "$BASHPID" >/dev/null && build_worker) || worker=$?

step "unit, pallet, benchmark and try-state tests, and the chain end to end: waiting for them, then their output"
pallets=0 chain=0
wait "$pallet_pid" || pallets=$?
wait "$chain_pid" || chain=$?
echo "unit, pallet, benchmark and try-state tests:"
sed 's/^/  | /' "$pallet_log"
echo "end-to-end tests with real nodes and polkadot.js:"
sed 's/^/  | /' "$chain_log"
[ "$worker" = 0 ] || die "the worker did not build (above)"
[ "$pallets" = 0 ] || die "the unit, pallet, benchmark or try-state tests failed (their output is above, indented)"
[ "$chain" = 0 ] || die "the chain end-to-end tests failed (their output is above, indented)"

step "the worker's crates depend on each other one way (scripts/check-layers.sh)"
"$REPO_ROOT/scripts/check-layers.sh"

# The cuda build is type-checked beside the remaining steps, at the lowest priority: it mostly
# runs nvcc on candle's kernels, one file at a time, in a target directory of its own.
OPENLEDGER_PHASE_LOG="" setsid nice -n 19 "$REPO_ROOT/scripts/check-cuda.sh" >"$cuda_log" 2>&1 &
cuda_pid=$!

step "worker tests: engine, knowledge, ledger and the binary (release: they run the real SmolLM2 model)"
# The same packages as build_worker, so the release build's artifacts serve the tests.
cargo test --release "${WORKER_PACKAGES[@]}" --no-fail-fast ${OPENLEDGER_CARGO_TIMINGS:+--timings}

step "model families against llama.cpp (scripts/families-check.sh), once llama.cpp is built"
llama=0
wait "$llama_pid" || llama=$?
grep -vE '^ +\[[0-9]+/[0-9]+\]' "$llama_log" | sed 's/^/  | /'
[ "$llama" = 0 ] || die "llama-cpp-python did not install (its output is above, indented)"
"$REPO_ROOT/scripts/families-check.sh"

step "worker end to end: the official openai Python client against a running worker"
"$REPO_ROOT/scripts/worker-e2e.sh"

step "receipts end to end: dev node, worker on SmolLM2, openai client, polkadot.js"
"$REPO_ROOT/scripts/ledger-e2e.sh"

step "the soak, short: two workers killed and a node restarted under mixed clients for 30 s"
# The full soak is 10 minutes (scripts/soak.sh; docs/benchmarks.md); this one checks its
# invariants on every change: nothing delivered unpaid, nothing paid twice, issuance exact.
"$REPO_ROOT/scripts/soak.sh" 30

step "the cuda build type-checks (scripts/check-cuda.sh): waiting for it, then its output"
cuda=0
wait "$cuda_pid" || cuda=$?
grep -vE '^ +(Compiling|Checking|Downloaded|Downloading) ' "$cuda_log" | sed 's/^/  | /'
[ "$cuda" = 0 ] || die "the cuda build does not type-check (its output is above, indented)"
