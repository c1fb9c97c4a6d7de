//! LoRA adapters as the engine uses them: per layer and projection, `A^T` and `B^T`, so the delta
//! for rows `x` is `scale·(x·A^T)·B^T` — two skinny matmuls, never a merged weight.

use candle_core::{CpuStorage, DType, Device, Result, Storage, Tensor};

use super::quant::SyncPtr;

/// Largest rank the batched CUDA kernels take (`MAX_RANK` in kernels/lora.cu); a CUDA worker
/// refuses adapters above it.
pub const BATCHED_MAX_RANK: usize = 128;

/// The seven Llama projections a PEFT adapter may target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Projection {
	Q,
	K,
	V,
	O,
	Gate,
	Up,
	Down,
}

impl Projection {
	pub const ALL: [Projection; 7] = [
		Projection::Q,
		Projection::K,
		Projection::V,
		Projection::O,
		Projection::Gate,
		Projection::Up,
		Projection::Down,
	];

	/// The module name in PEFT's `target_modules` (`q_proj`, …, `down_proj`).
	pub fn peft_name(self) -> &'static str {
		match self {
			Projection::Q => "q_proj",
			Projection::K => "k_proj",
			Projection::V => "v_proj",
			Projection::O => "o_proj",
			Projection::Gate => "gate_proj",
			Projection::Up => "up_proj",
			Projection::Down => "down_proj",
		}
	}

	/// The module path under `model.layers.{i}` in HF Llama (`self_attn.q_proj`, `mlp.up_proj`).
	pub fn module_path(self) -> &'static str {
		match self {
			Projection::Q => "self_attn.q_proj",
			Projection::K => "self_attn.k_proj",
			Projection::V => "self_attn.v_proj",
			Projection::O => "self_attn.o_proj",
			Projection::Gate => "mlp.gate_proj",
			Projection::Up => "mlp.up_proj",
			Projection::Down => "mlp.down_proj",
		}
	}

	pub fn from_peft_name(name: &str) -> Option<Self> {
		Self::ALL.into_iter().find(|p| p.peft_name() == name)
	}

	pub fn index(self) -> usize {
		self as usize
	}
}

/// One projection's low-rank pair, laid out for row-major activations, in the adapter file's
/// float type (f32, f16 or bf16): half-precision adapters stay half the bytes in memory, and a
/// decode step that streams several distinct adapters reads half as much.
#[derive(Clone, Debug)]
pub struct LoraWeights {
	/// `A^T`, shape `[in_features, r]`.
	pub a_t: Tensor,
	/// `B^T`, shape `[r, out_features]`; for GGUF bases the columns of `q`/`k` are already
	/// permuted to the interleaved-RoPE order of the base weights.
	pub b_t: Tensor,
	/// `lora_alpha / r` (or `/ √r` with rsLoRA), applied to `x·A^T`.
	pub scale: f32,
}

impl LoraWeights {
	/// The delta for rows `x` (`[n, in_features]`) → `[n, out_features]`.
	pub fn delta(&self, x: &Tensor) -> Result<Tensor> {
		if !x.device().is_cpu() {
			let u = x.matmul(&self.a_t.to_dtype(x.dtype())?)?.affine(self.scale as f64, 0.0)?;
			return u.matmul(&self.b_t.to_dtype(x.dtype())?);
		}
		let (n, in_features) = x.dims2()?;
		let out_features = self.b_t.dim(1)?;
		let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
		let mut out = vec![0f32; n * out_features];
		for (row, y) in xs.chunks_exact(in_features).zip(out.chunks_exact_mut(out_features)) {
			self.add_row_delta(row, y)?;
		}
		Tensor::from_vec(out, (n, out_features), x.device())
	}

	/// Adds the delta of one row `x` (`in_features`) to `y` (`out_features`), on the CPU.
	///
	/// Each row is computed alone in a fixed order, so a row's result does not depend on which
	/// other rows share the batch: a request gives the same tokens whatever it is batched with
	/// (a blocked GEMM changes its summation order with the row count).
	pub fn add_row_delta(&self, x: &[f32], y: &mut [f32]) -> Result<()> {
		let (a_in, rank) = self.a_t.dims2()?;
		let (_, out_features) = self.b_t.dims2()?;
		if a_in != x.len() || out_features != y.len() {
			candle_core::bail!("LoRA pair is {a_in} → {out_features}, called with {} → {}", x.len(), y.len());
		}
		let (a_guard, a_layout) = self.a_t.storage_and_layout();
		let (b_guard, b_layout) = self.b_t.storage_and_layout();
		let (Some((a_start, _)), Some((b_start, _))) =
			(a_layout.contiguous_offsets(), b_layout.contiguous_offsets())
		else {
			candle_core::bail!("LoRA weights must be contiguous");
		};
		let (a_range, b_range) = (a_start..a_start + a_in * rank, b_start..b_start + rank * out_features);
		match (&*a_guard, &*b_guard) {
			(Storage::Cpu(CpuStorage::F32(a)), Storage::Cpu(CpuStorage::F32(b))) => {
				row_delta(&a[a_range], &b[b_range], self.scale, x, y)
			},
			(Storage::Cpu(CpuStorage::F16(a)), Storage::Cpu(CpuStorage::F16(b))) => {
				row_delta(&a[a_range], &b[b_range], self.scale, x, y)
			},
			(Storage::Cpu(CpuStorage::BF16(a)), Storage::Cpu(CpuStorage::BF16(b))) => {
				row_delta(&a[a_range], &b[b_range], self.scale, x, y)
			},
			_ => candle_core::bail!("LoRA weights must be f32, f16 or bf16 (both alike) on the CPU"),
		}
		Ok(())
	}
}

/// A float type adapter weights are kept in.
trait Weight: Copy {
	fn value(self) -> f32;
}

impl Weight for f32 {
	fn value(self) -> f32 {
		self
	}
}

impl Weight for half::f16 {
	fn value(self) -> f32 {
		self.to_f32()
	}
}

impl Weight for half::bf16 {
	fn value(self) -> f32 {
		self.to_f32()
	}
}

/// `y += (scale · x·A^T)·B^T` for one row, in a fixed order.
fn row_delta<W: Weight>(a_t: &[W], b_t: &[W], scale: f32, x: &[f32], y: &mut [f32]) {
	let rank = a_t.len() / x.len();
	// u = x · A^T: rows of A^T scaled by the input, summed into four partial sums by k mod 4
	// (four independent chains of multiply-adds instead of one), then added together.
	let mut partial = vec![0f32; 4 * rank];
	let (x_quads, a_quads) = (x.chunks_exact(4), a_t.chunks_exact(4 * rank));
	let (x_rest, a_rest) = (x_quads.remainder(), a_quads.remainder());
	for (xq, aq) in x_quads.zip(a_quads) {
		for (lane, (&xk, a_row)) in xq.iter().zip(aq.chunks_exact(rank)).enumerate() {
			for (uj, &ajk) in partial[lane * rank..(lane + 1) * rank].iter_mut().zip(a_row) {
				*uj += xk * ajk.value();
			}
		}
	}
	for (&xk, a_row) in x_rest.iter().zip(a_rest.chunks_exact(rank)) {
		for (uj, &ajk) in partial[..rank].iter_mut().zip(a_row) {
			*uj += xk * ajk.value();
		}
	}
	let u: Vec<f32> = (0..rank)
		.map(|j| scale * ((partial[j] + partial[rank + j]) + (partial[2 * rank + j] + partial[3 * rank + j])))
		.collect();
	// y += u · B^T, j in order.
	for (&uj, b_row) in u.iter().zip(b_t.chunks_exact(y.len())) {
		for (yo, &bjo) in y.iter_mut().zip(b_row) {
			*yo += uj * bjo.value();
		}
	}
}

/// Adds each listed row's adapter delta to `out` (`[rows, out_features]`, row-major) for inputs
/// `x` (`[rows, in_features]`), the rows split over candle's CPU pool.
pub fn add_row_deltas(
	x: &[f32],
	in_features: usize,
	out: &mut [f32],
	out_features: usize,
	rows: &[(usize, &LoraWeights)],
) -> Result<()> {
	let out_ptr = SyncPtr(out.as_mut_ptr());
	let first_error = std::sync::Mutex::new(None);
	candle_core::utils::barrier_pool().execute_chunked(rows.len(), |range| {
		let out_ptr = &out_ptr;
		for &(row, weights) in &rows[range] {
			// Safety: the listed rows are distinct, so each output row is written by one work
			// item; `execute_chunked` returns only after every item is done.
			let y = unsafe { std::slice::from_raw_parts_mut(out_ptr.0.add(row * out_features), out_features) };
			if let Err(e) = weights.add_row_delta(&x[row * in_features..(row + 1) * in_features], y) {
				first_error.lock().expect("not poisoned").get_or_insert(e);
			}
		}
	});
	match first_error.into_inner().expect("not poisoned") {
		Some(e) => Err(e),
		None => Ok(()),
	}
}

/// The kernels' code for a weight type (`LoraPair::dtype` in kernels/lora.cu).
fn dtype_code(dtype: DType) -> Result<i64> {
	match dtype {
		DType::F32 => Ok(0),
		DType::F16 => Ok(1),
		DType::BF16 => Ok(2),
		other => candle_core::bail!("LoRA weights must be f32, f16 or bf16, not {other:?}"),
	}
}

/// An adapter's pair table for the batched CUDA kernels (kernels/lora.cu), as 64-bit words: a
/// header of four, the first the number of pairs, then a `struct LoraPair` of four per layer and
/// projection, which reaches its weights at `address(tensor)`.
pub fn pair_table(layers: &[[Option<LoraWeights>; 7]], address: impl Fn(&Tensor) -> Result<u64>) -> Result<Vec<i64>> {
	let mut words: Vec<i64> = Vec::with_capacity((layers.len() * 7 + 1) * 4);
	words.extend([(layers.len() * 7) as i64, 0, 0, 0]);
	for pair in layers.iter().flatten() {
		let Some(w) = pair else {
			words.extend([0; 4]);
			continue;
		};
		let rank = w.a_t.dim(1)?;
		if rank > BATCHED_MAX_RANK {
			candle_core::bail!("rank {rank} is above the CUDA LoRA kernels' {BATCHED_MAX_RANK}");
		}
		if w.a_t.dtype() != w.b_t.dtype() {
			candle_core::bail!("a LoRA pair's two matrices differ in type");
		}
		// `rank` and `dtype` are the two 32-bit halves of the third word, little-endian; the
		// scale's bits are the low half of the fourth.
		let rank_and_type = rank as i64 | dtype_code(w.a_t.dtype())? << 32;
		words.extend([address(&w.a_t)? as i64, address(&w.b_t)? as i64, rank_and_type, i64::from(w.scale.to_bits())]);
	}
	Ok(words)
}

/// A loaded adapter: immutable once built, shared through `Arc` by the cache and the requests
/// using it.
#[derive(Debug)]
pub struct LoraAdapter {
	/// blake2-256 of `adapter_model.safetensors`: the adapter's identity.
	pub hash: [u8; 32],
	pub rank: usize,
	/// `layers[i][projection.index()]`.
	pub layers: Vec<[Option<LoraWeights>; 7]>,
	/// Bytes of tensor data resident for this adapter.
	pub resident_bytes: usize,
	/// On a CUDA device: where the batched kernels find this adapter's pairs.
	device_pairs: Option<DevicePairs>,
	/// [`Self::kv_identity`], computed once at load: the scheduler asks for it per request.
	kv_identity: Vec<u8>,
}

/// An adapter's table of LoRA pairs in device memory, one entry per layer and projection, for
/// the batched kernels (built once, when the adapter is loaded onto the GPU).
#[derive(Debug)]
struct DevicePairs {
	/// Keeps the table alive.
	#[allow(dead_code)]
	table: Tensor,
	/// The table's device address.
	address: u64,
}

impl LoraAdapter {
	/// What decides the keys and values the adapter gives a prompt: its weights' hash and every
	/// pair's scale (an `adapter_config.json` with another alpha over the same weights scales
	/// them differently). The prefix cache keys kept blocks by it.
	pub fn kv_identity(&self) -> &[u8] {
		&self.kv_identity
	}

	/// An adapter over `layers`, whose weights live on `device`.
	pub fn new(
		hash: [u8; 32],
		rank: usize,
		layers: Vec<[Option<LoraWeights>; 7]>,
		resident_bytes: usize,
		device: &Device,
	) -> Result<Self> {
		let device_pairs = match device {
			#[cfg(feature = "cuda")]
			Device::Cuda(cuda) => {
				let (table, address) = super::lora_cuda::pair_table(&layers, device)?;
				// candle queues work on each host thread's own stream, and the kernels reach
				// the weights and the table by raw address, which stream-order tracking cannot
				// see: every copy (the table's and any weights' made on this thread) must be
				// done before the engine's thread may use the adapter.
				cuda.cuda_stream().context().synchronize().map_err(|e| candle_core::Error::Cuda(Box::new(e)))?;
				Some(DevicePairs { table, address })
			},
			_ => None,
		};
		let mut kv_identity = hash.to_vec();
		for weights in layers.iter().flatten().flatten() {
			kv_identity.extend(weights.scale.to_bits().to_le_bytes());
		}
		Ok(Self { hash, rank, layers, resident_bytes, device_pairs, kv_identity })
	}

	pub fn weights(&self, layer: usize, projection: Projection) -> Option<&LoraWeights> {
		self.layers.get(layer).and_then(|l| l[projection.index()].as_ref())
	}
}

/// The adapters of a step's rows: runs of consecutive rows sharing one adapter (or none), as
/// the engine orders them.
#[derive(Default)]
pub struct RowAdapters<'a> {
	runs: Vec<RowRun<'a>>,
	rows: usize,
	/// On CUDA: each row's [`DevicePairs`] address (0 for none), for the batched kernels.
	device_rows: Option<Tensor>,
}

struct RowRun<'a> {
	start: usize,
	len: usize,
	adapter: Option<&'a LoraAdapter>,
}

impl<'a> RowAdapters<'a> {
	/// Appends `rows` rows using `adapter`.
	pub fn push(&mut self, rows: usize, adapter: Option<&'a LoraAdapter>) {
		let same = |a: Option<&LoraAdapter>, b: Option<&LoraAdapter>| match (a, b) {
			(None, None) => true,
			(Some(a), Some(b)) => std::ptr::eq(a, b),
			_ => false,
		};
		match self.runs.last_mut() {
			Some(run) if same(run.adapter, adapter) => run.len += rows,
			_ => self.runs.push(RowRun { start: self.rows, len: rows, adapter }),
		}
		self.rows += rows;
	}

	/// Readies the rows for `device` once all are pushed: on CUDA, uploads each row's pair-table
	/// address (one small copy per step).
	pub fn prepare(&mut self, device: &Device) -> Result<()> {
		if device.is_cuda() && self.runs.iter().any(|r| r.adapter.is_some()) {
			let mut addresses = Vec::with_capacity(self.rows);
			for run in &self.runs {
				let address = match run.adapter {
					Some(adapter) => match &adapter.device_pairs {
						Some(pairs) => pairs.address as i64,
						None => candle_core::bail!("an adapter in the batch was not loaded onto the GPU"),
					},
					None => 0,
				};
				addresses.extend(std::iter::repeat_n(address, run.len));
			}
			self.device_rows = Some(Tensor::new(addresses.as_slice(), device)?);
		}
		Ok(())
	}

	/// Each row with a pair for `(layer, projection)`, and the pair.
	pub fn row_weights(&self, layer: usize, projection: Projection) -> Vec<(usize, &'a LoraWeights)> {
		self.runs
			.iter()
			.filter_map(|run| run.adapter.and_then(|a| a.weights(layer, projection)).map(|w| (run, w)))
			.flat_map(|(run, w)| (run.start..run.start + run.len).map(move |row| (row, w)))
			.collect()
	}

	/// `y` plus every row's delta for `(layer, projection)`, for inputs `x` (`[rows, in]`, f32):
	/// row by row on the CPU pool, by one shrink and one expand launch on CUDA, and by a pair of
	/// matmuls per run of rows elsewhere.
	pub fn add_deltas(&self, y: Tensor, x: &Tensor, layer: usize, projection: Projection) -> Result<Tensor> {
		let lora = |run: &RowRun<'a>| run.adapter.and_then(|a| a.weights(layer, projection));
		if self.runs.iter().all(|run| lora(run).is_none()) {
			return Ok(y);
		}
		if x.device().is_cpu() {
			let (rows, in_features) = x.dims2()?;
			let out_features = y.dim(1)?;
			let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
			let mut out = y.flatten_all()?.to_vec1::<f32>()?;
			add_row_deltas(&xs, in_features, &mut out, out_features, &self.row_weights(layer, projection))?;
			return Tensor::from_vec(out, (rows, out_features), x.device());
		}
		#[cfg(feature = "cuda")]
		if let Some(device_rows) = &self.device_rows {
			let y = y.contiguous()?;
			super::lora_cuda::add_deltas(&y, &x.contiguous()?, device_rows, layer * Projection::ALL.len() + projection.index())?;
			return Ok(y);
		}
		self.add_deltas_per_run(y, x, layer, projection)
	}

	/// [`Self::add_deltas`] as one pair of matmuls per run of rows sharing an adapter: the
	/// per-adapter loop the batched kernels replace, kept for other devices and as their
	/// reference in tests.
	pub fn add_deltas_per_run(&self, y: Tensor, x: &Tensor, layer: usize, projection: Projection) -> Result<Tensor> {
		let parts = self
			.runs
			.iter()
			.map(|run| {
				let y = y.narrow(0, run.start, run.len)?;
				match run.adapter.and_then(|a| a.weights(layer, projection)) {
					Some(w) => y + w.delta(&x.narrow(0, run.start, run.len)?)?,
					None => Ok(y),
				}
			})
			.collect::<Result<Vec<_>>>()?;
		Tensor::cat(&parts, 0)
	}
}

#[cfg(test)]
mod tests {
	use candle_core::{DType, Device};
	use rand::{rngs::StdRng, Rng, SeedableRng};

	use super::*;

	crate::device_tests!(batched_deltas_match_a_per_adapter_loop);

	/// Rows of one batch using adapters of mixed ranks (1 to the kernels' largest) and weight
	/// types, an adapter without a pair for the projection (Gate), one with a second layer the
	/// others lack, and no adapter, in runs of any length.
	struct MixedBatch {
		adapters: Vec<LoraAdapter>,
		/// Row r uses `adapters[choice[r]]`, or none past the end.
		choice: Vec<usize>,
		/// Inputs `[rows, in]` and outputs before the deltas `[rows, out]`, on the CPU.
		x: Tensor,
		y: Tensor,
	}

	impl MixedBatch {
		const ROWS: usize = 40;
		const IN: usize = 96;
		const OUT: usize = 80;

		/// The adapters' weights on `device`.
		fn new(device: &Device) -> Self {
			let mut rng = StdRng::seed_from_u64(7);
			let random = |rng: &mut StdRng, n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect() };
			let kinds = [(1, DType::F32), (3, DType::BF16), (8, DType::F16), (16, DType::F32), (64, DType::BF16), (BATCHED_MAX_RANK, DType::F32)];
			let mut adapters = Vec::new();
			for (i, &(rank, dtype)) in kinds.iter().enumerate() {
				let mut weights = || {
					let mut matrix = |n: usize, shape: (usize, usize)| {
						Tensor::from_vec(random(&mut rng, n), shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap().to_device(device).unwrap()
					};
					let a_t = matrix(Self::IN * rank, (Self::IN, rank));
					LoraWeights { a_t, b_t: matrix(rank * Self::OUT, (rank, Self::OUT)), scale: 0.5 + i as f32 }
				};
				// The last adapter has its pair on another projection only; the first has a
				// second layer.
				let slot = if i + 1 == kinds.len() { Projection::Up } else { Projection::Gate };
				let mut layers: Vec<[Option<LoraWeights>; 7]> = vec![Default::default()];
				layers[0][slot.index()] = Some(weights());
				if i == 0 {
					let mut second: [Option<LoraWeights>; 7] = Default::default();
					second[Projection::Gate.index()] = Some(weights());
					layers.push(second);
				}
				adapters.push(LoraAdapter::new([i as u8; 32], rank, layers, 0, device).unwrap());
			}
			// Runs of 1 to 4 rows.
			let mut choice = Vec::new();
			while choice.len() < Self::ROWS {
				let pick = rng.random_range(0..=adapters.len());
				let run = rng.random_range(1..=4).min(Self::ROWS - choice.len());
				choice.extend(std::iter::repeat_n(pick, run));
			}
			assert!(choice.contains(&0), "the seed gives the two-layer adapter some rows");
			let x = Tensor::from_vec(random(&mut rng, Self::ROWS * Self::IN), (Self::ROWS, Self::IN), &Device::Cpu).unwrap();
			let y = Tensor::from_vec(random(&mut rng, Self::ROWS * Self::OUT), (Self::ROWS, Self::OUT), &Device::Cpu).unwrap();
			Self { adapters, choice, x, y }
		}

		fn row_adapters(&self) -> RowAdapters<'_> {
			let mut batch = RowAdapters::default();
			for &pick in &self.choice {
				batch.push(1, self.adapters.get(pick));
			}
			batch
		}

		/// `y` plus each row's delta for the Gate projection of `layer`, by a plain per-adapter
		/// loop on the CPU.
		fn expected(&self, layer: usize) -> Tensor {
			let f32_on_cpu = |t: &Tensor| t.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
			let mut expected = self.y.to_vec2::<f32>().unwrap();
			for (pick, adapter) in self.adapters.iter().enumerate() {
				let Some(w) = adapter.weights(layer, Projection::Gate) else { continue };
				let mine: Vec<u32> = (0..Self::ROWS as u32).filter(|&r| self.choice[r as usize] == pick).collect();
				if mine.is_empty() {
					continue;
				}
				let xs = self.x.index_select(&Tensor::new(mine.as_slice(), &Device::Cpu).unwrap(), 0).unwrap();
				let u = (xs.matmul(&f32_on_cpu(&w.a_t)).unwrap() * w.scale as f64).unwrap();
				let delta = u.matmul(&f32_on_cpu(&w.b_t)).unwrap().to_vec2::<f32>().unwrap();
				for (&r, d) in mine.iter().zip(delta) {
					expected[r as usize].iter_mut().zip(d).for_each(|(e, d)| *e += d);
				}
			}
			Tensor::new(expected, &Device::Cpu).unwrap()
		}
	}

	/// The largest difference between `got` and `expected`, relative to `expected`'s largest value.
	fn relative_error(got: &Tensor, expected: &Tensor) -> f32 {
		let scale = expected.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
		let got = got.to_device(&Device::Cpu).unwrap();
		(got - expected).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() / scale
	}

	/// The batched path and the per-run path on `device` both match a plain per-adapter loop on
	/// the CPU within 1e-5 of the largest output, in both layers of a [`MixedBatch`].
	fn batched_deltas_match_a_per_adapter_loop(device: &Device) {
		let mixed = MixedBatch::new(device);
		let mut batch = mixed.row_adapters();
		batch.prepare(device).unwrap();
		let (x_dev, y_dev) = (mixed.x.to_device(device).unwrap(), mixed.y.to_device(device).unwrap());
		// The CUDA path adds in place: each call gets a copy of y of its own, not a clone
		// sharing y's storage (which would see the other call's deltas too).
		let fresh_y = || y_dev.copy().unwrap();
		for layer in [0, 1] {
			let expected = mixed.expected(layer);
			let batched = batch.add_deltas(fresh_y(), &x_dev, layer, Projection::Gate).unwrap();
			let per_run = batch.add_deltas_per_run(fresh_y(), &x_dev, layer, Projection::Gate).unwrap();
			for (name, got) in [("batched", batched), ("per run", per_run)] {
				let err = relative_error(&got, &expected);
				assert!(err <= 1e-5, "{name}, layer {layer} on {device:?}: off by {err} of the largest output");
			}
		}
		let untouched = batch.add_deltas(fresh_y(), &x_dev, 0, Projection::Q).unwrap();
		assert_eq!(untouched.to_vec2::<f32>().unwrap(), mixed.y.to_vec2::<f32>().unwrap(), "no adapter has a Q pair");
	}

	/// The source of the batched CUDA kernels (kernels/lora.cu), run by the CPU emulator with the
	/// CUDA path's geometry and pair tables, matches the per-adapter loop on a [`MixedBatch`]
	/// within 1e-5 of the largest output; it reads no rank slot it did not write (the scratch
	/// starts as NaNs), writes nothing past the outputs, and leaves every output alone for a
	/// projection no adapter has.
	#[cfg(not(feature = "cuda"))]
	#[test]
	fn the_batched_kernels_match_a_per_adapter_loop_under_the_cpu_emulator() {
		use crate::model::kernels::{self, emulator};

		let mixed = MixedBatch::new(&Device::Cpu);
		let tables: Vec<Vec<i64>> = mixed.adapters.iter().map(|a| pair_table(&a.layers, emulator::host_address).unwrap()).collect();
		let row_pairs: Vec<u64> = mixed.choice.iter().map(|&pick| tables.get(pick).map_or(0, |t| t.as_ptr() as u64)).collect();
		let (rows, in_features, out_features) = (MixedBatch::ROWS, MixedBatch::IN as i32, MixedBatch::OUT as i32);
		let x = mixed.x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
		const GUARD: f32 = 12345.0;
		for (layer, projection) in [(0, Projection::Gate), (1, Projection::Gate), (0, Projection::Q)] {
			let mut u = vec![f32::NAN; rows * BATCHED_MAX_RANK];
			let mut y = mixed.y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
			y.extend([GUARD; 64]);
			let pair_index = (layer * Projection::ALL.len() + projection.index()) as i32;
			let (x_ptr, u_ptr, y_ptr, pairs_ptr) = (x.as_ptr(), u.as_mut_ptr(), y.as_mut_ptr(), row_pairs.as_ptr());
			emulator::Kernel::new("lora_shrink")
				.arg(&x_ptr)
				.arg(&u_ptr)
				.arg(&pairs_ptr)
				.arg(&pair_index)
				.arg(&in_features)
				.launch(kernels::lora_shrink(rows));
			emulator::Kernel::new("lora_expand")
				.arg(&u_ptr)
				.arg(&y_ptr)
				.arg(&pairs_ptr)
				.arg(&pair_index)
				.arg(&out_features)
				.launch(kernels::lora_expand(rows, MixedBatch::OUT));
			assert!(y[rows * MixedBatch::OUT..].iter().all(|&v| v == GUARD), "layer {layer}, {projection:?}: a write past the outputs");
			let got = Tensor::from_slice(&y[..rows * MixedBatch::OUT], (rows, MixedBatch::OUT), &Device::Cpu).unwrap();
			if projection == Projection::Q {
				assert_eq!(got.to_vec2::<f32>().unwrap(), mixed.y.to_vec2::<f32>().unwrap(), "no adapter has a Q pair");
				continue;
			}
			let err = relative_error(&got, &mixed.expected(layer));
			assert!(err <= 1e-5, "layer {layer}: off by {err} of the largest output");
		}
	}

	fn pair(rank: usize, in_features: usize, out_features: usize, seed: f32, dtype: DType) -> LoraWeights {
		let values = |n: usize, k: f32| (0..n).map(|i| ((i as f32 + seed) * k).sin()).collect::<Vec<f32>>();
		let tensor = |v: Vec<f32>, shape: (usize, usize)| Tensor::from_vec(v, shape, &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
		LoraWeights {
			a_t: tensor(values(in_features * rank, 0.37), (in_features, rank)),
			b_t: tensor(values(rank * out_features, 0.53), (rank, out_features)),
			scale: 1.5,
		}
	}

	/// The pooled path gives each row exactly the sums of the one-row path, for ranks, types and
	/// widths that exercise every remainder, and both match `scale·(x·A^T)·B^T`.
	#[test]
	fn pooled_rows_equal_one_row_at_a_time_and_the_plain_product() {
		let (in_features, out_features) = (10, 7);
		let first = pair(3, in_features, out_features, 1.0, DType::F32);
		let second = pair(5, in_features, out_features, 2.0, DType::BF16);
		let x: Vec<f32> = (0..3 * in_features).map(|i| (i as f32 * 0.11).cos()).collect();
		let mut pooled = vec![0.25f32; 3 * out_features];
		add_row_deltas(&x, in_features, &mut pooled, out_features, &[(0, &first), (2, &second)]).unwrap();
		for (row, weights) in [(0, &first), (2, &second)] {
			let mut alone = vec![0.25f32; out_features];
			let input = &x[row * in_features..(row + 1) * in_features];
			weights.add_row_delta(input, &mut alone).unwrap();
			assert_eq!(&pooled[row * out_features..(row + 1) * out_features], &alone[..]);
			let matrix = |t: &Tensor| t.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap();
			let (a_t, b_t) = (matrix(&weights.a_t), matrix(&weights.b_t));
			let u: Vec<f32> = (0..a_t[0].len()).map(|j| 1.5 * (0..in_features).map(|k| input[k] * a_t[k][j]).sum::<f32>()).collect();
			for (o, got) in alone.iter().enumerate() {
				let want: f32 = u.iter().zip(&b_t).map(|(uj, b_row)| uj * b_row[o]).sum();
				assert!((got - 0.25 - want).abs() < 1e-5, "column {o}: {got} vs {want}");
			}
		}
		assert!(pooled[out_features..2 * out_features].iter().all(|&v| v == 0.25), "an unlisted row is untouched");
	}
}
