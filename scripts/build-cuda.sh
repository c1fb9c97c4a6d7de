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
cd "$REPO_ROOT"

CUDA_RELEASE=13.0
CUDA_VENV="${OPENLEDGER_CUDA_VENV:-/var/tmp/openledger-cuda-venv}"
export CARGO_TARGET_DIR="${CUDA_TARGET_DIR:-/var/tmp/openledger-cuda-target}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
# nvcc and what it runs (cicc from nvvm, the crt headers), the runtime headers, CCCL (cub), and
# the libraries candle links to (cuRAND numbers its releases apart: 10.4.0 came with CUDA 13.0).
WHEELS=(nvidia-cuda-nvcc nvidia-cuda-crt nvidia-nvvm nvidia-cuda-runtime nvidia-cuda-cccl nvidia-cublas nvidia-cuda-nvrtc)
CURAND_RELEASE=10.4.0

step "CUDA $CUDA_RELEASE toolkit from PyPI into $CUDA_VENV"
[ -x "$CUDA_VENV/bin/python" ] || python3 -m venv "$CUDA_VENV" || die "cannot create a venv (apt-get install python3-venv)"
specs=()
for wheel in "${WHEELS[@]}"; do specs+=("$wheel==$CUDA_RELEASE.*"); done
specs+=("nvidia-curand==$CURAND_RELEASE.*")
# pip does nothing (and asks no index) when the pinned versions are already there.
"$CUDA_VENV/bin/pip" install --quiet --progress-bar on "${specs[@]}" || die "installing the CUDA wheels failed"
CUDA_ROOT="$(echo "$CUDA_VENV"/lib/python3*/site-packages/nvidia/cu13)"
[ -x "$CUDA_ROOT/bin/nvcc" ] || die "nvcc not found under $CUDA_ROOT"
export CUDA_ROOT CUDA_PATH="$CUDA_ROOT" PATH="$CUDA_ROOT/bin:$PATH"
"$CUDA_ROOT/bin/nvcc" --version | tail -1

step "link directory: the wheels' libraries under their link names, and a libcuda stub"
# candle links cudarc dynamically, so the linker wants libcuda.so (the driver, absent without a
# GPU) and unversioned names for the toolkit's libraries. The stub defines the driver symbols
# cudarc uses and carries the driver's soname, so the binary loads the real libcuda.so.1 on the
# GPU machine, as NVIDIA's own stubs do.
LINK_DIR="$CUDA_VENV/link"
mkdir -p "$LINK_DIR"
for lib in libcublas.so.13 libcublasLt.so.13 libcudart.so.13 libnvrtc.so.13 libcurand.so.10; do
	[ -e "$CUDA_ROOT/lib/$lib" ] || die "$lib is missing from $CUDA_ROOT/lib"
	ln -sf "$CUDA_ROOT/lib/$lib" "$LINK_DIR/${lib%%.so.*}.so"
done
if [ ! -e "$LINK_DIR/libcuda.so" ]; then
	# The driver API's entry points, from the cudarc crate's declarations (cuInit, cuMemAlloc_v2…).
	cudarc_src="$(cargo metadata --format-version 1 --features openledger-engine/cuda --manifest-path "$REPO_ROOT/Cargo.toml" \
		| python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="cudarc").rsplit("/",1)[0])')"
	grep -rhoE '\bpub (unsafe )?fn cu[A-Z][A-Za-z0-9_]*' "$cudarc_src/src/driver/sys" \
		| sed -E 's/.* fn //' | sort -u | sed 's/$/(void) {}/; s/^/void /' > "$LINK_DIR/cuda_stub.c"
	[ -s "$LINK_DIR/cuda_stub.c" ] || die "no driver symbols found under $cudarc_src"
	cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$LINK_DIR/libcuda.so" "$LINK_DIR/cuda_stub.c"
	echo "libcuda stub with $(wc -l < "$LINK_DIR/cuda_stub.c") symbols"
fi
export LIBRARY_PATH="$LINK_DIR${LIBRARY_PATH:+:$LIBRARY_PATH}"

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
