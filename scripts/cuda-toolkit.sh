# The CUDA toolkit from NVIDIA's PyPI wheels, for machines with neither a GPU nor a CUDA
# toolkit; source it after common.sh, don't run it. Pinned to the GPU machines' driver version.
#
#   cuda_toolkit headers   nvcc, what it runs (cicc from nvvm, the crt headers), the runtime
#                          headers and CCCL (cub): enough to compile the kernels and type-check
#                          the cuda build (scripts/check-cuda.sh)
#   cuda_toolkit link      the same and the libraries candle links to, under their link names,
#                          with a stub of the driver (scripts/build-cuda.sh)
#
# Environment: OPENLEDGER_CUDA_VENV, where the wheels are installed (default
# /var/tmp/openledger-cuda-venv); CUDA_TARGET_DIR, the cuda builds' cargo target directory, kept
# apart from the CPU build's so neither invalidates the other (default
# /var/tmp/openledger-cuda-target); CUDA_COMPUTE_CAP (default 90: H100, H200). Sourcing it points
# CARGO_TARGET_DIR there; `cuda_toolkit` exports CUDA_ROOT, CUDA_PATH and PATH, `link` also
# LIBRARY_PATH.
export CARGO_TARGET_DIR="${CUDA_TARGET_DIR:-/var/tmp/openledger-cuda-target}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
CUDA_RELEASE=13.0
CUDA_VENV="${OPENLEDGER_CUDA_VENV:-/var/tmp/openledger-cuda-venv}"
CUDA_HEADER_WHEELS=(nvidia-cuda-nvcc nvidia-cuda-crt nvidia-nvvm nvidia-cuda-runtime nvidia-cuda-cccl)
CUDA_LIBRARY_WHEELS=(nvidia-cublas nvidia-cuda-nvrtc)
# cuRAND numbers its releases apart: 10.4.0 came with CUDA 13.0.
CURAND_RELEASE=10.4.0

cuda_toolkit() { # headers | link
	local wheels=("${CUDA_HEADER_WHEELS[@]}") specs=() wheel
	[ "$1" = link ] && wheels+=("${CUDA_LIBRARY_WHEELS[@]}")
	step "CUDA $CUDA_RELEASE toolkit ($1) from PyPI into $CUDA_VENV"
	[ -x "$CUDA_VENV/bin/python" ] || python3 -m venv "$CUDA_VENV" || die "cannot create a venv (apt-get install python3-venv)"
	for wheel in "${wheels[@]}"; do specs+=("$wheel==$CUDA_RELEASE.*"); done
	[ "$1" = link ] && specs+=("nvidia-curand==$CURAND_RELEASE.*")
	# pip does nothing (and asks no index) when the pinned versions are already there.
	"$CUDA_VENV/bin/pip" install --quiet --progress-bar on "${specs[@]}" || die "installing the CUDA wheels failed"
	CUDA_ROOT="$(echo "$CUDA_VENV"/lib/python3*/site-packages/nvidia/cu13)"
	[ -x "$CUDA_ROOT/bin/nvcc" ] || die "nvcc not found under $CUDA_ROOT"
	export CUDA_ROOT CUDA_PATH="$CUDA_ROOT" PATH="$CUDA_ROOT/bin:$PATH"
	"$CUDA_ROOT/bin/nvcc" --version | tail -1
	[ "$1" = link ] || return 0

	step "link directory: the wheels' libraries under their link names, and a libcuda stub"
	# candle links cudarc dynamically, so the linker wants libcuda.so (the driver, absent without a
	# GPU) and unversioned names for the toolkit's libraries. The stub defines the driver symbols
	# cudarc uses and carries the driver's soname, so the binary loads the real libcuda.so.1 on the
	# GPU machine, as NVIDIA's own stubs do.
	local link_dir="$CUDA_VENV/link" lib
	mkdir -p "$link_dir"
	for lib in libcublas.so.13 libcublasLt.so.13 libcudart.so.13 libnvrtc.so.13 libcurand.so.10; do
		[ -e "$CUDA_ROOT/lib/$lib" ] || die "$lib is missing from $CUDA_ROOT/lib"
		ln -sf "$CUDA_ROOT/lib/$lib" "$link_dir/${lib%%.so.*}.so"
	done
	if [ ! -e "$link_dir/libcuda.so" ]; then
		# The driver API's entry points, from the cudarc crate's declarations (cuInit, cuMemAlloc_v2…).
		local cudarc_src
		cudarc_src="$(cargo metadata --format-version 1 --features openledger-engine/cuda --manifest-path "$REPO_ROOT/Cargo.toml" \
			| python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="cudarc").rsplit("/",1)[0])')"
		grep -rhoE '\bpub (unsafe )?fn cu[A-Z][A-Za-z0-9_]*' "$cudarc_src/src/driver/sys" \
			| sed -E 's/.* fn //' | sort -u | sed 's/$/(void) {}/; s/^/void /' > "$link_dir/cuda_stub.c"
		[ -s "$link_dir/cuda_stub.c" ] || die "no driver symbols found under $cudarc_src"
		cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$link_dir/libcuda.so" "$link_dir/cuda_stub.c"
		echo "libcuda stub with $(wc -l < "$link_dir/cuda_stub.c") symbols"
	fi
	export LIBRARY_PATH="$link_dir${LIBRARY_PATH:+:$LIBRARY_PATH}"
}
