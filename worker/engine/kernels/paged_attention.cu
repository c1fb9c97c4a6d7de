// Decode-step attention over the paged KV cache, for every decoding sequence of a batch in one
// launch, reading keys and values where they lie in the block pool (as vLLM's PagedAttention),
// and the write of those sequences' new keys and values into their blocks.
//
// Pool layout, per layer: [blocks, kv_heads, BLOCK_TOKENS, head_dim] f32; position t of a
// sequence is row t % BLOCK_TOKENS of block table[t / BLOCK_TOKENS].

#include <stdint.h>
#include <math.h>

#define BLOCK_TOKENS 16

// rows: [sequences, kv_heads, head_dim]; slots[s]: block · BLOCK_TOKENS + offset of its new token.
extern "C" __global__ void paged_kv_write(float *pool, const float *rows, const uint32_t *slots, int kv_heads, int head_dim) {
	const int s = blockIdx.x;
	const uint32_t block = slots[s] / BLOCK_TOKENS, offset = slots[s] % BLOCK_TOKENS;
	const int width = kv_heads * head_dim;
	for (int i = threadIdx.x; i < width; i += blockDim.x) {
		const int g = i / head_dim, d = i % head_dim;
		pool[(((size_t)block * kv_heads + g) * BLOCK_TOKENS + offset) * head_dim + d] = rows[(size_t)s * width + i];
	}
}

// Sum (or max) over the block, in a fixed order; every thread gets the result.
__device__ float block_reduce(float v, bool is_max, float *scratch) {
	const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
	for (int o = 16; o > 0; o >>= 1) {
		const float other = __shfl_xor_sync(0xffffffff, v, o);
		v = is_max ? fmaxf(v, other) : v + other;
	}
	__syncthreads();  // scratch may still be read from a previous reduction
	if (lane == 0) scratch[warp] = v;
	__syncthreads();
	float r = scratch[0];
	for (int w = 1; w < warps; w++) r = is_max ? fmaxf(r, scratch[w]) : r + scratch[w];
	return r;
}

// Block (h, s): query head h of sequence s, whose cache holds lens[s] positions (the new one
// included). q, out: [sequences, heads, head_dim]. Dynamic shared memory: one float per cached
// position (the scores), then the output groups' partial sums.
extern "C" __global__ void paged_decode_attention(const float *q, const float *k_pool, const float *v_pool, const uint32_t *tables,
                                                  const uint32_t *lens, float *out, int heads, int kv_heads, int head_dim,
                                                  int max_blocks, int max_len, float scale) {
#ifdef OPENLEDGER_KERNEL_EMULATOR
	float *shared = static_cast<float *>(openledger_emulator_dynamic_shared());
#else
	extern __shared__ float shared[];
#endif
	__shared__ float scratch[32];
	float *scores = shared;
	float *partial = shared + max_len;
	const int h = blockIdx.x, s = blockIdx.y;
	const int g = h / (heads / kv_heads);
	const int len = lens[s];
	const uint32_t *table = tables + (size_t)s * max_blocks;
	const float *query = q + ((size_t)s * heads + h) * head_dim;
	const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;

	// Scores: a warp per position, lanes over the head's dimensions.
	for (int t = warp; t < len; t += warps) {
		const float *key = k_pool + (((size_t)table[t / BLOCK_TOKENS] * kv_heads + g) * BLOCK_TOKENS + t % BLOCK_TOKENS) * head_dim;
		float dot = 0.f;
		for (int d = lane; d < head_dim; d += 32) dot += query[d] * key[d];
		for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffff, dot, o);
		if (lane == 0) scores[t] = dot * scale;
	}
	__syncthreads();
	float m = -INFINITY;
	for (int t = threadIdx.x; t < len; t += blockDim.x) m = fmaxf(m, scores[t]);
	m = block_reduce(m, true, scratch);
	float sum = 0.f;
	for (int t = threadIdx.x; t < len; t += blockDim.x) {
		const float e = __expf(scores[t] - m);
		scores[t] = e;
		sum += e;
	}
	sum = block_reduce(sum, false, scratch);  // its barriers also publish the exponentials

	// Output: the threads form `groups` groups of head_dim; group r sums positions t ≡ r, and the
	// groups' sums are added in order.
	const int groups = blockDim.x / head_dim > 0 ? blockDim.x / head_dim : 1;
	const int r = threadIdx.x / head_dim, d = threadIdx.x % head_dim;
	if (r < groups) {
		for (int dd = d; dd < head_dim; dd += (blockDim.x < head_dim ? blockDim.x : head_dim)) {
			float acc = 0.f;
			for (int t = r; t < len; t += groups) {
				const float *value = v_pool + (((size_t)table[t / BLOCK_TOKENS] * kv_heads + g) * BLOCK_TOKENS + t % BLOCK_TOKENS) * head_dim;
				acc += scores[t] * value[dd];
			}
			partial[r * head_dim + dd] = acc;
		}
	}
	__syncthreads();
	for (int dd = threadIdx.x; dd < head_dim; dd += blockDim.x) {
		float acc = 0.f;
		for (int rr = 0; rr < groups; rr++) acc += partial[rr * head_dim + dd];
		out[((size_t)s * heads + h) * head_dim + dd] = acc / sum;
	}
}
