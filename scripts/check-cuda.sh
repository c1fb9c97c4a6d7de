#!/usr/bin/env bash
# Type-checks the worker's `cuda` build on a machine with neither a GPU nor a CUDA toolkit, so
# the GPU path cannot rot unseen between GPU runs: nvcc (from NVIDIA's PyPI wheels, as
# scripts/build-cuda.sh gets it) compiles candle's kernels and the worker's own
# (worker/engine/kernels/*.cu) to PTX, and `cargo check` compiles every target of the worker and
# the engine with the feature on — the device tests and the GPU benchmark included — without
# code generation or linking. Warnings in the worker's crates fail it, as errors would.
#
# It runs nothing: the kernels' logic is tested on the CPU under the emulator (build.rs) by the
# ordinary test suite, and on a GPU by scripts/gpu-check.sh.
#
# Environment: OPENLEDGER_CUDA_VENV and CUDA_TARGET_DIR as for scripts/build-cuda.sh (the check's
# artifacts sit beside that build's, in the debug profile), CUDA_COMPUTE_CAP (default 90).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
source "$REPO_ROOT/scripts/cuda-toolkit.sh"
cd "$REPO_ROOT"
cuda_toolkit headers
# candle's build script compiles its static kernels through this nvcc: PTX only, unoptimized.
export NVCC="$REPO_ROOT/scripts/nvcc-check.sh"

step "cargo check of the worker and the engine, every target, --features cuda (sm_$CUDA_COMPUTE_CAP)"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! cargo check --all-targets -p openledger-worker -p openledger-engine --features openledger-worker/cuda \
	--message-format short ${OPENLEDGER_CARGO_TIMINGS:+--timings} 2>&1 | tee "$log"; then
	die "the cuda build does not compile (above)"
fi
# Dependencies' warnings are capped by cargo; what is left names a file of this workspace.
if grep -E '^(worker|runtime|pallets|primitives|node)/[^ ]*: warning' "$log"; then
	die "the cuda build compiles with warnings (above)"
fi
echo "the cuda build type-checks"
