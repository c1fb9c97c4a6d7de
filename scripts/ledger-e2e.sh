#!/usr/bin/env bash
# Receipts end to end (issue: sign, keep, submit, verify, pay): a dev node, the worker on the real
# SmolLM2 model with the demo's DataNet, adapters and prompt, requests through the official
# `openai` npm client, chain state through polkadot.js. Expects the release node and worker built
# (scripts/test.sh does that).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
source "$REPO_ROOT/scripts/demo/lib.sh"
cd "$REPO_ROOT"
[ -x "$NODE_BIN" ] && [ -x "$WORKER_BIN" ] || die "build first: cargo build --release -p openledger-node -p openledger-worker"
[ -d "$E2E/node_modules/openai" ] || (cd "$E2E" && npm ci --no-audit --no-fund)

DEMO_DIR="$(mktemp -d "${TMPDIR:-/tmp}/openledger-ledger-e2e.XXXXXX")"
# Until the tests run, a failure is the setup's: keep its files too.
status=1
cleanup() {
	stop_all
	if [ "$status" -eq 0 ]; then rm -rf "$DEMO_DIR" || true; else echo "files kept in $DEMO_DIR" >&2; fi
}
trap cleanup EXIT
demo_ports 0 0

start_node
prepare_content
setup_chain

step "receipt tests: 402, exact payouts, vouchers, third-party and repeated submission, kill -9, node restart"
status=0
OPENLEDGER_WS="$CHAIN_WS" OPENLEDGER_DEMO_DIR="$DEMO_DIR" OPENLEDGER_WORKER_BIN="$WORKER_BIN" \
	OPENLEDGER_WORKER_PORT="$WORKER_PORT" OPENLEDGER_NODE_BIN="$NODE_BIN" OPENLEDGER_RPC_PORT="$RPC_PORT" \
	OPENLEDGER_P2P_PORT="$P2P_PORT" \
	node --test --test-concurrency=1 "$E2E/receipts.test.mjs" || status=$?
if [ "$status" -ne 0 ]; then
	echo "--- worker log (last 60 lines) ---" >&2; tail -n 60 "$DEMO_DIR/worker.log" >&2 || true
	echo "--- node log (last 30 lines) ---" >&2; tail -n 30 "$DEMO_DIR/node.log" >&2 || true
fi
exit "$status"
