#!/usr/bin/env bash
# The main job: on a fresh machine, sets up and builds everything, starts a dev chain and a worker
# on the real SmolLM2 model, builds a DataNet from the documents in scripts/demo/datanet,
# registers a base model, adapters, a prompt, an MCP tool and the worker, trains an adapter on the
# DataNet's accepted items and registers it with the provenance its manifest computes, funds a payer, sends chat
# requests through the OpenAI API and prints who was paid what, read back from the chain. Then it keeps the
# node and worker running for you to explore, until Ctrl-C.
#
#   scripts/demo.sh            (OPENLEDGER_DEMO_EXIT=1 to stop after the table)
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
source "$REPO_ROOT/scripts/demo/lib.sh"
cd "$REPO_ROOT"

"$REPO_ROOT/scripts/setup.sh"
step "building the node and the worker (release; the first build takes a while)"
build_release

DEMO_DIR="$(mktemp -d "${TMPDIR:-/tmp}/openledger-demo.XXXXXX")"
trap 'stop_all; echo "demo files kept in $DEMO_DIR" >&2' EXIT
trap 'echo; step "Ctrl-C: stopping the worker and the node"; exit 0' INT TERM
demo_ports 9944 8000

start_node
prepare_content
setup_chain
train_adapter
start_mcp_tool
start_worker

step "sending chat requests through the OpenAI client"
"$OPENLEDGER_VENV/bin/python" "$DEMO_SRC/send_requests.py" "$WORKER_URL" "$DEMO_API_KEY" "$DEMO_DIR" \
	"$WORKER_BIN" "$CHAIN_WS" "$("$WORKER_BIN" key inspect --key-env OPENLEDGER_ACCOUNT_KEY | python3 -c 'import json,sys; print(json.load(sys.stdin)["account"])')"

step "waiting for the worker's receipts to settle on chain"
for _ in $(seq 1 60); do
	OPENLEDGER_WS="$CHAIN_WS" node "$DEMO_SRC/chain.mjs" report "$DEMO_DIR" >"$DEMO_DIR/report.txt"
	grep -q 'NOT SETTLED' "$DEMO_DIR/report.txt" || break
	sleep 1
done
cat "$DEMO_DIR/report.txt"
grep -q 'NOT SETTLED' "$DEMO_DIR/report.txt" && die "some receipts did not settle; see $DEMO_DIR/worker.log"

cat <<INFO

The dev chain and the worker keep running:
  polkadot.js apps:  https://polkadot.js.org/apps/?rpc=$CHAIN_WS  (Developer → Chain state → attribution, registry, dataNets)
  OpenAI client:     OpenAI(base_url="$WORKER_URL/v1", api_key="$DEMO_API_KEY")
                     client.chat.completions.create(model="nature-tutor", messages=[...],
                         extra_body={"datanets": [0], "prompt_template": "qa"})
                     MCP tool: extra_body={"mcp_tools": [$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["tool"])' "$DEMO_DIR/tool.json")]}
  logs:              $DEMO_DIR/node.log, $DEMO_DIR/worker.log
Press Ctrl-C to stop.
INFO
[ "${OPENLEDGER_DEMO_EXIT:-0}" = 1 ] && exit 0
wait "$worker_pid"
