//! LoRA adapters as the engine uses them: per layer and projection, `A^T` and `B^T`, so the delta
//! for rows `x` is `scale·(x·A^T)·B^T` — two skinny matmuls, never a merged weight.

use candle_core::{CpuStorage, Result, Storage, Tensor};

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
	let out_ptr = RowsPtr(out.as_mut_ptr());
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

struct RowsPtr(*mut f32);
unsafe impl Sync for RowsPtr {}

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
}

impl LoraAdapter {
	pub fn weights(&self, layer: usize, projection: Projection) -> Option<&LoraWeights> {
		self.layers.get(layer).and_then(|l| l[projection.index()].as_ref())
	}
}

#[cfg(test)]
mod tests {
	use candle_core::{DType, Device};

	use super::*;

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
