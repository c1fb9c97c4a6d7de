#!/usr/bin/env bash
# What a storm of cheap chain events costs a serving worker (docs/benchmarks.md): the demo's
# chain and worker, then BLOCKS blocks of DataNet events that change nothing it serves (another
# DataNet's metadata, pending contributions: scripts/bench/storm.mjs), then one that does (an
# item of its DataNet accepted). Prints the worker's CPU time over the storm and its DataNet
# reloads. Then a registry storm: TOOLS MCP tools registered, and BLOCKS blocks of one tool's
# price changes and registration commitments; prints the worker's CPU time over it.
# WORKER_BIN=path measures another build of the worker against the same chain.
#   bash scripts/bench-storm.sh [BLOCKS] [TOOLS]      (defaults 60, 200)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
worker_override="${WORKER_BIN:-}"
source "$REPO_ROOT/scripts/demo/lib.sh"
cd "$REPO_ROOT"
WORKER_BIN="${worker_override:-$WORKER_BIN}"
BLOCKS="${1:-60}"
TOOLS="${2:-200}"
[ -x "$NODE_BIN" ] && [ -x "$WORKER_BIN" ] || die "build first: source scripts/common.sh; build_node; build_worker"

DEMO_DIR="$(mktemp -d "${TMPDIR:-/tmp}/openledger-storm.XXXXXX")"
trap 'stop_all; rm -rf "$DEMO_DIR"' EXIT
demo_ports 0 0
start_node
prepare_content >/dev/null 2>&1
setup_chain >/dev/null
start_worker

ticks="$(getconf CLK_TCK)"
cpu_ticks() { awk '{print $14 + $15}' "/proc/$worker_pid/stat"; }
reloads() { grep -c 'DataNet [0-9]* reloaded' "$DEMO_DIR/worker.log" || true; }
# The worker settles after start (the chain snapshot, the DataNets): measure from quiet.
sleep 3
step "the storm: $BLOCKS blocks of events that change nothing the worker serves"
cpu_before="$(cpu_ticks)"; reloads_before="$(reloads)"
storm="$(OPENLEDGER_WS="$CHAIN_WS" node "$REPO_ROOT/scripts/bench/storm.mjs" storm "$BLOCKS")"
# Changes it acts on are taken a moment after their block: let any reload the storm set off run.
sleep 6
cpu_storm="$(cpu_ticks)"; reloads_storm="$(reloads)"
step "one item of the served DataNet accepted"
pending="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["pending"])' "$storm")"
OPENLEDGER_WS="$CHAIN_WS" node "$REPO_ROOT/scripts/bench/storm.mjs" accept "$pending"
for _ in $(seq 1 60); do [ "$(reloads)" -gt "$reloads_storm" ] && break; sleep 0.5; done
reloads_after="$(reloads)"

python3 - "$storm" "$cpu_before" "$cpu_storm" "$ticks" "$reloads_before" "$reloads_storm" "$reloads_after" "$WORKER_BIN" <<'PY'
import json, sys
storm = json.loads(sys.argv[1])
before, during, ticks = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
r0, r1, r2 = map(int, sys.argv[5:8])
cpu = (during - before) / ticks
print(f"worker: {sys.argv[8]}")
print("| blocks | storm s | worker CPU s (storm + 6 s) | DataNet reloads in the storm | reloads after the accept |")
print("|---:|---:|---:|---:|---:|")
print(f"| {storm['blocks']} | {storm['seconds']:.1f} | {cpu:.2f} | {r1 - r0} | {r2 - r1} |")
PY
[ "$reloads_after" -gt "$reloads_storm" ] || die "the worker did not reload its DataNet after an item was accepted"

step "a registry of $TOOLS MCP tools, then $BLOCKS blocks of one tool's price changes and registration commitments"
OPENLEDGER_WS="$CHAIN_WS" node "$REPO_ROOT/scripts/bench/storm.mjs" tools "$TOOLS"
sleep 6
cpu_before="$(cpu_ticks)"
registry="$(OPENLEDGER_WS="$CHAIN_WS" node "$REPO_ROOT/scripts/bench/storm.mjs" registry "$BLOCKS")"
sleep 6
cpu_after="$(cpu_ticks)"
python3 - "$registry" "$cpu_before" "$cpu_after" "$ticks" "$TOOLS" <<'PY'
import json, sys
storm = json.loads(sys.argv[1])
cpu = (int(sys.argv[3]) - int(sys.argv[2])) / int(sys.argv[4])
print("| registry entries | blocks | storm s | worker CPU s (storm + 6 s) |")
print("|---:|---:|---:|---:|")
print(f"| {sys.argv[5]} tools and the demo's | {storm['blocks']} | {storm['seconds']:.1f} | {cpu:.2f} |")
PY
