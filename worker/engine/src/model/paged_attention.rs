//! Decode steps of a whole batch against the paged KV cache in two ops per layer: the new keys
//! and values written into their blocks, and attention read from the blocks in place, one launch
//! for every sequence (kernels/paged_attention.cu on CUDA; the CPU path's loops elsewhere).

use candle_core::{CpuStorage, CustomOp1, Device, InplaceOp3, Layout, Result, Shape, Tensor};

use super::{
	decode_attention::{self, CacheView, Heads},
	kernels,
	kv_pool::{KvCache, BLOCK_TOKENS},
	rope::Angles,
};

/// The decoding sequences of one step, as the batched ops want them.
pub struct DecodeBatch {
	/// Their indices in the step list, in batch order.
	pub steps: Vec<usize>,
	/// Their rows in the step's token matrix (u32, `[S]`).
	pub rows: Tensor,
	/// Rotary angles at their positions, `[S, 1, head_dim / 2]`.
	pub cos: Tensor,
	pub sin: Tensor,
	/// Where each new token goes: block · BLOCK_TOKENS + offset (u32, `[S]`).
	slots: Tensor,
	/// Block tables padded with 0 (u32, `[S, max_blocks]`), and positions cached including the
	/// new one (u32, `[S]`).
	tables: Tensor,
	lens: Tensor,
	max_len: usize,
}

impl DecodeBatch {
	/// Whether the batched ops take sequences of up to `max_len` cached positions (the new token
	/// included) on `device`: the CUDA kernel keeps every position's score in shared memory,
	/// about 12k of them; longer ones take the per-sequence path.
	pub fn takes(device: &Device, max_len: usize, head_dim: usize) -> bool {
		match device {
			Device::Cuda(_) => kernels::paged_attention_fits(max_len, head_dim),
			_ => true,
		}
	}


	/// `decoding`: (step index, row in the token matrix, cache) of each one-token step; the
	/// caches hold their blocks for the new token already. `angles`: the step's rows' angles.
	pub fn new(decoding: &[(usize, usize, &KvCache)], angles: &Angles, device: &Device) -> Result<Self> {
		let count = decoding.len();
		let max_blocks = decoding.iter().map(|(_, _, c)| c.blocks().len()).max().unwrap_or(0).max(1);
		let mut tables = vec![0u32; count * max_blocks];
		for ((_, _, cache), table) in decoding.iter().zip(tables.chunks_exact_mut(max_blocks)) {
			table[..cache.blocks().len()].copy_from_slice(cache.blocks());
		}
		let positions: Vec<u32> = decoding.iter().map(|(_, _, c)| c.len() as u32).collect();
		let slots: Vec<u32> = decoding
			.iter()
			.map(|(_, _, c)| c.blocks()[c.len() / BLOCK_TOKENS] * BLOCK_TOKENS as u32 + (c.len() % BLOCK_TOKENS) as u32)
			.collect();
		let lens: Vec<u32> = positions.iter().map(|p| p + 1).collect();
		let max_len = lens.iter().copied().max().unwrap_or(0) as usize;
		let rows: Vec<u32> = decoding.iter().map(|&(_, row, _)| row as u32).collect();
		let (mut cos, mut sin) = (Vec::with_capacity(count * angles.half()), Vec::with_capacity(count * angles.half()));
		for &(_, row, _) in decoding {
			let (c, s) = angles.rows(row, 1);
			cos.extend_from_slice(c);
			sin.extend_from_slice(s);
		}
		let shape = (count, 1, angles.half());
		Ok(Self {
			steps: decoding.iter().map(|&(step, _, _)| step).collect(),
			rows: Tensor::new(rows.as_slice(), device)?,
			cos: Tensor::from_vec(cos, shape, device)?,
			sin: Tensor::from_vec(sin, shape, device)?,
			slots: Tensor::new(slots.as_slice(), device)?,
			tables: Tensor::from_vec(tables, (count, max_blocks), device)?,
			lens: Tensor::new(lens.as_slice(), device)?,
			max_len,
		})
	}

	/// Writes each sequence's new keys or values (`[S, kv_heads, head_dim]`) into `pool`.
	pub fn write(&self, pool: &Tensor, rows: &Tensor) -> Result<()> {
		pool.inplace_op3(&rows.contiguous()?, &self.slots, &WriteRows)
	}

	/// Attention of each sequence's query heads (`q`: `[S, heads, head_dim]`) over its cached
	/// keys and values; returns `[S, heads · head_dim]`.
	pub fn attend(&self, q: &Tensor, k_pool: &Tensor, v_pool: &Tensor) -> Result<Tensor> {
		let (count, heads, head_dim) = q.dims3()?;
		let op = Attend {
			k_pool: k_pool.clone(),
			v_pool: v_pool.clone(),
			tables: self.tables.clone(),
			lens: self.lens.clone(),
			max_len: self.max_len,
		};
		q.contiguous()?.apply_op1_no_bwd(&op)?.reshape((count, heads * head_dim))
	}
}

/// `pool[slot of s] = rows[s]` for each sequence `s`.
struct WriteRows;

impl InplaceOp3 for WriteRows {
	fn name(&self) -> &'static str {
		"paged-kv-write"
	}

	fn cpu_fwd(
		&self,
		pool: &mut CpuStorage,
		pool_layout: &Layout,
		rows: &CpuStorage,
		rows_layout: &Layout,
		slots: &CpuStorage,
		slots_layout: &Layout,
	) -> Result<()> {
		let (_, kv_heads, _, head_dim) = pool_layout.shape().dims4()?;
		let (CpuStorage::F32(pool), CpuStorage::F32(rows), CpuStorage::U32(slots)) = (pool, rows, slots) else {
			candle_core::bail!("paged-kv-write takes an f32 pool, f32 rows and u32 slots");
		};
		let pool = &mut pool[pool_layout.start_offset()..];
		let rows = &rows[rows_layout.start_offset()..][..rows_layout.shape().elem_count()];
		let slots = &slots[slots_layout.start_offset()..][..slots_layout.shape().elem_count()];
		for (row, &slot) in rows.chunks_exact(kv_heads * head_dim).zip(slots) {
			let (block, offset) = (slot as usize / BLOCK_TOKENS, slot as usize % BLOCK_TOKENS);
			for (g, head) in row.chunks_exact(head_dim).enumerate() {
				let at = ((block * kv_heads + g) * BLOCK_TOKENS + offset) * head_dim;
				pool[at..at + head_dim].copy_from_slice(head);
			}
		}
		Ok(())
	}

	#[cfg(feature = "cuda")]
	fn cuda_fwd(
		&self,
		pool: &mut candle_core::CudaStorage,
		pool_layout: &Layout,
		rows: &candle_core::CudaStorage,
		rows_layout: &Layout,
		slots: &candle_core::CudaStorage,
		slots_layout: &Layout,
	) -> Result<()> {
		cuda::write_rows(pool, pool_layout, rows, rows_layout, slots, slots_layout)
	}
}

/// Paged decode attention; the pools, tables and lengths ride along with the op.
struct Attend {
	k_pool: Tensor,
	v_pool: Tensor,
	tables: Tensor,
	lens: Tensor,
	/// Sizes the CUDA kernel's shared memory.
	#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
	max_len: usize,
}

impl CustomOp1 for Attend {
	fn name(&self) -> &'static str {
		"paged-decode-attention"
	}

	fn cpu_fwd(&self, q: &CpuStorage, q_layout: &Layout) -> Result<(CpuStorage, Shape)> {
		let (count, heads, head_dim) = q_layout.shape().dims3()?;
		let kv_heads = self.k_pool.dim(1)?;
		let CpuStorage::F32(q) = q else { candle_core::bail!("paged attention takes f32 queries") };
		let q = &q[q_layout.start_offset()..];
		let tables = self.tables.to_vec2::<u32>()?;
		let lens = self.lens.to_vec1::<u32>()?;
		let (k_storage, k_layout) = self.k_pool.storage_and_layout();
		let (v_storage, v_layout) = self.v_pool.storage_and_layout();
		let (candle_core::Storage::Cpu(CpuStorage::F32(k)), candle_core::Storage::Cpu(CpuStorage::F32(v))) = (&*k_storage, &*v_storage)
		else {
			candle_core::bail!("paged attention wants f32 pools on the CPU")
		};
		let width = heads * head_dim;
		let mut out = Vec::with_capacity(count * width);
		for s in 0..count {
			let blocks = &tables[s][..(lens[s] as usize).div_ceil(BLOCK_TOKENS)];
			let keys = CacheView { data: &k[k_layout.start_offset()..], blocks };
			let values = CacheView { data: &v[v_layout.start_offset()..], blocks };
			// The batched path is not taken by the families that scale otherwise or use a window.
			let shape = Heads { query_heads: heads, kv_heads, head_dim, len: lens[s] as usize, window: None, scale: 1.0 / (head_dim as f32).sqrt() };
			out.extend(decode_attention::attend(&q[s * width..(s + 1) * width], 1, &keys, &values, &shape));
		}
		Ok((CpuStorage::F32(out), q_layout.shape().clone()))
	}

	#[cfg(feature = "cuda")]
	fn cuda_fwd(&self, q: &candle_core::CudaStorage, q_layout: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
		cuda::attend(self, q, q_layout)
	}
}

#[cfg(feature = "cuda")]
mod cuda {
	use candle_core::{
		backend::BackendStorage,
		cuda_backend::{cudarc::driver::PushKernelArg, WrapErr},
		CudaStorage, Layout, Result, Shape, Storage,
	};

	use super::{kernels, Attend, BLOCK_TOKENS};

	const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/paged_attention.ptx"));
	const MODULE: &str = "openledger_paged_attention";

	pub fn write_rows(
		pool: &mut CudaStorage,
		pool_layout: &Layout,
		rows: &CudaStorage,
		rows_layout: &Layout,
		slots: &CudaStorage,
		slots_layout: &Layout,
	) -> Result<()> {
		let (_, kv_heads, block_tokens, head_dim) = pool_layout.shape().dims4()?;
		assert_eq!(block_tokens, BLOCK_TOKENS);
		let count = slots_layout.shape().elem_count();
		let device = pool.device().clone();
		let rows = rows.as_cuda_slice::<f32>()?.slice(rows_layout.start_offset()..);
		let slots = slots.as_cuda_slice::<u32>()?.slice(slots_layout.start_offset()..);
		let pool = pool.as_cuda_slice_mut::<f32>()?;
		let mut pool = pool.slice_mut(pool_layout.start_offset()..);
		let (kv_heads, head_dim) = (kv_heads as i32, head_dim as i32);
		let func = device.get_or_load_custom_func("paged_kv_write", MODULE, PTX)?;
		let mut launch = func.builder();
		launch.arg(&mut pool);
		launch.arg(&rows);
		launch.arg(&slots);
		launch.arg(&kv_heads);
		launch.arg(&head_dim);
		// Safety: the arguments match `paged_kv_write`; every slot lies in a reserved block.
		unsafe { launch.launch(kernels::paged_kv_write(count).into()) }.w()?;
		Ok(())
	}

	pub fn attend(op: &Attend, q: &CudaStorage, q_layout: &Layout) -> Result<(CudaStorage, Shape)> {
		let (count, heads, head_dim) = q_layout.shape().dims3()?;
		let kv_heads = op.k_pool.dim(1)?;
		let max_blocks = op.tables.dim(1)?;
		if !kernels::paged_attention_fits(op.max_len, head_dim) {
			candle_core::bail!("paged attention on CUDA handles up to {} cached tokens, not {}", kernels::paged_attention_max_len(head_dim), op.max_len);
		}
		let device = q.device().clone();
		let (k_storage, k_layout) = op.k_pool.storage_and_layout();
		let (v_storage, v_layout) = op.v_pool.storage_and_layout();
		let (t_storage, t_layout) = op.tables.storage_and_layout();
		let (l_storage, l_layout) = op.lens.storage_and_layout();
		let (Storage::Cuda(k), Storage::Cuda(v), Storage::Cuda(tables), Storage::Cuda(lens)) =
			(&*k_storage, &*v_storage, &*t_storage, &*l_storage)
		else {
			candle_core::bail!("paged attention wants every input on the same CUDA device")
		};
		let q = q.as_cuda_slice::<f32>()?.slice(q_layout.start_offset()..);
		let k = k.as_cuda_slice::<f32>()?.slice(k_layout.start_offset()..);
		let v = v.as_cuda_slice::<f32>()?.slice(v_layout.start_offset()..);
		let tables = tables.as_cuda_slice::<u32>()?.slice(t_layout.start_offset()..);
		let lens = lens.as_cuda_slice::<u32>()?.slice(l_layout.start_offset()..);
		let out = device.alloc_zeros::<f32>(count * heads * head_dim)?;
		let ints = [heads, kv_heads, head_dim, max_blocks, op.max_len].map(|n| n as i32);
		let scale = 1.0 / (head_dim as f32).sqrt();
		let func = device.get_or_load_custom_func("paged_decode_attention", MODULE, PTX)?;
		let mut launch = func.builder();
		launch.arg(&q);
		launch.arg(&k);
		launch.arg(&v);
		launch.arg(&tables);
		launch.arg(&lens);
		launch.arg(&out);
		for n in &ints {
			launch.arg(n);
		}
		launch.arg(&scale);
		let grid = kernels::paged_decode_attention(heads, count, head_dim, op.max_len);
		// Safety: the arguments match `paged_decode_attention`; tables name reserved blocks and
		// lens do not pass them.
		unsafe { launch.launch(grid.into()) }.w()?;
		Ok((CudaStorage::wrap_cuda_slice(out, device), q_layout.shape().clone()))
	}
}

#[cfg(test)]
mod tests {
	use rand::{rngs::StdRng, Rng, SeedableRng};

	use super::*;
	use crate::model::kv_pool::{KvPool, KvShape};

	crate::device_tests!(paged_decode_ops_match_gathered_attention);

	#[test]
	fn the_cpu_path_has_no_length_limit() {
		assert!(DecodeBatch::takes(&Device::Cpu, 1 << 20, 64));
	}

	/// (query heads, kv heads, head_dim) and sequence lengths (the new token included): grouped
	/// query heads; one to several blocks, the last partly used; heads narrower than, as wide as
	/// and wider than a CUDA block's 128 threads; more positions than threads.
	const SHAPES: [((usize, usize, usize), &[usize]); 4] =
		[((4, 2, 8), &[1, 16, 17, 40, 5]), ((2, 1, 64), &[1, 130, 300]), ((2, 2, 128), &[33, 200]), ((1, 1, 256), &[20, 129])];

	/// Sequences of the given lengths in one pool with random history, and a decode step for
	/// them: new keys and values, queries, and the batch.
	struct Step {
		heads: usize,
		kv_heads: usize,
		head_dim: usize,
		lengths: Vec<usize>,
		caches: Vec<KvCache>,
		batch: DecodeBatch,
		new_k: Tensor,
		new_v: Tensor,
		q: Tensor,
	}

	impl Step {
		fn new(device: &Device, (heads, kv_heads, head_dim): (usize, usize, usize), lengths: &[usize]) -> Self {
			let mut rng = StdRng::seed_from_u64(3);
			let mut random = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect() };
			let pool = KvPool::new(KvShape { num_layers: 1, kv_heads, head_dim }, 4096, device);
			let mut caches = Vec::new();
			for &len in lengths {
				let mut cache = pool.cache();
				cache.reserve(len).unwrap();
				let history = len - 1;
				if history > 0 {
					let k = Tensor::from_vec(random(kv_heads * history * head_dim), (kv_heads, history, head_dim), device).unwrap();
					let v = Tensor::from_vec(random(kv_heads * history * head_dim), (kv_heads, history, head_dim), device).unwrap();
					cache.write(0, &k, &v).unwrap();
					cache.advance(history);
				}
				caches.push(cache);
			}
			let decoding: Vec<(usize, usize, &KvCache)> = caches.iter().enumerate().map(|(i, c)| (i, i, c)).collect();
			// Rotary angles at each new token's position (the batch carries them; this test's
			// queries and keys are given after rotation).
			let angles = Angles::new(&vec![0.5; head_dim / 2], lengths.iter().map(|len| len - 1));
			let batch = DecodeBatch::new(&decoding, &angles, device).unwrap();
			let count = lengths.len();
			let mut tensor = |shape: (usize, usize, usize)| Tensor::from_vec(random(shape.0 * shape.1 * shape.2), shape, device).unwrap();
			let (new_k, new_v, q) = (tensor((count, kv_heads, head_dim)), tensor((count, kv_heads, head_dim)), tensor((count, heads, head_dim)));
			Self { heads, kv_heads, head_dim, lengths: lengths.to_vec(), caches, batch, new_k, new_v, q }
		}

		/// Checks, after the step's write, that each new key is in its slot, and that `got`
		/// (`[sequences][heads · head_dim]`) equals softmax(q·Kᵀ/√d)·V over the gathered cache,
		/// computed plainly on the CPU, within 1e-5.
		fn check(&self, got: &[Vec<f32>], on: &str) {
			let (heads, kv_heads, head_dim) = (self.heads, self.kv_heads, self.head_dim);
			let cpu = |t: &Tensor| t.to_device(&Device::Cpu).unwrap();
			let new_k = cpu(&self.new_k).to_vec3::<f32>().unwrap();
			let q = cpu(&self.q).to_vec3::<f32>().unwrap();
			for (s, cache) in self.caches.iter().enumerate() {
				let len = self.lengths[s];
				let ids = Tensor::new(cache.blocks(), self.q.device()).unwrap();
				let (k_all, v_all) = cache.gather(0, &ids, len).unwrap();
				let (k_all, v_all) = (cpu(&k_all).to_vec3::<f32>().unwrap(), cpu(&v_all).to_vec3::<f32>().unwrap());
				for g in 0..kv_heads {
					assert_eq!(k_all[g][len - 1], new_k[s][g], "sequence {s}, kv head {g}: the new key is in its slot");
				}
				for h in 0..heads {
					let g = h / (heads / kv_heads);
					let scores: Vec<f32> = (0..len)
						.map(|t| (0..head_dim).map(|d| q[s][h][d] * k_all[g][t][d]).sum::<f32>() / (head_dim as f32).sqrt())
						.collect();
					let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
					let weights: Vec<f32> = scores.iter().map(|x| (x - max).exp()).collect();
					let total: f32 = weights.iter().sum();
					for d in 0..head_dim {
						let want: f32 = (0..len).map(|t| weights[t] / total * v_all[g][t][d]).sum();
						let have = got[s][h * head_dim + d];
						assert!((have - want).abs() < 1e-5, "head_dim {head_dim}, sequence {s}, head {h}, dim {d} on {on}: {have} vs {want}");
					}
				}
			}
		}
	}

	/// The batched write puts each new row where the cache's own write would, and the batched
	/// attention equals plain attention over the gathered cache ([`Step::check`]), for every
	/// shape in [`SHAPES`].
	fn paged_decode_ops_match_gathered_attention(device: &Device) {
		for (shape, lengths) in SHAPES {
			let step = Step::new(device, shape, lengths);
			let (k_pool, v_pool) = step.caches[0].layer_pools(0).unwrap();
			step.batch.write(&k_pool, &step.new_k).unwrap();
			step.batch.write(&v_pool, &step.new_v).unwrap();
			let got = step.batch.attend(&step.q, &k_pool, &v_pool).unwrap().to_device(&Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
			step.check(&got, &format!("{device:?}"));
		}
	}

	/// The source of the CUDA kernels (kernels/paged_attention.cu), run by the CPU emulator with
	/// the CUDA path's geometry: the write changes exactly what the CPU op changes in the whole
	/// pool, and the attention passes [`Step::check`] for every shape in [`SHAPES`], with its
	/// shared memory and output starting as NaNs (so nothing unwritten is read or left).
	#[cfg(not(feature = "cuda"))]
	#[test]
	fn the_paged_kernels_match_the_cpu_ops_under_the_cpu_emulator() {
		use crate::model::kernels::{self, emulator};

		let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
		for (shape, lengths) in SHAPES {
			let step = Step::new(&Device::Cpu, shape, lengths);
			let (heads, count) = (step.heads, lengths.len());
			let (kv_heads, head_dim) = (step.kv_heads as i32, step.head_dim as i32);
			let (k_pool, v_pool) = step.caches[0].layer_pools(0).unwrap();
			let slots = step.batch.slots.to_vec1::<u32>().unwrap();
			let mut pools = [flat(&k_pool), flat(&v_pool)];
			for (pool, rows) in pools.iter_mut().zip([flat(&step.new_k), flat(&step.new_v)]) {
				let (pool_ptr, rows_ptr, slots_ptr) = (pool.as_mut_ptr(), rows.as_ptr(), slots.as_ptr());
				emulator::Kernel::new("paged_kv_write")
					.arg(&pool_ptr)
					.arg(&rows_ptr)
					.arg(&slots_ptr)
					.arg(&kv_heads)
					.arg(&head_dim)
					.launch(kernels::paged_kv_write(count));
			}
			step.batch.write(&k_pool, &step.new_k).unwrap();
			step.batch.write(&v_pool, &step.new_v).unwrap();
			assert!(pools[0] == flat(&k_pool) && pools[1] == flat(&v_pool), "{shape:?}: the kernel's pools differ from the CPU op's");

			let q = flat(&step.q);
			let tables = step.batch.tables.flatten_all().unwrap().to_vec1::<u32>().unwrap();
			let lens = step.batch.lens.to_vec1::<u32>().unwrap();
			let mut out = vec![f32::NAN; count * heads * step.head_dim];
			let ints = [heads, step.kv_heads, step.head_dim, step.batch.tables.dim(1).unwrap(), step.batch.max_len].map(|n| n as i32);
			let scale = 1.0 / (step.head_dim as f32).sqrt();
			let pointers = [q.as_ptr(), pools[0].as_ptr(), pools[1].as_ptr()];
			let (tables_ptr, lens_ptr, out_ptr) = (tables.as_ptr(), lens.as_ptr(), out.as_mut_ptr());
			let mut kernel = emulator::Kernel::new("paged_decode_attention");
			for pointer in &pointers {
				kernel = kernel.arg(pointer);
			}
			kernel = kernel.arg(&tables_ptr).arg(&lens_ptr).arg(&out_ptr);
			for n in &ints {
				kernel = kernel.arg(n);
			}
			kernel.arg(&scale).launch(kernels::paged_decode_attention(heads, count, step.head_dim, step.batch.max_len));
			let got: Vec<Vec<f32>> = out.chunks(heads * step.head_dim).map(<[f32]>::to_vec).collect();
			step.check(&got, "the CPU emulator");
		}
	}
}
