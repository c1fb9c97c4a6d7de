#!/usr/bin/env bash
# Builds the worker with its `cuda` feature on a machine with neither a GPU nor a CUDA toolkit:
# nvcc, its compiler parts and the CUDA headers come from NVIDIA's PyPI wheels, pinned to the
# GPU machines' driver version (13.0.x). The kernels are compiled for CUDA_COMPUTE_CAP; the CUDA
# libraries themselves (cuBLAS, cuRAND, NVRTC) are loaded at run time on the GPU machine.
#
#   scripts/build-cuda.sh          # sm_90 (H100, H200); CUDA_COMPUTE_CAP=80 for an A100
#
# Environment:
#   OPENLEDGER_CUDA_VENV  where the wheels are installed (default /var/tmp/openledger-cuda-venv)
#   CUDA_TARGET_DIR       the CUDA build's cargo target directory, kept apart from the CPU build's
#                         so neither invalidates the other (default /var/tmp/openledger-cuda-target)
#   CUDA_COMPUTE_CAP      GPU architecture to compile for (default 90)
#
# The binary ends up at $CUDA_TARGET_DIR/release/openledger-worker; the script prints its path.
# It then builds the device tests and the GPU benchmark, and packs them with the binary into
# target/gpu-bundle.tar.xz, for scripts/gpu-check.sh on a GPU machine that has no Rust toolchain.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
source "$REPO_ROOT/scripts/cuda-toolkit.sh"
cd "$REPO_ROOT"
cuda_toolkit link

step "building openledger-worker --features cuda for sm_$CUDA_COMPUTE_CAP into $CARGO_TARGET_DIR"
echo "(the first build compiles every dependency and candle's CUDA kernels: 20 minutes or more on 2 cores)"
cargo build --release -p openledger-worker --features cuda

binary="$CARGO_TARGET_DIR/release/openledger-worker"
[ -x "$binary" ] || die "the build did not produce $binary"
echo "built $binary ($(du -h "$binary" | cut -f1))"
echo "on the GPU machine, LD_LIBRARY_PATH must reach libcublas.so.13, libcublasLt.so.13, libcudart.so.13,"
echo "libnvrtc.so.13 and libcurand.so.10 (the same wheels, or a PyTorch install's nvidia/cu13/lib)"

step "device tests and the GPU benchmark (cuda feature)"
# The benchmark and the device tests are the engine crate's (worker/engine).
cargo build --release -p openledger-engine --features cuda --example bench_gpu
# The engine's unit tests (the kernels' tests among them) and its tests/lora.rs; cargo names
# their executables.
tests="$(cargo test --release -p openledger-engine --features cuda --no-run --message-format=json \
	| python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        t = m["target"]
        if (t["kind"] == ["lib"]) or (t["kind"] == ["test"] and t["name"] == "lora"):
            print(("unit" if t["kind"] == ["lib"] else "lora") + " " + m["executable"])
')"
[ "$(echo "$tests" | wc -l)" = 2 ] || die "expected the unit and lora test executables, got: $tests"

step "bundle: target/gpu-bundle.tar.xz"
bundle="$REPO_ROOT/target/gpu-bundle"
rm -rf "$bundle" && mkdir -p "$bundle"
cp "$binary" "$CARGO_TARGET_DIR/release/examples/bench_gpu" "$bundle/"
while read -r name path; do cp "$path" "$bundle/$name-tests"; done <<< "$tests"
strip "$bundle"/*
# One xz stream over all four: the CUDA kernels they each embed compress once.
tar -C "$bundle" -cf - . | xz -9 -T2 > "$bundle.tar.xz"
rm -rf "$bundle"
echo "$(du -h "$bundle.tar.xz" | cut -f1) bundle; on the GPU machine: scripts/gpu-check.sh"
