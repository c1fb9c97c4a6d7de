// A CPU emulator of the CUDA execution model, just wide enough for the worker's kernels
// (kernels/*.cu), so their source runs in the CPU test suite: no machine that runs CI has a GPU.
//
// A launch runs its blocks one after another; each block runs one OS thread per CUDA thread, so
// barriers, warp shuffles and shared memory behave as on a GPU, races within a block included
// (races between blocks cannot show). `__shared__` variables are statics (one block at a time
// uses them, and they keep the previous block's values); dynamic shared memory is a buffer per
// block of exactly the launch's size, filled with NaNs first, as a GPU's holds whatever was
// there. A thread that returns leaves its block's and warp's barriers, as exited threads do on
// the hardware. Launches a GPU would refuse (block size, grid, shared memory) are refused.
// `__expf` is the exact `expf`, so results may differ from a GPU's in the last bits.
#pragma once
#define OPENLEDGER_KERNEL_EMULATOR
#include <math.h>
#include <stddef.h>
#include <stdint.h>

struct dim3 {
	unsigned x = 1, y = 1, z = 1;
};

extern thread_local dim3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static

void __syncthreads();
float __shfl_xor_sync(unsigned mask, float value, int lane_mask);
// The block's dynamic shared memory (`extern __shared__` on a GPU).
void *openledger_emulator_dynamic_shared();

inline float __expf(float x) { return expf(x); }
