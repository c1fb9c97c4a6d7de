//! `x · Wᵀ` on the CPU for GGUF's block formats: Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 (blocks of 32)
//! and the K-quants Q4_K, Q5_K and Q6_K (super-blocks of 256, [`k`]; a Q4_K_M file holds Q4_K,
//! Q6_K and, where a width is not a multiple of 256, Q5_0 or Q8_0).
//!
//! candle 0.11 has no SIMD path for Q4_1, Q5_0, Q5_1 or Q5_K, and for Q4_K and Q6_K keeps a
//! second, repacked copy of every tensor beside the file's. These kernels follow ggml's scheme:
//! activations are quantized per block to i8 with an f32 scale, and multiplied against weights
//! re-laid at load in tiles of 8 rows ([`tiles`]) with u8 × i8 dot products (`vpdpbusd` where the
//! CPU has AVX-VNNI or AVX-512 VNNI, AVX2's two multiplies otherwise, chosen at run time), each
//! tile against up to four activation rows, so a batch of sequences reads the weights once per
//! four rows.

use std::io::{Read, Seek, SeekFrom};

use candle_core::{
	quantized::{GgmlDType, QTensor},
	Device, Result, Tensor,
};

#[cfg(target_arch = "x86_64")]
use simd::{isa, Isa};

/// Off x86-64 there are no SIMD kernels: the scalar reference runs.
#[cfg(not(target_arch = "x86_64"))]
#[derive(Clone, Copy, Debug)]
enum Isa {}
#[cfg(not(target_arch = "x86_64"))]
fn isa() -> Option<Isa> {
	None
}

mod k;
mod tiles;

/// Weights per quantization block of the 32-element formats and the activations' Q8 blocks.
const BLOCK: usize = 32;

/// 32 activations as `d · q`; `sum` is `d · Σq`, which Q4_1's and Q5_1's minimum multiplies, and
/// `qsum` is `Σq`, from which Q4_0's and Q5_0's offset is taken in integers (exactly, as
/// llama.cpp does, rather than as a second float product that nearly cancels the first).
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct Q8Block {
	d: f32,
	sum: f32,
	qsum: i32,
	qs: [i8; BLOCK],
}

/// The weight block formats with a kernel here; `d` and `m` are f16s, q the stored quant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
	/// d, 16 bytes of nibbles: `w = d·(q − 8)`, q in 0..16.
	Q4_0,
	/// d, m, 16 bytes of nibbles: `w = d·q + m`, q in 0..16.
	Q4_1,
	/// d, 32 high bits, 16 bytes of nibbles: `w = d·(q − 16)`, q in 0..32.
	Q5_0,
	/// d, m, 32 high bits, 16 bytes of nibbles: `w = d·q + m`, q in 0..32.
	Q5_1,
	/// d, 32 signed bytes: `w = d·q`.
	Q8_0,
	/// Super-blocks of 256 with 6-bit scales and minimums per 32 ([`k`]).
	Q4K,
	Q5K,
	/// Super-blocks of 256 with signed 8-bit scales per 16 ([`k`]).
	Q6K,
}

impl Format {
	fn of(dtype: GgmlDType) -> Option<Self> {
		Some(match dtype {
			GgmlDType::Q4_0 => Self::Q4_0,
			GgmlDType::Q4_1 => Self::Q4_1,
			GgmlDType::Q5_0 => Self::Q5_0,
			GgmlDType::Q5_1 => Self::Q5_1,
			GgmlDType::Q8_0 => Self::Q8_0,
			GgmlDType::Q4K => Self::Q4K,
			GgmlDType::Q5K => Self::Q5K,
			GgmlDType::Q6K => Self::Q6K,
			_ => return None,
		})
	}

	fn block_bytes(self) -> usize {
		match self {
			Self::Q4_0 => 18,
			Self::Q4_1 => 20,
			Self::Q5_0 => 22,
			Self::Q5_1 => 24,
			Self::Q8_0 => 34,
			Self::Q4K => 144,
			Self::Q5K => 176,
			Self::Q6K => 210,
		}
	}

	/// Weights per block.
	fn block_len(self) -> usize {
		match self {
			Self::Q4K | Self::Q5K | Self::Q6K => k::QK_K,
			_ => BLOCK,
		}
	}
}

/// A quantized weight matrix `[rows (out features), cols (in features)]`, in tiles of 8 rows.
pub struct QuantMatrix {
	tiles: tiles::Tiles,
}

impl QuantMatrix {
	/// Takes a CPU tensor of a format above whose rows are whole blocks; `None` for anything
	/// else (another type or device), which the caller leaves to candle.
	pub fn from_qtensor(t: &QTensor) -> Result<Option<Self>> {
		let Some((format, rows, cols)) = Self::kernel_for(t.dtype(), t.shape())? else { return Ok(None) };
		if !t.device().is_cpu() {
			return Ok(None);
		}
		let data = t.data()?;
		if data.len() != rows * cols / format.block_len() * format.block_bytes() {
			candle_core::bail!("{format:?} tensor of shape ({rows}, {cols}) has {} bytes", data.len());
		}
		Ok(Some(Self { tiles: tiles::Tiles::pack(format, rows, cols, &data) }))
	}

	/// Reads a tensor of GGUF type `dtype` and shape `shape` (candle's order) from `offset` of
	/// `file` straight into its tiles, 8 rows at a time, without the copies candle's `QTensor`
	/// makes on the way (the file's bytes, then a typed copy); `None` for a type without a kernel
	/// here.
	pub fn read(dtype: GgmlDType, shape: &candle_core::Shape, file: &mut (impl Read + Seek), offset: u64) -> Result<Option<Self>> {
		let Some((format, rows, cols)) = Self::kernel_for(dtype, shape)? else { return Ok(None) };
		file.seek(SeekFrom::Start(offset))?;
		let tiles = tiles::Tiles::pack_from(format, rows, cols, |chunk| file.read_exact(chunk))?;
		Ok(Some(Self { tiles }))
	}

	/// The format and (rows, cols) of a matrix whose rows are whole blocks of a format with a
	/// kernel here.
	fn kernel_for(dtype: GgmlDType, shape: &candle_core::Shape) -> Result<Option<(Format, usize, usize)>> {
		let Some(format) = Format::of(dtype) else { return Ok(None) };
		let (rows, cols) = shape.dims2()?;
		Ok((cols % format.block_len() == 0).then_some((format, rows, cols)))
	}

	/// `x · Wᵀ` for `x` of shape `[.., cols]`.
	pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
		let dims = x.dims();
		let Some((&k, lead)) = dims.split_last() else { candle_core::bail!("matmul of a scalar") };
		if k != self.tiles.cols {
			candle_core::bail!("matmul: the input has {k} features, the weights {}", self.tiles.cols);
		}
		let m: usize = lead.iter().product();
		let input = x.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
		let out = self.matmul_rows(&input, m)?;
		let mut shape = lead.to_vec();
		shape.push(self.tiles.rows);
		Tensor::from_vec(out, shape, &Device::Cpu)
	}

	/// `input · Wᵀ` for `m` rows of `cols` inputs, as a row-major `[m, rows]` vector.
	pub fn matmul_rows(&self, input: &[f32], m: usize) -> Result<Vec<f32>> {
		if input.len() != m * self.tiles.cols {
			candle_core::bail!("matmul: {} inputs for {m} rows of {}", input.len(), self.tiles.cols);
		}
		let mut out = vec![0f32; m * self.tiles.rows];
		self.matmul(input, m, &mut out);
		Ok(out)
	}

	/// [`Self::matmul_rows`] of one input by several matrices, in one dispatch of the CPU pool
	/// with the input quantized once (see `Tiles::matmul_many`); `None` where they do not take
	/// the same quantized input (different widths, or K-quants beside formats of 32-element
	/// blocks).
	pub fn matmul_rows_many(matrices: &[&Self], input: &[f32], m: usize) -> Result<Option<Vec<Vec<f32>>>> {
		let tiles: Vec<&tiles::Tiles> = matrices.iter().map(|w| &w.tiles).collect();
		if tiles.is_empty() || !tiles::Tiles::fuse(&tiles) {
			return Ok(None);
		}
		if input.len() != m * tiles[0].cols {
			candle_core::bail!("matmul: {} inputs for {m} rows of {}", input.len(), tiles[0].cols);
		}
		let mut outs: Vec<Vec<f32>> = tiles.iter().map(|w| vec![0f32; m * w.rows]).collect();
		let mut products: Vec<(&tiles::Tiles, &mut [f32])> =
			tiles.iter().zip(outs.iter_mut()).map(|(w, out)| (*w, out.as_mut_slice())).collect();
		tiles::Tiles::matmul_many(isa(), &mut products, input, m);
		Ok(Some(outs))
	}

	/// Weight rows `ids` as f32s, `[ids.len(), cols]`: the rows a step looks up when this is a
	/// token embedding table, dequantized as llama.cpp dequantizes them.
	pub fn dequantize_rows(&self, ids: &[u32]) -> Result<Tensor> {
		let mut out = vec![0f32; ids.len() * self.tiles.cols];
		for (&id, out) in ids.iter().zip(out.chunks_exact_mut(self.tiles.cols)) {
			if id as usize >= self.tiles.rows {
				candle_core::bail!("token id {id} is outside the {} rows of the embedding table", self.tiles.rows);
			}
			self.tiles.dequantize_row(id as usize, out);
		}
		Tensor::from_vec(out, (ids.len(), self.tiles.cols), &Device::Cpu)
	}

	/// `out[m, rows] = input[m, cols] · Wᵀ`, with the CPU's fastest kernels.
	fn matmul(&self, input: &[f32], m: usize, out: &mut [f32]) {
		self.matmul_on(isa(), input, m, out)
	}

	/// [`Self::matmul`] with the kernels of `isa` (the scalar reference for `None`), which the
	/// CPU must run.
	fn matmul_on(&self, isa: Option<Isa>, input: &[f32], m: usize, out: &mut [f32]) {
		self.tiles.matmul(isa, input, m, out)
	}
}

/// Rows `ids` of a CPU tensor of any GGUF type, `[ids.len(), cols]` f32, through candle's
/// dequantization: token embeddings stored in a type without a kernel here (the K-quants, f16).
pub fn qtensor_rows(t: &QTensor, ids: &[u32]) -> Result<Tensor> {
	let (rows, cols) = t.shape().dims2()?;
	let dtype = t.dtype();
	if cols % dtype.block_size() != 0 {
		candle_core::bail!("{dtype:?} rows of {cols} are not whole blocks");
	}
	let row_bytes = cols / dtype.block_size() * dtype.type_size();
	let data = t.data()?;
	let mut out = Vec::with_capacity(ids.len() * cols);
	for &id in ids {
		if id as usize >= rows {
			candle_core::bail!("token id {id} is outside the {rows} rows of the embedding table");
		}
		let row = &data[id as usize * row_bytes..][..row_bytes];
		out.extend_from_slice(dtype.from_data(std::borrow::Cow::Borrowed(row)).dequantize(cols)?.as_slice::<f32>()?);
	}
	Tensor::from_vec(out, (ids.len(), cols), &Device::Cpu)
}

/// The output pointer, shared by the pool's threads, each writing its own elements.
pub(super) struct SyncPtr(pub *mut f32);
unsafe impl Sync for SyncPtr {}

/// Quantizes one row to Q8 blocks (round to nearest even, as ggml's SIMD paths do).
fn quantize_row(x: &[f32], out: &mut [Q8Block]) {
	#[cfg(target_arch = "x86_64")]
	if simd::isa().is_some() {
		// Safety: `isa` checked for AVX2.
		unsafe { simd::quantize_row(x, out) };
		return;
	}
	quantize_row_scalar(x, out);
}

fn quantize_row_scalar(x: &[f32], out: &mut [Q8Block]) {
	for (chunk, block) in x.chunks_exact(BLOCK).zip(out.iter_mut()) {
		let amax = chunk.iter().fold(0f32, |a, v| a.max(v.abs()));
		let d = amax / 127.0;
		let inverse = if d != 0.0 { 1.0 / d } else { 0.0 };
		let mut sum = 0i32;
		for (q, &v) in block.qs.iter_mut().zip(chunk) {
			*q = (v * inverse).round_ties_even() as i8;
			sum += *q as i32;
		}
		block.d = d;
		block.sum = d * sum as f32;
		block.qsum = sum;
	}
}

/// The reference on the file's layout, one block at a time: what the tiles must compute.
#[cfg(test)]
fn dot_scalar(format: Format, w: &[u8], x: &[Q8Block]) -> f32 {
	let f16 = |wb: &[u8], at: usize| half::f16::from_le_bytes([wb[at], wb[at + 1]]).to_f32();
	// Element j of the nibble formats is byte j's low nibble, element j + 16 its high nibble; the
	// five-bit formats add bit j of `high` as the fifth bit.
	let nibbles = |qs: &[u8], high: u32, xb: &Q8Block| {
		let mut products = 0i32;
		for (j, &byte) in qs.iter().enumerate() {
			let low = (byte & 0x0F) as i32 | (((high >> j) & 1) << 4) as i32;
			let up = (byte >> 4) as i32 | (((high >> (j + 16)) & 1) << 4) as i32;
			products += low * xb.qs[j] as i32 + up * xb.qs[j + BLOCK / 2] as i32;
		}
		products
	};
	let high_bits = |wb: &[u8], at: usize| u32::from_le_bytes([wb[at], wb[at + 1], wb[at + 2], wb[at + 3]]);
	let mut total = 0f32;
	for (wb, xb) in w.chunks_exact(format.block_bytes()).zip(x) {
		let d = f16(wb, 0);
		// (Σ w·x over the block in integers, what multiplies `xb.sum`: the minimum.)
		let (products, min) = match format {
			Format::Q4_0 => (nibbles(&wb[2..], 0, xb) - 8 * xb.qsum, 0.0),
			Format::Q4_1 => (nibbles(&wb[4..], 0, xb), f16(wb, 2)),
			Format::Q5_0 => (nibbles(&wb[6..], high_bits(wb, 2), xb) - 16 * xb.qsum, 0.0),
			Format::Q5_1 => (nibbles(&wb[8..], high_bits(wb, 4), xb), f16(wb, 2)),
			Format::Q8_0 => (wb[2..].iter().zip(&xb.qs).map(|(&q, &x)| q as i8 as i32 * x as i32).sum(), 0.0),
			Format::Q4K | Format::Q5K | Format::Q6K => unreachable!("{format:?} takes Q8K activations"),
		};
		total += d * xb.d * products as f32 + min * xb.sum;
	}
	total
}

#[cfg(target_arch = "x86_64")]
mod simd {
	use std::arch::x86_64::*;

	use super::Q8Block;

	/// How far ahead of each weight row's current block to prefetch (decode on SmolLM2 ran at
	/// 1.0×, 1.17×, 1.29× and 1.45× of no prefetch at 0.4, 0.8, 1.5 and 3–6 KiB).
	pub(super) const PREFETCH_BYTES: usize = 4096;

	/// The instruction sets with a kernel: the fused u8 × i8 dot product `vpdpbusd` where the CPU
	/// has it, in AVX-VNNI's encoding (Intel's recent cores) or AVX-512 VNNI's on 256-bit
	/// registers (AMD's Zen 4 and 5, Intel's Xeons), else AVX2's two multiplies.
	#[derive(Clone, Copy, Debug, PartialEq, Eq)]
	pub enum Isa {
		Avx2,
		AvxVnni,
		Avx512Vnni,
	}

	/// The fastest instruction set this CPU runs, `None` without AVX2 (the scalar code then).
	pub fn isa() -> Option<Isa> {
		static ISA: std::sync::OnceLock<Option<Isa>> = std::sync::OnceLock::new();
		*ISA.get_or_init(|| supported().last().copied())
	}

	/// Every instruction set this CPU runs, slowest first (the tests run each).
	pub fn supported() -> Vec<Isa> {
		let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
		let mut isas = Vec::new();
		if avx2 {
			isas.push(Isa::Avx2);
			if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") {
				isas.push(Isa::Avx512Vnni);
			}
			if is_x86_feature_detected!("avxvnni") {
				isas.push(Isa::AvxVnni);
			}
		}
		isas
	}

	/// [`super::quantize_row`] in AVX2: the same scale, rounding and sums, eight lanes at a time.
	///
	/// Safety: the CPU has AVX2 and FMA.
	#[target_feature(enable = "avx2,fma")]
	pub unsafe fn quantize_row(x: &[f32], out: &mut [Q8Block]) {
		let sign_bit = _mm256_set1_ps(-0.0);
		for (chunk, block) in x.chunks_exact(super::BLOCK).zip(out.iter_mut()) {
			let p = chunk.as_ptr();
			let v = [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)), _mm256_loadu_ps(p.add(16)), _mm256_loadu_ps(p.add(24))];
			let abs = v.map(|v| _mm256_andnot_ps(sign_bit, v));
			let max8 = _mm256_max_ps(_mm256_max_ps(abs[0], abs[1]), _mm256_max_ps(abs[2], abs[3]));
			let max4 = _mm_max_ps(_mm256_castps256_ps128(max8), _mm256_extractf128_ps(max8, 1));
			let max2 = _mm_max_ps(max4, _mm_movehl_ps(max4, max4));
			let amax = _mm_cvtss_f32(_mm_max_ss(max2, _mm_movehdup_ps(max2)));
			let d = amax / 127.0;
			let inverse = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
			let q = v.map(|v| {
				_mm256_cvtps_epi32(_mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
					v, inverse,
				)))
			});
			// Pack 32 i32 lanes to i8; the packs interleave 128-bit halves, the permute restores order.
			let packed = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
			let ordered = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
			_mm256_storeu_si256(block.qs.as_mut_ptr() as *mut __m256i, ordered);
			let sum8 = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
			let sum4 = _mm_add_epi32(_mm256_castsi256_si128(sum8), _mm256_extracti128_si256(sum8, 1));
			let sum2 = _mm_add_epi32(sum4, _mm_unpackhi_epi64(sum4, sum4));
			let sum = _mm_cvtsi128_si32(_mm_add_epi32(sum2, _mm_shuffle_epi32(sum2, 1)));
			block.d = d;
			block.sum = d * sum as f32;
			block.qsum = sum;
		}
	}
}

#[cfg(test)]
mod tests {
	use candle_core::quantized::QMatMul;
	use candle_core::Module;
	use rand::{rngs::StdRng, Rng, SeedableRng};

	use super::*;

	fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
		(0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
	}

	fn quantized_weights(rng: &mut StdRng, dtype: GgmlDType, rows: usize, cols: usize) -> QTensor {
		let w = Tensor::from_vec(random(rng, rows * cols), (rows, cols), &Device::Cpu).unwrap();
		QTensor::quantize(&w, dtype).unwrap()
	}

	fn max_relative_error(a: &[f32], b: &[f32]) -> f32 {
		let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
		a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs() / scale))
	}

	/// Every format with a kernel, each with a width its blocks divide (the K-quants need 256).
	const FORMATS: [(GgmlDType, usize); 8] = [
		(GgmlDType::Q4_0, 576),
		(GgmlDType::Q4_1, 576),
		(GgmlDType::Q5_0, 576),
		(GgmlDType::Q5_1, 576),
		(GgmlDType::Q8_0, 576),
		(GgmlDType::Q4K, 512),
		(GgmlDType::Q5K, 768),
		(GgmlDType::Q6K, 512),
	];

	/// The scalar reference's `x · Wᵀ` on the file's blocks of `q`, with the activations quantized
	/// as the kernels quantize them.
	fn scalar_reference(q: &QTensor, input: &[f32]) -> Vec<f32> {
		let format = Format::of(q.dtype()).unwrap();
		let (rows, cols) = q.shape().dims2().unwrap();
		let data = q.data().unwrap();
		let row_bytes = cols / format.block_len() * format.block_bytes();
		let weight_row = |j: usize| &data[j * row_bytes..(j + 1) * row_bytes];
		let mut expected = Vec::new();
		for x in input.chunks_exact(cols) {
			if format.block_len() == k::QK_K {
				let mut q = vec![k::Q8KBlock::default(); cols / k::QK_K];
				k::quantize_row(x, &mut q);
				expected.extend((0..rows).map(|j| k::dot_scalar(format, weight_row(j), &q)));
			} else {
				let mut q = vec![Q8Block::default(); cols / BLOCK];
				quantize_row(x, &mut q);
				expected.extend((0..rows).map(|j| dot_scalar(format, weight_row(j), &q)));
			}
		}
		expected
	}

	/// The SIMD kernels of every instruction set this CPU runs, and the scalar code, equal the
	/// scalar reference on the file's layout for the same quantized activations, for every format
	/// and tile shape: one or two weight rows, a last K-quant tile of 5 rows (37 rows), ragged
	/// activation row tiles.
	#[cfg(target_arch = "x86_64")]
	#[test]
	fn simd_kernels_match_the_scalar_reference() {
		let mut rng = StdRng::seed_from_u64(7);
		let rows = 37;
		let isas = simd::supported();
		eprintln!("instruction sets with kernels on this CPU: {isas:?}");
		assert_eq!(isa(), isas.last().copied(), "the fastest one is used");
		for (dtype, cols) in FORMATS {
			let q = quantized_weights(&mut rng, dtype, rows, cols);
			let weights = QuantMatrix::from_qtensor(&q).unwrap().unwrap();
			for m in [1, 2, 3, 4, 5, 9] {
				let input = random(&mut rng, m * cols);
				let expected = scalar_reference(&q, &input);
				for isa in std::iter::once(None).chain(isas.iter().copied().map(Some)) {
					let mut out = vec![0f32; m * rows];
					weights.matmul_on(isa, &input, m, &mut out);
					let error = max_relative_error(&out, &expected);
					assert!(error < 1e-5, "{dtype:?} on {isa:?}, m = {m}: relative error {error}");
				}
			}
		}
	}

	/// Against the dequantized float product, at least as close as candle's own quantized matmul:
	/// both differ from it only by rounding the activations to 8 bits. This also pins each
	/// format's layout to candle's dequantization, written independently of ours.
	#[test]
	fn matches_candle_and_the_float_product() {
		let mut rng = StdRng::seed_from_u64(11);
		let (rows, cols, m) = (96, 1536, 6);
		for (dtype, _) in FORMATS {
			let q = quantized_weights(&mut rng, dtype, rows, cols);
			let float_weights = q.dequantize(&Device::Cpu).unwrap();
			let ours = QuantMatrix::from_qtensor(&q).unwrap().unwrap();
			let candle = QMatMul::from_qtensor(q).unwrap();
			let x = Tensor::from_vec(random(&mut rng, m * cols), (m, cols), &Device::Cpu).unwrap();
			let flat = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
			let got = flat(ours.forward(&x).unwrap());
			let by_candle = flat(candle.forward(&x).unwrap());
			let exact = flat(x.matmul(&float_weights.t().unwrap()).unwrap());
			let (ours_error, candle_error) = (max_relative_error(&got, &exact), max_relative_error(&by_candle, &exact));
			assert!(ours_error < 1e-2, "{dtype:?} against the float product: {ours_error}");
			assert!(ours_error <= candle_error * 1.25, "{dtype:?}: ours {ours_error}, candle {candle_error}");
			assert!(max_relative_error(&got, &by_candle) < 1e-2);
		}
	}

	/// Products taken together in one dispatch equal each taken alone, bit for bit, whatever
	/// their formats and row counts (a tile padded with zero rows among them); matrices that do
	/// not share a quantized input are refused.
	#[test]
	fn fused_products_equal_separate_ones() {
		let mut rng = StdRng::seed_from_u64(17);
		let (cols, m) = (512, 5);
		let x = random(&mut rng, m * cols);
		for group in [
			&[(GgmlDType::Q4K, 40), (GgmlDType::Q6K, 13), (GgmlDType::Q5K, 8)][..],
			&[(GgmlDType::Q4_0, 24), (GgmlDType::Q8_0, 7), (GgmlDType::Q5_1, 16)][..],
		] {
			let matrices: Vec<QuantMatrix> = group
				.iter()
				.map(|&(dtype, rows)| QuantMatrix::from_qtensor(&quantized_weights(&mut rng, dtype, rows, cols)).unwrap().unwrap())
				.collect();
			let refs: Vec<&QuantMatrix> = matrices.iter().collect();
			let fused = QuantMatrix::matmul_rows_many(&refs, &x, m).unwrap().expect("one quantized input");
			for (w, got) in matrices.iter().zip(&fused) {
				assert_eq!(got, &w.matmul_rows(&x, m).unwrap());
			}
		}
		let k = QuantMatrix::from_qtensor(&quantized_weights(&mut rng, GgmlDType::Q4K, 8, cols)).unwrap().unwrap();
		let block32 = QuantMatrix::from_qtensor(&quantized_weights(&mut rng, GgmlDType::Q8_0, 8, cols)).unwrap().unwrap();
		let wider = QuantMatrix::from_qtensor(&quantized_weights(&mut rng, GgmlDType::Q4K, 8, 2 * cols)).unwrap().unwrap();
		assert!(QuantMatrix::matmul_rows_many(&[&k, &block32], &x, m).unwrap().is_none());
		assert!(QuantMatrix::matmul_rows_many(&[&k, &wider], &x, m).unwrap().is_none());
		assert!(QuantMatrix::matmul_rows_many(&[&k, &k], &x[1..], m).is_err());
	}

	/// Q6_K's scales are signed bytes: a block whose scale is −128, and Q4_K scales and minimums
	/// at their 6-bit maximum, still give the float product of what candle dequantizes.
	#[test]
	fn extreme_k_scales_match_the_float_product() {
		let mut rng = StdRng::seed_from_u64(13);
		let (rows, cols, m) = (4, 512, 3);
		for (dtype, at, span, value) in [(GgmlDType::Q6K, 192, 1, 0x80u8), (GgmlDType::Q4K, 4, 12, 0xFF)] {
			let q = quantized_weights(&mut rng, dtype, rows, cols);
			let mut bytes = q.data().unwrap().into_owned();
			// The first block of every row: a Q6_K scale byte, or Q4_K's 12 packed bytes (all ones
			// make every scale and minimum 63).
			let block_bytes = Format::of(dtype).unwrap().block_bytes();
			for row in 0..rows {
				let block = row * cols / k::QK_K * block_bytes;
				bytes[block + at..block + at + span].fill(value);
			}
			let q = candle_core::quantized::ggml_file::qtensor_from_ggml(dtype, &bytes, vec![rows, cols], &Device::Cpu).unwrap();
			let float_weights = q.dequantize(&Device::Cpu).unwrap();
			let ours = QuantMatrix::from_qtensor(&q).unwrap().unwrap();
			let x = Tensor::from_vec(random(&mut rng, m * cols), (m, cols), &Device::Cpu).unwrap();
			let flat = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
			let got = flat(ours.forward(&x).unwrap());
			let exact = flat(x.matmul(&float_weights.t().unwrap()).unwrap());
			let error = max_relative_error(&got, &exact);
			assert!(error < 1e-2, "{dtype:?} with extreme scales: {error}");
			assert!(max_relative_error(&got, &scalar_reference(&q, &flat(x))) < 1e-5);
		}
	}

	#[test]
	fn simd_quantization_matches_the_scalar_one() {
		let mut rng = StdRng::seed_from_u64(5);
		let mut x = random(&mut rng, 4 * BLOCK);
		x[BLOCK..2 * BLOCK].fill(0.0); // an all-zero block
		x[2 * BLOCK] = 0.5 * x[2 * BLOCK + 1]; // halfway cases round to even
		let mut scalar = vec![Q8Block::default(); 4];
		quantize_row_scalar(&x, &mut scalar);
		let mut fast = vec![Q8Block::default(); 4];
		quantize_row(&x, &mut fast);
		for (a, b) in fast.iter().zip(&scalar) {
			assert_eq!((a.d, a.sum, a.qsum, a.qs), (b.d, b.sum, b.qsum, b.qs));
		}
	}

	/// The K-quants' activation blocks: the same values, rounding and sums by either path.
	#[test]
	fn simd_k_quantization_matches_the_scalar_one() {
		let mut rng = StdRng::seed_from_u64(6);
		let mut x = random(&mut rng, 3 * k::QK_K);
		x[k::QK_K..2 * k::QK_K].fill(0.0);
		let mut scalar = vec![k::Q8KBlock::default(); 3];
		k::quantize_row_scalar(&x, &mut scalar);
		let mut fast = vec![k::Q8KBlock::default(); 3];
		k::quantize_row(&x, &mut fast);
		for (a, b) in fast.iter().zip(&scalar) {
			assert_eq!((a.d, a.qs, a.bsums, a.bsums32), (b.d, b.qs, b.bsums, b.bsums32));
		}
	}

	#[test]
	fn leading_dims_are_kept_and_a_wrong_width_is_an_error() {
		let mut rng = StdRng::seed_from_u64(3);
		let ours = QuantMatrix::from_qtensor(&quantized_weights(&mut rng, GgmlDType::Q4_1, 8, 64)).unwrap().unwrap();
		let x = Tensor::from_vec(random(&mut rng, 2 * 3 * 64), (2, 3, 64), &Device::Cpu).unwrap();
		assert_eq!(ours.forward(&x).unwrap().dims(), &[2, 3, 8]);
		let wrong = Tensor::zeros((2, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
		assert!(ours.forward(&wrong).is_err());
	}

	/// Looked-up rows equal candle's dequantization of the whole table, for every format with a
	/// kernel here and for those left to candle; an id past the table is an error.
	#[test]
	fn looked_up_rows_equal_the_dequantized_table() {
		let mut rng = StdRng::seed_from_u64(13);
		let (rows, cols, ids) = (40, 512, [0u32, 39, 7, 7, 21]);
		for dtype in FORMATS.map(|(dtype, _)| dtype).into_iter().chain([GgmlDType::Q3K, GgmlDType::F16]) {
			let q = quantized_weights(&mut rng, dtype, rows, cols);
			let table = q.dequantize(&Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
			let want: Vec<f32> = ids.iter().flat_map(|&id| table[id as usize].clone()).collect();
			let got = match QuantMatrix::from_qtensor(&q).unwrap() {
				Some(ours) => {
					assert!(ours.dequantize_rows(&[rows as u32]).is_err());
					ours.dequantize_rows(&ids).unwrap()
				},
				None => {
					assert!(qtensor_rows(&q, &[rows as u32]).is_err());
					qtensor_rows(&q, &ids).unwrap()
				},
			};
			assert_eq!(got.dims(), &[ids.len(), cols]);
			assert_eq!(got.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want, "{dtype:?}");
		}
	}

	/// Reading a tensor's bytes from a file gives the matrix built from candle's `QTensor`; a
	/// file cut short is an error, a type without a kernel `None`.
	#[test]
	fn reading_from_a_file_equals_the_qtensor() {
		let mut rng = StdRng::seed_from_u64(17);
		let (rows, cols, m) = (20, 512, 3);
		let input = random(&mut rng, m * cols);
		for dtype in [GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q6K] {
			let q = quantized_weights(&mut rng, dtype, rows, cols);
			let mut file = vec![0xAAu8; 100];
			file.extend_from_slice(&q.data().unwrap());
			let read = QuantMatrix::read(dtype, q.shape(), &mut std::io::Cursor::new(&file), 100).unwrap().unwrap();
			let built = QuantMatrix::from_qtensor(&q).unwrap().unwrap();
			assert_eq!(read.matmul_rows(&input, m).unwrap(), built.matmul_rows(&input, m).unwrap(), "{dtype:?}");
			let short = &file[..file.len() - 1];
			assert!(QuantMatrix::read(dtype, q.shape(), &mut std::io::Cursor::new(short), 100).is_err());
		}
		let f16 = quantized_weights(&mut rng, GgmlDType::F16, rows, cols);
		assert!(QuantMatrix::read(GgmlDType::F16, f16.shape(), &mut std::io::Cursor::new(vec![0u8; 0]), 0).unwrap().is_none());
	}

	#[test]
	fn other_types_are_left_to_candle() {
		let w = Tensor::zeros((4, 256), candle_core::DType::F32, &Device::Cpu).unwrap();
		for dtype in [GgmlDType::Q2K, GgmlDType::Q3K, GgmlDType::Q8K, GgmlDType::F16] {
			let q = QTensor::quantize(&w, dtype).unwrap();
			assert!(QuantMatrix::from_qtensor(&q).unwrap().is_none(), "{dtype:?}");
		}
	}

}
