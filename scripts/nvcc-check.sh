#!/usr/bin/env bash
# nvcc as scripts/check-cuda.sh gives it to candle's build script (`NVCC`): every kernel still goes
# through nvcc's front end and cicc, so it must parse and type-check, but object files get PTX
# instead of machine code (no ptxas) and nothing is optimized. A type check links and runs
# nothing, and ptxas on candle's quantized matmul kernels at -O3 was ten of the check's eleven
# cold minutes. The worker's own kernels are compiled by its build script with the real nvcc.
set -euo pipefail
args=()
for arg in "$@"; do
	case "$arg" in
	-gencode=arch=compute_*,code=sm_*)
		virtual="${arg#-gencode=arch=}"
		virtual="${virtual%%,*}"
		arg="-gencode=arch=$virtual,code=$virtual"
		;;
	esac
	args+=("$arg")
done
exec "${CUDA_ROOT:?CUDA_ROOT is set by scripts/cuda-toolkit.sh}/bin/nvcc" "${args[@]}" -Xcicc -O0 -Xcompiler -O0
