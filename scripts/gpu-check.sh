#!/usr/bin/env bash
# On a GPU machine, with no Rust toolchain: runs the CUDA build's device tests and the GPU
# benchmark from the bundle scripts/build-cuda.sh made (target/gpu-bundle.tar.xz), and prints
# the benchmark tables for docs/benchmarks.md; last, the worker itself serves chat requests on the
# GPU (base and adapters, the adapter tiers on). Needs python3, the NVIDIA driver, and the CUDA 13
# libraries somewhere under Python's site-packages (PyTorch's nvidia wheels) or /usr/local/cuda;
# the HF transformers + PEFT baseline also needs torch, transformers and peft. Nothing else: no
# curl (requests go through python3).
#
# The default fits one device command of 9 minutes: the tests, SmolLM2-135M, then serving. It
# stops starting work once DEADLINE seconds have passed (a benchmark is cut at the deadline),
# and reports what it measured and what it skipped.
#
#   scripts/gpu-check.sh                                        # tests, SmolLM2, serving
#   MODELS="smollm2-135m llama-1b" DEADLINE=1500 scripts/gpu-check.sh
#
# Environment: MODELS (default "smollm2-135m"), DEADLINE (540), SEQUENCES (64), NEW_TOKENS (64),
# RUNS (3), BASELINE_RUNS (1: the PEFT baseline's timed runs per mode), OPENLEDGER_BENCH_DIR
# (/var/tmp/openledger-bench), LOG_DIR (where logs and tables are copied; default none).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
step() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

MODELS="${MODELS:-smollm2-135m}"
DEADLINE="${DEADLINE:-540}"
# Seconds left before DEADLINE; `within N` is a time limit for a step that must leave N of them
# (at least 10: `timeout 0` would mean none).
left() { echo $(( DEADLINE - SECONDS )); }
within() { local s=$(( DEADLINE - SECONDS - $1 )); echo $(( s > 10 ? s : 10 )); }
# GET (or POST with a JSON body) to a loopback URL; prints the response body, fails on an error.
http() { # url [json body]
	python3 - "$@" <<'EOF'
import sys, urllib.request
url, body = sys.argv[1], (sys.argv[2].encode() if len(sys.argv) > 2 else None)
request = urllib.request.Request(url, data=body, headers={"content-type": "application/json"} if body else {})
with urllib.request.urlopen(request, timeout=120) as response:
    sys.stdout.write(response.read().decode())
EOF
}
BENCH_DIR="${OPENLEDGER_BENCH_DIR:-/var/tmp/openledger-bench}"
bench_args=(--sequences "${SEQUENCES:-64}" --new-tokens "${NEW_TOKENS:-64}" --runs "${RUNS:-3}" --bench-dir "$BENCH_DIR")
[ -f target/gpu-bundle.tar.xz ] || die "target/gpu-bundle.tar.xz is missing: run scripts/build-cuda.sh on the build machine"
bin="$(mktemp -d)"
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' target/gpu-bundle.tar.xz "$bin"

step "CUDA libraries"
libdirs="$(python3 - <<'EOF'
import glob, os, site, sys
wanted = ["libcublas.so.13", "libcublasLt.so.13", "libcudart.so.13", "libnvrtc.so.13", "libcurand.so.10"]
roots = site.getsitepackages() + [site.getusersitepackages(), "/usr/local/cuda/lib64", "/usr/lib/x86_64-linux-gnu"]
found = {}
for root in roots:
    for name in wanted:
        for path in glob.glob(os.path.join(root, "**", name), recursive=True):
            found.setdefault(name, os.path.dirname(path))
missing = [n for n in wanted if n not in found]
if missing:
    sys.exit("missing CUDA libraries: " + ", ".join(missing))
print(":".join(sorted(set(found.values()))))
EOF
)" || die "the CUDA 13 libraries were not found (see above)"
export LD_LIBRARY_PATH="$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "$libdirs"
# The driver's libcuda.so.1: on the loader's path already where PyTorch runs, else in the
# driver's usual folders.
links="$(ldd "$bin/openledger-worker")"
if [[ "$links" == *"libcuda.so.1 => not found"* ]]; then
	for dir in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64; do
		[ -e "$dir/libcuda.so.1" ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$dir" && break
	done
fi
missing="$(ldd "$bin/openledger-worker" | grep 'not found' || true)"
[ -z "$missing" ] || die "the worker cannot load: $missing"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
device="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"

step "device tests (the same bodies as on the CPU, on the GPU)"
# A failure is reported at the end, after the benchmarks: a GPU session is short, so one run
# should show everything.
failed=()
"$bin/unit-tests" ::cuda --test-threads=1 || failed+=("unit tests on the GPU")
"$bin/lora-tests" --test-threads=1 || failed+=("tests/lora")

# Written as it goes (into LOG_DIR when set), so a run cut short still returns what it measured.
report="${LOG_DIR:-$bin}/report.md"
mkdir -p "$(dirname "$report")" && : > "$report"
skipped=()
for model in $MODELS; do
	# A benchmark needs about two minutes; serving, one.
	if [ "$(left)" -lt 180 ]; then
		skipped+=("the $model benchmark")
		continue
	fi
	step "benchmark: $model on $device ($(left) s left of DEADLINE)"
	workload="$(timeout "$(within 0)" "$bin/bench_gpu" --model "$model" "${bench_args[@]}" --prepare-only)" \
		|| { failed+=("preparing $model"); continue; }
	baseline=()
	if timeout "$(within 120)" python3 scripts/bench/peft_baseline.py "$workload" --runs "${BASELINE_RUNS:-1}" > "$bin/baseline-$model.json"; then
		baseline=(--baseline "$bin/baseline-$model.json")
	else
		echo "the transformers + PEFT baseline failed or ran out of time (above); the table has no comparison" >&2
	fi
	timeout "$(within 60)" "$bin/bench_gpu" --device cuda --model "$model" "${bench_args[@]}" "${baseline[@]}" | tee -a "$report" \
		|| failed+=("bench_gpu on $model")
	echo >> "$report"
done
if [ "$(left)" -lt 60 ]; then
	skipped+=("serving")
else
	step "serving on the GPU: openledger-worker serve --device cuda, chat requests on the base and adapters"
	first="${MODELS%% *}"
	model_dir="$BENCH_DIR/gpu-$first/model"
	adapter_dir="$(ls -d "$BENCH_DIR/gpu-$first"/adapters-* 2> /dev/null | head -1 || true)"
	[ -d "$model_dir" ] && [ -n "$adapter_dir" ] || die "no $first model or adapters under $BENCH_DIR (the benchmark above failed)"
	# Room for two adapters on the GPU, so the third request evicts one and the fourth brings it
	# back from the host tier.
	"$bin/openledger-worker" serve --device cuda --model "$model_dir" --model-name base --adapters "$adapter_dir" \
		--max-resident-adapters 2 --listen 127.0.0.1:8765 > "$bin/serve.log" 2>&1 &
	worker=$!
	for _ in $(seq 120); do http http://127.0.0.1:8765/health > /dev/null 2>&1 && break; sleep 1; done
	# Greedy, so a0000's second answer (its weights copied back from the pinned host tier) must
	# equal its first (read from disk).
	for turn in base a0000 a0001 a0002 a0000-again; do
		name="${turn%-again}"
		http http://127.0.0.1:8765/v1/chat/completions \
			"{\"model\": \"$name\", \"messages\": [{\"role\": \"user\", \"content\": \"hello\"}], \"max_tokens\": 16, \"temperature\": 0}" \
			> "$bin/answer-$turn.json" \
			&& python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print(r["model"], r["usage"], repr(r["choices"][0]["message"]["content"]))' "$bin/answer-$turn.json" \
			|| { tail -20 "$bin/serve.log"; failed+=("a chat request on $name"); break; }
	done
	if [ -s "$bin/answer-a0000-again.json" ]; then
		python3 -c 'import json, sys; a, b = (json.load(open(f))["choices"][0]["message"]["content"] for f in sys.argv[1:]); sys.exit(a != b)' \
			"$bin/answer-a0000.json" "$bin/answer-a0000-again.json" \
			|| failed+=("a0000 answered differently after its copy from the host tier")
	fi
	http http://127.0.0.1:8765/metrics | grep -E '^openledger_worker_adapter_(loads|host_hits)_total' | tee -a "$report" \
		|| failed+=("the worker's /metrics")
	grep -qE '^openledger_worker_adapter_host_hits_total [1-9]' "$report" || failed+=("no load came from the host tier")
	kill "$worker" && wait "$worker" || true
fi

if [ -n "${LOG_DIR:-}" ]; then
	cp "$bin"/baseline-*.json "$bin/serve.log" "$LOG_DIR"/ 2>/dev/null || true
fi
step "tables (for docs/benchmarks.md)"
[ ${#skipped[@]} = 0 ] || echo "skipped, DEADLINE ($DEADLINE s) reached: ${skipped[*]}" | tee -a "$report"
cat "$report"
[ ${#failed[@]} = 0 ] || die "failed: ${failed[*]}"
