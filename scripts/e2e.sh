#!/usr/bin/env bash
# End-to-end tests against real node processes on random loopback ports, through polkadot.js.
# Expects the release node built (scripts/test.sh does that).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"
NODE_BIN="$CARGO_TARGET_DIR/release/openledger-node"
[ -x "$NODE_BIN" ] || die "build the node first: cargo build --release -p openledger-node -p openledger-worker"
E2E="$REPO_ROOT/scripts/e2e"
[ -d "$E2E/node_modules/@polkadot/api" ] || (cd "$E2E" && npm ci --no-audit --no-fund)

step "building the upgrade runtime (this runtime with its spec version + 1)"
# Built with the node's invocation, so every dependency keeps its features and only
# openledger-runtime-upgrade is new. Its wasm build shares the node's wasm target directory (same
# profile, target and flags): only the runtime crate is compiled again for wasm, not its ~300
# dependencies. Its blob has a directory of its own, so the node's runtime is never replaced.
wbuild="$CARGO_TARGET_DIR/release/wbuild"
mkdir -p "$wbuild/openledger-runtime-wasm/target" "$wbuild/openledger-runtime-upgrade"
[ -L "$wbuild/openledger-runtime-upgrade/target" ] \
	|| { rm -rf "$wbuild/openledger-runtime-upgrade/target"; ln -s ../openledger-runtime-wasm/target "$wbuild/openledger-runtime-upgrade/target"; }
build_node -q -p openledger-runtime-upgrade
UPGRADE_WASM="$wbuild/openledger-runtime-upgrade/openledger_runtime_upgrade.compact.compressed.wasm"
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
