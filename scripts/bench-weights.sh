#!/usr/bin/env bash
# Regenerates the pallets' weights.rs by running their benchmarks in the real (wasm) runtime on
# this machine. Builds the node with `runtime-benchmarks` first (a separate, long build).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"
STEPS="${STEPS:-50}"
REPEAT="${REPEAT:-20}"
# Which pallets to benchmark, e.g. PALLETS=attribution after changing only that one.
PALLETS="${PALLETS:-datanets registry workers attribution}"

step "building the node with runtime benchmarks"
# frame-benchmarking-cli builds a wasm test runtime of its own, which the wasm builder can only
# find when it resolves that crate's own manifest, not our workspace (which lacks it by default).
env -u WASM_BUILD_WORKSPACE_HINT cargo build --release -p openledger-node --features runtime-benchmarks
NODE_BIN="$CARGO_TARGET_DIR/release/openledger-node"
WASM="$CARGO_TARGET_DIR/release/wbuild/openledger-runtime-wasm/openledger_runtime_wasm.compact.compressed.wasm"

for pallet in $PALLETS; do
	step "benchmarking pallet_$pallet (steps $STEPS, repeat $REPEAT)"
	"$NODE_BIN" benchmark pallet --runtime "$WASM" --genesis-builder-preset dev \
		--pallet "pallet_$pallet" --extrinsic '*' --steps "$STEPS" --repeat "$REPEAT" \
		--heap-pages 4096 --template scripts/weight-template.hbs \
		--output "pallets/$pallet/src/weights.rs"
done
# The benchmark build leaves a benchmark-enabled node behind; rebuild the plain one.
step "rebuilding the plain node"
build_node
step "weights written; review with git diff pallets/*/src/weights.rs"
