//! `x · Wᵀ` on the CPU for f32 weights (float safetensors bases) and the few rows of a decode
//! step. candle's gemm packs the weight matrix on every call, which for a handful of rows costs
//! more than the product itself: on a float SmolLM2-135M, a step of four sequences ran at half
//! the speed the memory allows. Here each weight row is read once per step and multiplied against
//! every activation row while it is in cache; more rows (prompt chunks) go to candle's gemm,
//! which is faster there.

use candle_core::{quantized::QMatMul, CpuStorage, DType, Module, Result, Storage, Tensor};

use super::quant::SyncPtr;

/// Most rows taken by the row kernel; more go to candle's gemm. On a float SmolLM2-135M on two
/// cores, 32 rows decode at 173 tok/s here against gemm's 143, 64 at 179 against 242
/// (`bench_gpu` on the CPU: docs/benchmarks.md).
const MAX_ROWS: usize = 32;
/// Activation rows multiplied against one weight row in registers.
const ROW_TILE: usize = 4;
/// Partial sums per activation row: two AVX registers, so two chains of FMAs per row are in flight.
const LANES: usize = 16;

/// A float weight matrix `[rows (out features), cols (in features)]` on the CPU.
pub struct DenseMatrix {
	weight: Tensor,
	rows: usize,
	cols: usize,
}

impl DenseMatrix {
	/// Takes a contiguous f32 CPU matrix; `None` for anything else, which the caller leaves to
	/// candle.
	pub fn new(weight: &Tensor) -> Result<Option<Self>> {
		// Without AVX2 and FMA in the build, the kernel's fused multiply-adds are library
		// calls, slower than gemm.
		if cfg!(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))) {
			return Ok(None);
		}
		if !weight.device().is_cpu() || weight.dtype() != DType::F32 || !weight.is_contiguous() {
			return Ok(None);
		}
		let (rows, cols) = weight.dims2()?;
		Ok(Some(Self { weight: weight.clone(), rows, cols }))
	}

	/// Weight rows `ids`, `[ids.len(), cols]`.
	pub fn rows(&self, ids: &[u32]) -> Result<Tensor> {
		self.weight.index_select(&Tensor::new(ids, self.weight.device())?, 0)
	}

	/// candle's product, for many rows.
	fn gemm(&self, x: &Tensor) -> Result<Tensor> {
		QMatMul::Tensor(self.weight.clone()).forward(x)
	}

	/// `x · Wᵀ` for `x` of shape `[.., cols]`.
	pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
		let dims = x.dims();
		let m: usize = dims[..dims.len().saturating_sub(1)].iter().product();
		if m > MAX_ROWS || x.dtype() != DType::F32 || !x.device().is_cpu() {
			return self.gemm(x);
		}
		let input = x.flatten_all()?.to_vec1::<f32>()?;
		let mut shape = dims.to_vec();
		*shape.last_mut().expect("a matrix") = self.rows;
		Tensor::from_vec(self.matmul_rows(&input, m)?, shape, x.device())
	}

	/// `input · Wᵀ` for `m` rows of `cols` inputs, as a row-major `[m, rows]` vector.
	pub fn matmul_rows(&self, input: &[f32], m: usize) -> Result<Vec<f32>> {
		if input.len() != m * self.cols {
			candle_core::bail!("matmul: {} inputs for {m} rows of {}", input.len(), self.cols);
		}
		if m > MAX_ROWS {
			let x = Tensor::from_slice(input, (m, self.cols), &candle_core::Device::Cpu)?;
			return self.gemm(&x)?.flatten_all()?.to_vec1();
		}
		let (storage, layout) = self.weight.storage_and_layout();
		let Storage::Cpu(CpuStorage::F32(all)) = &*storage else { candle_core::bail!("dense weights are f32 on the CPU") };
		let weights = &all[layout.start_offset()..layout.start_offset() + self.rows * self.cols];
		let mut out = vec![0f32; m * self.rows];
		let (n, k) = (self.rows, self.cols);
		let out_ptr = SyncPtr(out.as_mut_ptr());
		candle_core::utils::barrier_pool().execute_chunked(n, |weight_rows| {
			let out_ptr = &out_ptr;
			for j in weight_rows {
				let w = &weights[j * k..(j + 1) * k];
				for tile_start in (0..m).step_by(ROW_TILE) {
					let tile = tile_start..(tile_start + ROW_TILE).min(m);
					let row = |r: usize| &input[r * k..(r + 1) * k];
					let mut sums = [0f32; ROW_TILE];
					match tile.len() {
						1 => sums[..1].copy_from_slice(&dot_rows(w, [row(tile.start)])),
						2 => sums[..2].copy_from_slice(&dot_rows(w, [row(tile.start), row(tile.start + 1)])),
						3 => sums[..3].copy_from_slice(&dot_rows(w, [row(tile.start), row(tile.start + 1), row(tile.start + 2)])),
						_ => sums = dot_rows(w, [row(tile.start), row(tile.start + 1), row(tile.start + 2), row(tile.start + 3)]),
					}
					for (r, &s) in tile.zip(&sums) {
						// Safety: each (row, column) of `out` is written by exactly one work item,
						// and `execute_chunked` returns only after every item is done.
						unsafe { *out_ptr.0.add(r * n + j) = s };
					}
				}
			}
		});
		Ok(out)
	}
}

/// `w · x_r` for each of `R` rows, in a fixed order (so a row's result does not depend on the
/// other rows of its batch): `LANES` partial sums by index, added pairwise, then the tail.
#[inline(always)]
fn dot_rows<const R: usize>(w: &[f32], xs: [&[f32]; R]) -> [f32; R] {
	assert!(xs.iter().all(|x| x.len() == w.len()), "rows as long as the weight row");
	let full = w.len() / LANES * LANES;
	let mut out = [0f32; R];
	for ((out, lanes), x) in out.iter_mut().zip(partial_sums(&w[..full], xs)).zip(&xs) {
		let mut lanes = lanes;
		let mut width = LANES;
		while width > 1 {
			width /= 2;
			for i in 0..width {
				lanes[i] += lanes[i + width];
			}
		}
		*out = w[full..].iter().zip(&x[full..]).fold(lanes[0], |s, (&wk, &xk)| xk.mul_add(wk, s));
	}
	out
}

/// Per row, lane `i` of the result is `Σ_c x[c·LANES + i] · w[c·LANES + i]`, fused multiply-adds
/// in `c` order; `w.len()` is a multiple of `LANES`, each row at least as long.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
#[inline(always)]
fn partial_sums<const R: usize>(w: &[f32], xs: [&[f32]; R]) -> [[f32; LANES]; R] {
	use std::arch::x86_64::{_mm256_fmadd_ps, _mm256_loadu_ps, _mm256_setzero_ps, _mm256_storeu_ps};
	assert!(w.len() % LANES == 0 && xs.iter().all(|x| x.len() >= w.len()), "whole chunks, rows long enough");
	// Safety: the build enables AVX2 and FMA (checked by the cfg); every load reads 8 floats
	// below `w.len()` (asserted above), which no row is shorter than.
	unsafe {
		let (mut low, mut high) = ([_mm256_setzero_ps(); R], [_mm256_setzero_ps(); R]);
		for c in (0..w.len()).step_by(LANES) {
			let (w_low, w_high) = (_mm256_loadu_ps(w.as_ptr().add(c)), _mm256_loadu_ps(w.as_ptr().add(c + 8)));
			for r in 0..R {
				let x = xs[r].as_ptr().add(c);
				low[r] = _mm256_fmadd_ps(_mm256_loadu_ps(x), w_low, low[r]);
				high[r] = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(8)), w_high, high[r]);
			}
		}
		let mut lanes = [[0f32; LANES]; R];
		for r in 0..R {
			_mm256_storeu_ps(lanes[r].as_mut_ptr(), low[r]);
			_mm256_storeu_ps(lanes[r].as_mut_ptr().add(8), high[r]);
		}
		lanes
	}
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
fn partial_sums<const R: usize>(w: &[f32], xs: [&[f32]; R]) -> [[f32; LANES]; R] {
	let mut lanes = [[0f32; LANES]; R];
	for (c, wc) in w.chunks_exact(LANES).enumerate() {
		for (lanes, x) in lanes.iter_mut().zip(&xs) {
			for (i, (lane, &wk)) in lanes.iter_mut().zip(wc).enumerate() {
				*lane = x[c * LANES + i].mul_add(wk, *lane);
			}
		}
	}
	lanes
}

#[cfg(test)]
mod tests {
	use candle_core::Device;
	use rand::{rngs::StdRng, Rng, SeedableRng};

	use super::*;

	fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
		(0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
	}

	/// Every row count up to and past the row kernel's limit, with widths that leave tails, gives
	/// candle's product within float rounding.
	#[test]
	fn matches_candle_for_every_row_count() {
		let mut rng = StdRng::seed_from_u64(3);
		for (out_features, in_features) in [(37, 70), (96, 64), (5, 1)] {
			let w = Tensor::from_vec(random(&mut rng, out_features * in_features), (out_features, in_features), &Device::Cpu).unwrap();
			let dense = DenseMatrix::new(&w).unwrap().expect("a contiguous f32 CPU matrix");
			for m in [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 40] {
				let x = Tensor::from_vec(random(&mut rng, m * in_features), (m, in_features), &Device::Cpu).unwrap();
				let want = x.matmul(&w.t().unwrap()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
				let got = dense.forward(&x).unwrap();
				assert_eq!(got.dims(), [m, out_features]);
				let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
				for (i, (a, b)) in want.iter().zip(&got).enumerate() {
					assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "{out_features}×{in_features}, {m} rows, element {i}: {a} vs {b}");
				}
			}
		}
	}

	/// A row gives the same bits whatever rows share its step.
	#[test]
	fn a_rows_result_does_not_depend_on_its_batch() {
		let mut rng = StdRng::seed_from_u64(4);
		let (out_features, in_features) = (50, 200);
		let w = Tensor::from_vec(random(&mut rng, out_features * in_features), (out_features, in_features), &Device::Cpu).unwrap();
		let dense = DenseMatrix::new(&w).unwrap().unwrap();
		let rows = random(&mut rng, MAX_ROWS * in_features);
		let alone = dense.matmul_rows(&rows[..in_features], 1).unwrap();
		for m in 2..=MAX_ROWS {
			let batched = dense.matmul_rows(&rows[..m * in_features], m).unwrap();
			assert_eq!(alone, batched[..out_features], "{m} rows");
		}
	}

	#[test]
	fn other_weights_are_left_to_candle() {
		let w = Tensor::zeros((4, 8), DType::BF16, &Device::Cpu).unwrap();
		assert!(DenseMatrix::new(&w).unwrap().is_none());
		let w = Tensor::zeros((8, 4), DType::F32, &Device::Cpu).unwrap().t().unwrap();
		assert!(DenseMatrix::new(&w).unwrap().is_none(), "not contiguous");
	}
}
