// Batched multi-adapter LoRA (BGMV, as in Punica and S-LoRA): every row of a batch may use its
// own adapter, rank and weight type, and all rows' deltas for one projection take one shrink
// launch (u = scale · x·Aᵀ) and one expand launch (y += u·Bᵀ), whatever the number of adapters.
//
// Each row finds its adapter through `row_pairs[row]`: the device address of that adapter's
// pair table (one LoraPair per layer and projection after a header, uploaded once when the
// adapter is loaded onto the GPU), or 0 for a row without an adapter. Sums run in a fixed order per row, so a
// row's result does not depend on the rest of the batch (no atomics).

#include <stdint.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

// Laid out as the worker writes it (four 64-bit words, little-endian).
struct LoraPair {
	uint64_t a_t;   // Aᵀ, [in_features, rank], row-major
	uint64_t b_t;   // Bᵀ, [rank, out_features], row-major
	int32_t rank;   // 0: no delta
	int32_t dtype;  // 0 f32, 1 f16, 2 bf16
	float scale;
	int32_t unused;
};

#define MAX_RANK 128
#define SHRINK_THREADS 512
#define EXPAND_THREADS 256

__device__ __forceinline__ float load(const float *p, size_t i) { return p[i]; }
__device__ __forceinline__ float load(const __half *p, size_t i) { return __half2float(p[i]); }
__device__ __forceinline__ float load(const __nv_bfloat16 *p, size_t i) { return __bfloat162float(p[i]); }

// A pair table is a 32-byte header (word 0: the number of pairs, which stops at the adapter's
// last layer with weights) followed by the pairs.
__device__ __forceinline__ const LoraPair *row_pair(const uint64_t *row_pairs, int row, int pair_index) {
	const uint64_t table = row_pairs[row];
	if (table == 0) return nullptr;
	const uint64_t *header = reinterpret_cast<const uint64_t *>(table);
	if ((uint64_t)pair_index >= header[0]) return nullptr;
	const LoraPair *pair = reinterpret_cast<const LoraPair *>(header + 4) + pair_index;
	return pair->rank > 0 ? pair : nullptr;
}

// One block per row. Warp w sums inputs k ≡ w (mod warps); lane l holds columns l, l + 32, …
// of u, so each step reads one contiguous row of Aᵀ. Warps' partial sums are then added in
// warp order.
template <typename W>
__device__ void shrink_row(const W *a_t, int rank, float scale, const float *x, int in_features, float *u,
                           float (*partial)[MAX_RANK]) {
	const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
	float acc[MAX_RANK / 32] = {0.f, 0.f, 0.f, 0.f};
	for (int k = warp; k < in_features; k += warps) {
		const float xk = x[k];
		const size_t row = (size_t)k * rank;
#pragma unroll
		for (int c = 0; c < MAX_RANK / 32; c++) {
			const int j = lane + 32 * c;
			if (j < rank) acc[c] += xk * load(a_t, row + j);
		}
	}
#pragma unroll
	for (int c = 0; c < MAX_RANK / 32; c++) partial[warp][lane + 32 * c] = acc[c];
	__syncthreads();
	for (int j = threadIdx.x; j < rank; j += blockDim.x) {
		float sum = 0.f;
		for (int w = 0; w < warps; w++) sum += partial[w][j];
		u[j] = scale * sum;
	}
}

// u: [rows, MAX_RANK]; x: [rows, in_features].
extern "C" __global__ void lora_shrink(const float *x, float *u, const uint64_t *row_pairs, int pair_index, int in_features) {
	__shared__ float partial[SHRINK_THREADS / 32][MAX_RANK];
	const int row = blockIdx.x;
	const LoraPair *pair = row_pair(row_pairs, row, pair_index);
	if (pair == nullptr) return;
	const float *xr = x + (size_t)row * in_features;
	float *ur = u + (size_t)row * MAX_RANK;
	switch (pair->dtype) {
	case 0: shrink_row(reinterpret_cast<const float *>(pair->a_t), pair->rank, pair->scale, xr, in_features, ur, partial); break;
	case 1: shrink_row(reinterpret_cast<const __half *>(pair->a_t), pair->rank, pair->scale, xr, in_features, ur, partial); break;
	default: shrink_row(reinterpret_cast<const __nv_bfloat16 *>(pair->a_t), pair->rank, pair->scale, xr, in_features, ur, partial); break;
	}
}

// Thread o of block (row, by) adds Σ_j u[j]·Bᵀ[j, o] to y[row, by·256 + o]: reads of a row of Bᵀ
// are contiguous across the block. Rows run along x, whose grid limit (2³¹ − 1) no batch reaches.
template <typename W>
__device__ void expand_row(const W *b_t, int rank, const float *u, float *y, int out_features, float *us) {
	for (int j = threadIdx.x; j < rank; j += blockDim.x) us[j] = u[j];
	__syncthreads();
	const int o = blockIdx.y * blockDim.x + threadIdx.x;
	if (o >= out_features) return;
	float sum = 0.f;
	for (int j = 0; j < rank; j++) sum += us[j] * load(b_t, (size_t)j * out_features + o);
	y[o] += sum;
}

// y: [rows, out_features], updated in place.
extern "C" __global__ void lora_expand(const float *u, float *y, const uint64_t *row_pairs, int pair_index, int out_features) {
	__shared__ float us[MAX_RANK];
	const int row = blockIdx.x;
	const LoraPair *pair = row_pair(row_pairs, row, pair_index);
	if (pair == nullptr) return;
	const float *ur = u + (size_t)row * MAX_RANK;
	float *yr = y + (size_t)row * out_features;
	switch (pair->dtype) {
	case 0: expand_row(reinterpret_cast<const float *>(pair->b_t), pair->rank, ur, yr, out_features, us); break;
	case 1: expand_row(reinterpret_cast<const __half *>(pair->b_t), pair->rank, ur, yr, out_features, us); break;
	default: expand_row(reinterpret_cast<const __nv_bfloat16 *>(pair->b_t), pair->rank, ur, yr, out_features, us); break;
	}
}
