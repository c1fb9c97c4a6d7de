#!/usr/bin/env bash
# Starts a two-validator OpenLedger network (Alice and Bob, Aura + GRANDPA, the `local` chain) on
# loopback and keeps it running until Ctrl-C. RPC: Alice on 9944, Bob on 9945 (override with
# ALICE_RPC / BOB_RPC). Data lives in a temporary directory removed on exit.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"
NODE_BIN="$CARGO_TARGET_DIR/release/openledger-node"
if [ ! -x "$NODE_BIN" ]; then
	step "building the node (first run only)"
	build_node
fi
ALICE_RPC="${ALICE_RPC:-9944}"
BOB_RPC="${BOB_RPC:-9945}"
ALICE_P2P="${ALICE_P2P:-30333}"
BOB_P2P="${BOB_P2P:-30334}"
# A fixed node key gives Alice a known peer id for Bob's bootnode address.
ALICE_NODE_KEY=0000000000000000000000000000000000000000000000000000000000000001
ALICE_PEER_ID=12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp

work="$(mktemp -d)"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; echo "devnet stopped"; }
trap cleanup EXIT
trap 'exit 0' INT TERM

common=(--chain local --no-mdns --no-telemetry --unsafe-force-node-key-generation)
"$NODE_BIN" "${common[@]}" --alice --base-path "$work/alice" --node-key "$ALICE_NODE_KEY" \
	--rpc-port "$ALICE_RPC" --listen-addr "/ip4/127.0.0.1/tcp/$ALICE_P2P" \
	--prometheus-port 9615 >"$work/alice.log" 2>&1 &
pids+=($!)
"$NODE_BIN" "${common[@]}" --bob --base-path "$work/bob" \
	--bootnodes "/ip4/127.0.0.1/tcp/$ALICE_P2P/p2p/$ALICE_PEER_ID" \
	--rpc-port "$BOB_RPC" --listen-addr "/ip4/127.0.0.1/tcp/$BOB_P2P" \
	--prometheus-port 9616 >"$work/bob.log" 2>&1 &
pids+=($!)

step "devnet running: Alice ws://127.0.0.1:$ALICE_RPC, Bob ws://127.0.0.1:$BOB_RPC (logs in $work)"
echo "polkadot.js apps: https://polkadot.js.org/apps/?rpc=ws://127.0.0.1:$ALICE_RPC" >&2
tail -f "$work/alice.log" | grep --line-buffered -E 'Imported|finalized|Idle|Error|error' &
pids+=($!)
wait "${pids[0]}" "${pids[1]}"
