//! Launch geometry of the worker's CUDA kernels (kernels/*.cu): one definition for their CUDA
//! launches and for the tests that run the same kernels under the CPU emulator
//! (kernels/emulator/), which is how a test suite without a GPU checks their logic.

// Without the `cuda` feature, only those tests launch the kernels.
#![cfg_attr(not(feature = "cuda"), allow(dead_code))]

/// A kernel launch: blocks along x, y, z; threads per block (one dimension); bytes of dynamic
/// shared memory per block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
	pub grid: (u32, u32, u32),
	pub block: u32,
	pub shared_bytes: u32,
}

#[cfg(feature = "cuda")]
impl From<Launch> for candle_core::cuda_backend::cudarc::driver::LaunchConfig {
	fn from(launch: Launch) -> Self {
		Self { grid_dim: launch.grid, block_dim: (launch.block, 1, 1), shared_mem_bytes: launch.shared_bytes }
	}
}

/// Threads per block of `lora_shrink` (`SHRINK_THREADS` in kernels/lora.cu, which sizes its
/// shared memory by it) and `lora_expand` (`EXPAND_THREADS`).
const LORA_SHRINK_THREADS: u32 = 512;
const LORA_EXPAND_THREADS: u32 = 256;

/// `lora_shrink`: a block per row.
pub fn lora_shrink(rows: usize) -> Launch {
	Launch { grid: (rows as u32, 1, 1), block: LORA_SHRINK_THREADS, shared_bytes: 0 }
}

/// `lora_expand`: a block per row and 256 outputs. Rows run along x, whose grid limit
/// (2³¹ − 1) no batch reaches.
pub fn lora_expand(rows: usize, out_features: usize) -> Launch {
	Launch { grid: (rows as u32, (out_features as u32).div_ceil(LORA_EXPAND_THREADS), 1), block: LORA_EXPAND_THREADS, shared_bytes: 0 }
}

/// Threads per block of the paged-attention kernels.
const ATTENTION_THREADS: u32 = 128;

/// Shared memory a CUDA block may use without opting in to more, less `paged_decode_attention`'s
/// static 128 bytes (`scratch`).
const ATTENTION_SHARED_LIMIT: usize = (48 << 10) - 128;

/// `paged_kv_write`: a block per sequence.
pub fn paged_kv_write(sequences: usize) -> Launch {
	Launch { grid: (sequences as u32, 1, 1), block: ATTENTION_THREADS, shared_bytes: 0 }
}

/// The dynamic shared memory of `paged_decode_attention` for sequences of up to `max_len`
/// cached positions: a score per position, then the output groups' partial sums.
fn attention_shared_bytes(max_len: usize, head_dim: usize) -> usize {
	let groups = (ATTENTION_THREADS as usize / head_dim).max(1);
	(max_len + groups * head_dim) * 4
}

/// Whether `paged_decode_attention` takes sequences of `max_len` cached positions: about 12k
/// fit (see the test); longer ones take the per-sequence path.
pub fn paged_attention_fits(max_len: usize, head_dim: usize) -> bool {
	attention_shared_bytes(max_len, head_dim) <= ATTENTION_SHARED_LIMIT
}

/// The longest sequence `paged_decode_attention` takes at `head_dim`.
pub fn paged_attention_max_len(head_dim: usize) -> usize {
	(ATTENTION_SHARED_LIMIT - attention_shared_bytes(0, head_dim)) / 4
}

/// `paged_decode_attention`: a block per query head and sequence.
pub fn paged_decode_attention(heads: usize, sequences: usize, head_dim: usize, max_len: usize) -> Launch {
	let shared_bytes = attention_shared_bytes(max_len, head_dim) as u32;
	Launch { grid: (heads as u32, sequences as u32, 1), block: ATTENTION_THREADS, shared_bytes }
}

/// The kernels compiled for the CPU (build.rs, without the `cuda` feature), launched as the
/// driver launches them: a name, the geometry and a pointer to each argument.
#[cfg(all(test, not(feature = "cuda")))]
pub mod emulator {
	use std::{
		ffi::{c_char, c_int, c_void, CString},
		marker::PhantomData,
	};

	use candle_core::{CpuStorage, Result, Storage, Tensor};

	use super::Launch;

	extern "C" {
		fn openledger_emulate_kernel(name: *const c_char, grid: *const u32, block: *const u32, shared_bytes: u32, args: *mut *mut c_void) -> c_int;
		fn openledger_kernel_constant(name: *const c_char) -> c_int;
	}

	/// A compile-time size of the kernels (`MAX_RANK`, `SHRINK_THREADS`, `EXPAND_THREADS`,
	/// `BLOCK_TOKENS`).
	pub fn constant(name: &str) -> usize {
		let name = CString::new(name).expect("no NUL");
		// Safety: reads a NUL-terminated string.
		let value = unsafe { openledger_kernel_constant(name.as_ptr()) };
		usize::try_from(value).expect("a constant the kernels define")
	}

	/// A launch being built: each argument is borrowed until the launch, as the driver reads it
	/// then.
	pub struct Kernel<'a> {
		name: &'static str,
		args: Vec<*mut c_void>,
		borrows: PhantomData<&'a ()>,
	}

	impl<'a> Kernel<'a> {
		pub fn new(name: &'static str) -> Self {
			Self { name, args: Vec::new(), borrows: PhantomData }
		}

		/// The next argument: a value of the C type the kernel takes (`i32` for `int`, a raw
		/// pointer or `u64` for a pointer).
		pub fn arg<T>(mut self, value: &'a T) -> Self {
			self.args.push(value as *const T as *mut c_void);
			self
		}

		/// Runs the kernel to completion. The pointers passed must be valid for what the kernel
		/// reads and writes.
		pub fn launch(self, launch: Launch) {
			let name = self.name;
			let code = self.try_launch(launch);
			assert_eq!(code, 0, "kernel {name}: the emulator refused the launch {launch:?} (-1: unknown kernel, -2: a GPU would refuse it)");
		}

		/// [`Self::launch`], returning the emulator's code instead of asserting it is 0.
		pub fn try_launch(mut self, launch: Launch) -> c_int {
			let name = CString::new(self.name).expect("kernel names have no NUL");
			let grid = [launch.grid.0, launch.grid.1, launch.grid.2];
			let block = [launch.block, 1, 1];
			// Safety: the emulator reads `grid` and `block` (three words each) and the arguments
			// through `args`, which borrow live values for `'a`; the caller vouches for the
			// memory the arguments point to, as for a launch on a GPU.
			unsafe { openledger_emulate_kernel(name.as_ptr(), grid.as_ptr(), block.as_ptr(), launch.shared_bytes, self.args.as_mut_ptr()) }
		}
	}

	/// The host address of a contiguous CPU tensor's first element: what a kernel under the
	/// emulator reads as a device address.
	pub fn host_address(t: &Tensor) -> Result<u64> {
		let (storage, layout) = t.storage_and_layout();
		let Some((start, _)) = layout.contiguous_offsets() else { candle_core::bail!("a kernel's tensor must be contiguous") };
		let base = match &*storage {
			Storage::Cpu(CpuStorage::F32(v)) => v.as_ptr() as u64,
			Storage::Cpu(CpuStorage::F16(v)) => v.as_ptr() as u64,
			Storage::Cpu(CpuStorage::BF16(v)) => v.as_ptr() as u64,
			_ => candle_core::bail!("the emulator reads f32, f16 or bf16 tensors on the CPU"),
		};
		Ok(base + (start * t.dtype().size_in_bytes()) as u64)
	}
}

#[cfg(test)]
mod tests {
	use super::*;

	/// 12,128 cached positions fit the attention kernel with head_dim 64 or 128 (48 KiB less its
	/// static 128 bytes and the output groups' partial sums); one more does not.
	#[test]
	fn the_attention_kernel_takes_12128_positions() {
		for head_dim in [64, 128] {
			assert!(paged_attention_fits(12_128, head_dim), "{head_dim}");
			assert!(!paged_attention_fits(12_129, head_dim), "{head_dim}");
			assert_eq!(paged_attention_max_len(head_dim), 12_128);
		}
	}

	/// The sizes compiled into the kernels are the ones the Rust side launches and packs with.
	#[cfg(not(feature = "cuda"))]
	#[test]
	fn the_kernels_and_their_launches_agree_on_sizes() {
		assert_eq!(emulator::constant("MAX_RANK"), crate::model::lora::BATCHED_MAX_RANK);
		assert_eq!(emulator::constant("SHRINK_THREADS"), LORA_SHRINK_THREADS as usize);
		assert_eq!(emulator::constant("EXPAND_THREADS"), LORA_EXPAND_THREADS as usize);
		assert_eq!(emulator::constant("BLOCK_TOKENS"), crate::model::kv_pool::BLOCK_TOKENS);
	}

	/// The emulator refuses what a GPU would: too many threads, too much shared memory, more
	/// threads than a kernel's shared memory is sized for; the longest attention the Rust side
	/// allows still launches.
	#[cfg(not(feature = "cuda"))]
	#[test]
	fn the_emulator_refuses_launches_a_gpu_would() {
		let refused = |name: &'static str, launch: Launch| emulator::Kernel::new(name).try_launch(launch);
		assert_eq!(refused("paged_kv_write", Launch { block: 2048, ..paged_kv_write(1) }), -2);
		assert_eq!(refused("paged_decode_attention", paged_decode_attention(1, 1, 64, 12_129 + 32)), -2);
		assert_eq!(refused("lora_expand", Launch { block: 512, ..lora_expand(1, 64) }), -2);
		assert_eq!(refused("no_such_kernel", paged_kv_write(1)), -1);
		assert!(paged_decode_attention(1, 1, 64, paged_attention_max_len(64)).shared_bytes <= 48 << 10);
	}
}
