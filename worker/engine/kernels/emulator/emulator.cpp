// Runs the worker's CUDA kernels on the CPU (see cuda_emulator.h), behind one C entry point
// shaped like cuLaunchKernel: a kernel's name, its grid, block and dynamic shared memory, and an
// array of pointers to its arguments.
#include <barrier>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "cuda_emulator.h"

#include "../lora.cu"
#include "../paged_attention.cu"

thread_local dim3 threadIdx, blockIdx;
dim3 blockDim, gridDim;

namespace {

struct Warp {
	explicit Warp(unsigned lanes) : barrier(lanes) {}
	std::barrier<> barrier;
	float lanes[32];
};

struct Block {
	Block(unsigned threads, size_t shared_bytes) : barrier(threads), dynamic_shared(shared_bytes) {
		for (unsigned first = 0; first < threads; first += 32) {
			warps.push_back(std::make_unique<Warp>(threads - first < 32 ? threads - first : 32));
		}
		const float nan = NAN;
		for (size_t i = 0; i + sizeof nan <= dynamic_shared.size(); i += sizeof nan) memcpy(&dynamic_shared[i], &nan, sizeof nan);
	}
	std::barrier<> barrier;
	std::vector<std::unique_ptr<Warp>> warps;
	std::vector<unsigned char> dynamic_shared;
};

thread_local Block *current_block = nullptr;

unsigned linear_thread() { return (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x; }

// One launch at a time: blockDim and gridDim are process-wide, as the kernels read them.
std::mutex launches;

// What a GPU refuses to launch (without opting in to more shared memory) is refused here too.
bool launchable(const uint32_t grid[3], const uint32_t block[3], uint32_t shared_bytes) {
	const uint64_t threads = (uint64_t)block[0] * block[1] * block[2];
	return threads >= 1 && threads <= 1024 && grid[0] >= 1 && grid[1] >= 1 && grid[1] <= 65535 && grid[2] >= 1 &&
	       grid[2] <= 65535 && shared_bytes <= 48 * 1024;
}

template <typename Kernel>
void launch(const uint32_t grid[3], const uint32_t block[3], uint32_t shared_bytes, Kernel kernel) {
	std::lock_guard<std::mutex> guard(launches);
	gridDim = dim3{grid[0], grid[1], grid[2]};
	blockDim = dim3{block[0], block[1], block[2]};
	const unsigned threads = block[0] * block[1] * block[2];
	for (unsigned z = 0; z < grid[2]; z++)
		for (unsigned y = 0; y < grid[1]; y++)
			for (unsigned x = 0; x < grid[0]; x++) {
				Block state(threads, shared_bytes);
				std::vector<std::thread> pool;
				pool.reserve(threads);
				for (unsigned t = 0; t < threads; t++) {
					pool.emplace_back([&, t] {
						blockIdx = dim3{x, y, z};
						threadIdx = dim3{t % block[0], t / block[0] % block[1], t / (block[0] * block[1])};
						current_block = &state;
						kernel();
						state.warps[t / 32]->barrier.arrive_and_drop();
						state.barrier.arrive_and_drop();
					});
				}
				for (auto &thread : pool) thread.join();
			}
}

template <typename T>
T arg(void **args, int i) {
	return *static_cast<T *>(args[i]);
}

}  // namespace

void __syncthreads() { current_block->barrier.arrive_and_wait(); }

float __shfl_xor_sync(unsigned, float value, int lane_mask) {
	const unsigned thread = linear_thread(), lane = thread % 32;
	Warp &warp = *current_block->warps[thread / 32];
	warp.lanes[lane] = value;
	warp.barrier.arrive_and_wait();
	const float other = warp.lanes[lane ^ lane_mask];
	warp.barrier.arrive_and_wait();  // no lane overwrites its value before all have read
	return other;
}

void *openledger_emulator_dynamic_shared() { return current_block->dynamic_shared.data(); }

// Returns 0; -1 for a kernel it does not know; -2 for a launch a GPU would refuse, or that
// runs more threads than the kernel's shared memory is sized for.
extern "C" int openledger_emulate_kernel(const char *name, const uint32_t grid[3], const uint32_t block[3], uint32_t shared_bytes,
                                         void **a) {
	if (!launchable(grid, block, shared_bytes)) return -2;
	if (!strcmp(name, "lora_shrink")) {
		if (block[0] * block[1] * block[2] > SHRINK_THREADS) return -2;
		launch(grid, block, shared_bytes, [&] {
			lora_shrink(arg<const float *>(a, 0), arg<float *>(a, 1), arg<const uint64_t *>(a, 2), arg<int>(a, 3), arg<int>(a, 4));
		});
	} else if (!strcmp(name, "lora_expand")) {
		if (block[0] * block[1] * block[2] > EXPAND_THREADS) return -2;
		launch(grid, block, shared_bytes, [&] {
			lora_expand(arg<const float *>(a, 0), arg<float *>(a, 1), arg<const uint64_t *>(a, 2), arg<int>(a, 3), arg<int>(a, 4));
		});
	} else if (!strcmp(name, "paged_kv_write")) {
		launch(grid, block, shared_bytes, [&] {
			paged_kv_write(arg<float *>(a, 0), arg<const float *>(a, 1), arg<const uint32_t *>(a, 2), arg<int>(a, 3), arg<int>(a, 4));
		});
	} else if (!strcmp(name, "paged_decode_attention")) {
		launch(grid, block, shared_bytes, [&] {
			paged_decode_attention(arg<const float *>(a, 0), arg<const float *>(a, 1), arg<const float *>(a, 2), arg<const uint32_t *>(a, 3),
			                       arg<const uint32_t *>(a, 4), arg<float *>(a, 5), arg<int>(a, 6), arg<int>(a, 7), arg<int>(a, 8),
			                       arg<int>(a, 9), arg<int>(a, 10), arg<float>(a, 11));
		});
	} else {
		return -1;
	}
	return 0;
}

// The kernels' compile-time sizes, for the tests that check the Rust side agrees; -1 if unknown.
extern "C" int openledger_kernel_constant(const char *name) {
	if (!strcmp(name, "MAX_RANK")) return MAX_RANK;
	if (!strcmp(name, "SHRINK_THREADS")) return SHRINK_THREADS;
	if (!strcmp(name, "EXPAND_THREADS")) return EXPAND_THREADS;
	if (!strcmp(name, "BLOCK_TOKENS")) return BLOCK_TOKENS;
	return -1;
}
