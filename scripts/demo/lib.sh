# The demo's steps as functions, shared by scripts/demo.sh and scripts/ledger-e2e.sh; source it
# after common.sh. Each function reads and sets the DEMO_* variables below.
#
# DEMO_DIR   working directory (chain, indexes, adapters, keys, outbox, logs)
# NODE_BIN / WORKER_BIN   the release binaries
# RPC_PORT / WORKER_PORT  chosen by demo_ports

NODE_BIN="$CARGO_TARGET_DIR/release/openledger-node"
WORKER_BIN="$CARGO_TARGET_DIR/release/openledger-worker"
DEMO_SRC="$REPO_ROOT/scripts/demo"
E2E="$REPO_ROOT/scripts/e2e"
# Dev accounts: the worker's account and session key are derived from a dev phrase, so the demo
# needs no secrets; a real worker keeps them in files (`openledger-worker key generate`).
export OPENLEDGER_ACCOUNT_KEY="//OpenLedgerWorker"
export OPENLEDGER_SESSION_KEY="//OpenLedgerWorker//session"
DEMO_API_KEY="demo-payer-key"
node_pid=""
worker_pid=""
mcp_pid=""

port_free() { [ "$1" != 0 ] && ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The RPC and worker ports given (by default the well-known ones that polkadot.js apps and OpenAI
# examples use) where they are free, else (or for 0) free ones; the p2p port is always a free one.
demo_ports() {
	local spare
	read -r -a spare <<<"$(free_ports 3)"
	RPC_PORT="${1:-9944}"; port_free "$RPC_PORT" || RPC_PORT="${spare[0]}"
	WORKER_PORT="${2:-8000}"; port_free "$WORKER_PORT" || WORKER_PORT="${spare[1]}"
	P2P_PORT="${spare[2]}"
	CHAIN_WS="ws://127.0.0.1:$RPC_PORT"
	WORKER_URL="http://127.0.0.1:$WORKER_PORT"
}

wait_http() { # url, pid, log, what
	for _ in $(seq 1 240); do
		curl -sf "$1" >/dev/null 2>&1 && return 0
		kill -0 "$2" 2>/dev/null || { tail -n 40 "$3" >&2; die "$4 exited"; }
		sleep 0.5
	done
	tail -n 40 "$3" >&2
	die "$4 did not come up"
}

start_node() {
	step "starting a dev node (RPC $CHAIN_WS)"
	# Archive state: the payout table and the tests read events of every block since the start.
	"$NODE_BIN" --dev --base-path "$DEMO_DIR/chain" --rpc-port "$RPC_PORT" --port "$P2P_PORT" \
		--state-pruning archive --rpc-cors all --no-prometheus --no-telemetry >"$DEMO_DIR/node.log" 2>&1 &
	node_pid=$!
	echo "$node_pid" >"$DEMO_DIR/node.pid"
	wait_node_rpc "$RPC_PORT" "$node_pid" "$DEMO_DIR/node.log"
}

# Builds DataNet 0's index from the documents shipped in the repo, two PEFT adapters and the
# prompt template, and writes the plan the chain setup registers.
prepare_content() {
	step "building the DataNet index from scripts/demo/datanet (all-MiniLM-L6-v2)"
	"$WORKER_BIN" datanet ingest --datanet 0 --dir "$DEMO_SRC/datanet" --index "$DEMO_DIR/datanets" >&2
	"$WORKER_BIN" datanet items --index "$DEMO_DIR/datanets" --datanet 0 >"$DEMO_DIR/items.jsonl"
	step "writing two LoRA adapters (rank 8) for the base model"
	mkdir -p "$DEMO_DIR/adapters" "$DEMO_DIR/templates"
	"$WORKER_BIN" adapter create --out "$DEMO_DIR/adapters/nature-tutor" --rank 8 --seed 11 >"$DEMO_DIR/adapter-nature.json"
	"$WORKER_BIN" adapter create --out "$DEMO_DIR/adapters/kitchen-helper" --rank 8 --seed 12 --targets q,v >"$DEMO_DIR/adapter-kitchen.json"
	cp "$DEMO_SRC/templates/qa.json" "$DEMO_DIR/templates/qa.json"
	# API keys are secrets: the worker refuses a file other users can read.
	(umask 077 && printf '{"%s": "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"}\n' "$DEMO_API_KEY" >"$DEMO_DIR/api-keys.json")
}

setup_chain() {
	step "registering the base model, DataNet items, adapters and prompt; funding the payer (polkadot.js)"
	OPENLEDGER_WS="$CHAIN_WS" node "$DEMO_SRC/chain.mjs" setup "$DEMO_DIR" >"$DEMO_DIR/ids.json"
	step "registering the worker (its own CLI, through subxt)"
	"$WORKER_BIN" chain register --chain "$CHAIN_WS" --key-env OPENLEDGER_ACCOUNT_KEY \
		--endpoint "$WORKER_URL" --serves "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["baseModel"])' "$DEMO_DIR/ids.json")" \
		--price-per-1k 0.01OPEN --stake 1000OPEN >&2
	OPENLEDGER_WS="$CHAIN_WS" node "$DEMO_SRC/chain.mjs" allow "$DEMO_DIR" >&2
}

# ModelFactory: an adapter trained on DataNet 0's accepted items (their on-chain ids synced into
# the index first), its training manifest checked against the chain, and Eve's registration of it
# with the provenance the manifest computes.
train_adapter() {
	step "training an adapter on DataNet 0's accepted items (adapter train)"
	"$WORKER_BIN" chain sync-items --chain "$CHAIN_WS" --datanets "$DEMO_DIR/datanets" >&2
	"$WORKER_BIN" adapter train --index "$DEMO_DIR/datanets" --datanet 0 --out "$DEMO_DIR/adapters/notes-scholar" \
		--rank 8 --steps 12 --batch-size 2 --max-seq-len 128 --lr 1e-3 --warmup-steps 2 >"$DEMO_DIR/trained.json"
	python3 - "$DEMO_DIR/trained.json" >&2 <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))
print(f"  loss {t['loss_first']:.2f} -> {t['loss_last']:.2f} over {t['updates']} updates, {t['tokens_per_second']} tokens/s")
PY
	step "checking its training manifest against the chain and registering it with that provenance"
	"$WORKER_BIN" adapter verify-manifest --chain "$CHAIN_WS" --adapter "$DEMO_DIR/adapters/notes-scholar" >"$DEMO_DIR/manifest-verified.json"
	OPENLEDGER_WS="$CHAIN_WS" node "$DEMO_SRC/chain.mjs" adapter "$DEMO_DIR" notes-scholar >&2
}

# A real MCP server (the official Python SDK) with a weather tool, registered on chain by Bob
# through polkadot.js with the definition hash the worker's CLI reads from it.
start_mcp_tool() {
	step "starting an MCP server (scripts/mcp/weather_server.py) and registering its get_weather tool"
	local port endpoint hash
	port="$(free_ports 1)"
	endpoint="http://127.0.0.1:$port/mcp"
	"$OPENLEDGER_VENV/bin/python" "$REPO_ROOT/scripts/mcp/weather_server.py" "$port" >"$DEMO_DIR/mcp.log" 2>&1 &
	mcp_pid=$!
	for _ in $(seq 1 120); do
		hash="$("$WORKER_BIN" mcp definition --endpoint "$endpoint" --tool get_weather --allow-private 2>/dev/null \
			| python3 -c 'import json,sys; print(json.load(sys.stdin)["definition_hash"])')" && break
		kill -0 "$mcp_pid" 2>/dev/null || { tail -n 20 "$DEMO_DIR/mcp.log" >&2; die "the MCP server exited"; }
		sleep 0.5
	done
	[ -n "$hash" ] || die "the MCP server did not come up"
	OPENLEDGER_WS="$CHAIN_WS" node "$DEMO_SRC/chain.mjs" tool "$DEMO_DIR" "$endpoint" "$hash" >"$DEMO_DIR/tool.json"
}

start_worker() {
	step "starting the worker on SmolLM2-135M ($WORKER_URL)"
	local base_model
	base_model="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["baseModel"])' "$DEMO_DIR/ids.json")"
	"$WORKER_BIN" serve --listen "127.0.0.1:$WORKER_PORT" --adapters "$DEMO_DIR/adapters" \
		--datanets "$DEMO_DIR/datanets" --templates "$DEMO_DIR/templates" \
		--chain "$CHAIN_WS" --base-model-id "$base_model" --outbox "$DEMO_DIR/outbox.redb" \
		--api-keys "$DEMO_DIR/api-keys.json" --max-tokens 256 --mcp-allow-private >>"$DEMO_DIR/worker.log" 2>&1 &
	worker_pid=$!
	wait_http "$WORKER_URL/health" "$worker_pid" "$DEMO_DIR/worker.log" "the worker"
}

# Stops the node node.pid names (a test may have restarted it).
stop_node() {
	[ -f "$DEMO_DIR/node.pid" ] || return 0
	local pid; pid="$(cat "$DEMO_DIR/node.pid")"
	kill "$pid" 2>/dev/null || true
	# Not necessarily our child, so `wait` cannot see it: poll until it has closed its database.
	for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
}

stop_all() {
	# Each may be gone already (a test restarts the node; node.pid names the live one).
	if [ -n "$worker_pid" ]; then kill "$worker_pid" 2>/dev/null || true; fi
	if [ -n "$mcp_pid" ]; then kill "$mcp_pid" 2>/dev/null || true; fi
	stop_node
	if [ -n "$node_pid" ]; then kill "$node_pid" 2>/dev/null || true; fi
	wait 2>/dev/null || true
}
