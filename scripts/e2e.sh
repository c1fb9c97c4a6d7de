#!/usr/bin/env bash
# End-to-end tests against real node processes on random loopback ports, through polkadot.js.
# Expects the release node built (scripts/test.sh does that).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"
NODE_BIN="$CARGO_TARGET_DIR/release/openledger-node"
[ -x "$NODE_BIN" ] || die "build the node first: cargo build --release -p openledger-node -p openledger-worker"
E2E="$REPO_ROOT/scripts/e2e"
[ -d "$E2E/node_modules/@polkadot/api" ] || (cd "$E2E" && npm ci --no-audit --no-fund)

# scripts/test.sh builds it with the release build and runs this script beside the pallet tests,
# whose cargo holds the target directory's lock: OPENLEDGER_UPGRADE_BUILT=1 says it is built.
if [ "${OPENLEDGER_UPGRADE_BUILT:-0}" != 1 ]; then
	step "building the upgrade runtime (this runtime with its spec version + 1)"
	build_upgrade_runtime
fi
[ -f "$UPGRADE_WASM" ] || die "no upgrade runtime at $UPGRADE_WASM"

work="$(mktemp -d)"
dev_pid=""
cleanup() { [ -n "$dev_pid" ] && kill "$dev_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

read -r rpc_port p2p_port <<<"$(free_ports 2)"

step "starting a dev node (RPC on 127.0.0.1:$rpc_port)"
"$NODE_BIN" --dev --base-path "$work/dev" --rpc-port "$rpc_port" --port "$p2p_port" \
	--no-prometheus --no-telemetry >"$work/dev.log" 2>&1 &
dev_pid=$!
wait_node_rpc "$rpc_port" "$dev_pid" "$work/dev.log"

step "polkadot.js tests against the dev node (the runtime upgrade last), then the two-validator network"
status=0
OPENLEDGER_WS="ws://127.0.0.1:$rpc_port" OPENLEDGER_NODE="$NODE_BIN" OPENLEDGER_UPGRADE_WASM="$UPGRADE_WASM" \
	node --test --test-concurrency=1 \
	"$E2E"/chain.test.mjs "$E2E"/upgrade.test.mjs "$E2E"/network.test.mjs || status=$?
if [ "$status" -ne 0 ]; then
	echo "--- dev node log (last 50 lines) ---" >&2
	tail -n 50 "$work/dev.log" >&2
fi
exit "$status"
