#!/usr/bin/env bash
# The soak (docs/benchmarks.md): a dev node and two workers on the demo's chain serve a mix of
# clients for SECONDS (default 600) — allowance and voucher payers, streams cut at random,
# voucher bodies sent several times at once, allowance cuts mid-flight, bad bodies — while every
# 15 to 35 s (5 to 10 s in a short run) one worker is killed with SIGKILL and restarted, or the
# node is restarted. Then both
# workers settle their outboxes and scripts/e2e/soak.mjs checks the chain's events against what
# the clients were given: nothing delivered goes unpaid, nothing is paid twice, nobody is charged
# beyond what they authorised, and total issuance moved by exactly the fees burned. Exits non-zero
# if any of that fails. Expects the release node and worker built.
#   bash scripts/soak.sh [SECONDS]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
source "$REPO_ROOT/scripts/demo/lib.sh"
cd "$REPO_ROOT"
RUN_SECONDS="${1:-600}"
[ -x "$NODE_BIN" ] && [ -x "$WORKER_BIN" ] || die "build first: source scripts/common.sh; build_node; build_worker"
[ -d "$E2E/node_modules/@polkadot/api" ] || (cd "$E2E" && npm ci --no-audit --no-fund)

DEMO_DIR="$(mktemp -d "${TMPDIR:-/tmp}/openledger-soak.XXXXXX")"
status=1
chaos_pid=""
cleanup() {
	[ -z "$chaos_pid" ] || kill "$chaos_pid" 2>/dev/null || true
	for f in worker1.pid worker2.pid; do
		[ -f "$DEMO_DIR/$f" ] && kill "$(cat "$DEMO_DIR/$f")" 2>/dev/null || true
	done
	stop_all
	if [ "$status" -eq 0 ]; then rm -rf "$DEMO_DIR" || true; else echo "files kept in $DEMO_DIR" >&2; fi
}
trap cleanup EXIT
demo_ports 0 0
SECOND_PORT="$(free_ports 1)"
SECOND_URL="http://127.0.0.1:$SECOND_PORT"
SECOND_ENV=(OPENLEDGER_ACCOUNT_KEY=//SoakSecondWorker OPENLEDGER_SESSION_KEY=//SoakSecondWorker//session)

start_node
prepare_content >/dev/null 2>&1
setup_chain >/dev/null
WORKER_ADDRESS="$(node "$E2E/soak.mjs" address "$OPENLEDGER_ACCOUNT_KEY")"
SECOND_ADDRESS="$(node "$E2E/soak.mjs" address //SoakSecondWorker)"
export OPENLEDGER_WS="$CHAIN_WS" OPENLEDGER_DEMO_DIR="$DEMO_DIR" OPENLEDGER_WORKER_BIN="$WORKER_BIN"
export SOAK_WORKERS="[{\"url\":\"$WORKER_URL\",\"address\":\"$WORKER_ADDRESS\"},{\"url\":\"$SECOND_URL\",\"address\":\"$SECOND_ADDRESS\"}]"
step "registering a second worker ($SECOND_ADDRESS)"
node "$E2E/soak.mjs" second
BASE_MODEL="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["baseModel"])' "$DEMO_DIR/ids.json")"
env "${SECOND_ENV[@]}" "$WORKER_BIN" chain register --chain "$CHAIN_WS" --key-env OPENLEDGER_ACCOUNT_KEY \
	--endpoint "$SECOND_URL" --serves "$BASE_MODEL" --price-per-1k 0.01OPEN --stake 1000OPEN >&2

# Worker N (1 or 2), in the background, its pid in workerN.pid; waits for its /health.
run_worker() {
	local n="$1" port url outbox extra=()
	if [ "$n" = 1 ]; then port="$WORKER_PORT" url="$WORKER_URL" outbox=outbox.redb
	else port="$SECOND_PORT" url="$SECOND_URL" outbox=second.redb extra=("${SECOND_ENV[@]}"); fi
	env "${extra[@]}" "$WORKER_BIN" serve --listen "127.0.0.1:$port" --adapters "$DEMO_DIR/adapters" \
		--datanets "$DEMO_DIR/datanets" --templates "$DEMO_DIR/templates" --chain "$CHAIN_WS" \
		--base-model-id "$BASE_MODEL" --outbox "$DEMO_DIR/$outbox" --api-keys "$DEMO_DIR/api-keys.json" \
		--max-tokens 256 >>"$DEMO_DIR/worker$n.log" 2>&1 &
	local pid=$!
	echo "$pid" >"$DEMO_DIR/worker$n.pid"
	# Not a job of this shell: the kills to come would each print a job notice.
	disown "$pid"
	wait_http "$url/health" "$pid" "$DEMO_DIR/worker$n.log" "worker $n"
}

restart_node() {
	stop_node
	# Not a phase of the test command: kept out of its phase log (scripts/ci-times.sh).
	OPENLEDGER_PHASE_LOG="" start_node >/dev/null 2>&1
}

# Until the stop file appears: every 15 to 35 s (5 to 10 s in a run under two minutes), SIGKILL
# a worker and start it again, or restart the node. Logged to chaos.log.
chaos() {
	local least=15 spread=21
	[ "$RUN_SECONDS" -ge 120 ] || { least=5; spread=6; }
	while [ ! -f "$DEMO_DIR/stop" ]; do
		for _ in $(seq 1 $((least + RANDOM % spread))); do
			[ -f "$DEMO_DIR/stop" ] && return 0
			sleep 1
		done
		case $((RANDOM % 3)) in
			0 | 1)
				local n=$((RANDOM % 2 + 1))
				echo "$(date +%s) kill -9 worker $n" >>"$DEMO_DIR/chaos.log"
				kill -9 "$(cat "$DEMO_DIR/worker$n.pid")" 2>/dev/null || true
				sleep 1
				run_worker "$n"
				;;
			2)
				echo "$(date +%s) restart the node" >>"$DEMO_DIR/chaos.log"
				restart_node
				;;
		esac
	done
}

step "two workers serving"
run_worker 1
run_worker 2
chaos &
chaos_pid=$!
step "the soak: $RUN_SECONDS s of clients while workers are killed and the node restarted"
node "$E2E/soak.mjs" load "$RUN_SECONDS" "$DEMO_DIR/requests.jsonl"
touch "$DEMO_DIR/stop"
wait "$chaos_pid" || true
chaos_pid=""
sed 's/^[0-9]* /  /' "$DEMO_DIR/chaos.log" 2>/dev/null | sort | uniq -c | sed 's/^/  chaos:/' || true

step "settling: both workers drain and submit, then every outbox is submitted again"
kill -0 "$(cat "$DEMO_DIR/node.pid")" 2>/dev/null || start_node >/dev/null
for n in 1 2; do
	kill -0 "$(cat "$DEMO_DIR/worker$n.pid")" 2>/dev/null || run_worker "$n"
	kill "$(cat "$DEMO_DIR/worker$n.pid")"
done
for n in 1 2; do
	pid="$(cat "$DEMO_DIR/worker$n.pid")"
	for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
done
exports=()
for outbox in outbox.redb second.redb; do
	SUBMITTER=//Bob "$WORKER_BIN" outbox resubmit --chain "$CHAIN_WS" --outbox "$DEMO_DIR/$outbox" --key-env SUBMITTER >&2
	"$WORKER_BIN" outbox export --outbox "$DEMO_DIR/$outbox" >"$DEMO_DIR/$outbox.jsonl"
	exports+=("$DEMO_DIR/$outbox.jsonl")
done

step "the figures"
status=0
node "$E2E/soak.mjs" report "$DEMO_DIR/requests.jsonl" "${exports[@]}" || status=$?
[ "$status" -eq 0 ] || die "the soak found a broken invariant (above); files kept in $DEMO_DIR"
