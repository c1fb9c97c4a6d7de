#!/usr/bin/env bash
# Refreshes worker/ledger/metadata/openledger.scale, from which the worker's chain client is generated,
# with the metadata (V15) of the runtime the release node embeds. Run it after changing the
# runtime's calls, events, storage or types; the receipts end-to-end test fails until you do.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"
step "building the node"
build_node
work="$(mktemp -d)"; port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$CARGO_TARGET_DIR/release/openledger-node" --dev --base-path "$work" --rpc-port "$port" --port 0 \
	--no-prometheus --no-telemetry >"$work/node.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
step "reading the runtime's metadata V15"
for _ in $(seq 1 120); do
	reply="$(curl -sf -H 'Content-Type: application/json' \
		-d '{"id":1,"jsonrpc":"2.0","method":"state_call","params":["Metadata_metadata_at_version","0x0f000000"]}' \
		"http://127.0.0.1:$port" || true)"
	[ -n "$reply" ] && break
	sleep 0.5
done
[ -n "$reply" ] || die "the node did not answer"
# The call returns SCALE Option<OpaqueMetadata>: 0x01, a compact length, then the metadata.
printf '%s' "$reply" >"$work/reply.json"
python3 - "$work/reply.json" "$REPO_ROOT/worker/ledger/metadata/openledger.scale" <<'PY'
import json, sys
raw = bytes.fromhex(json.load(open(sys.argv[1]))["result"][2:])
assert raw[0] == 1, "the runtime has no metadata V15"
mode = raw[1] & 3
size, offset = {0: (raw[1] >> 2, 1), 1: (int.from_bytes(raw[1:3], "little") >> 2, 2),
                2: (int.from_bytes(raw[1:5], "little") >> 2, 4)}[mode]
data = raw[1 + offset:1 + offset + size]
assert data[:4] == b"meta" and len(data) == size
open(sys.argv[2], "wb").write(data)
print(f"wrote {sys.argv[2]} ({size} bytes)")
PY
