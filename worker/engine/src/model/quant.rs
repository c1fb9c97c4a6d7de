//! `x · Wᵀ` on the CPU for GGUF's block formats: Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 (blocks of 32)
//! here, the K-quants Q4_K, Q5_K and Q6_K (super-blocks of 256, the Q4_K_M mix) in [`k`].
//!
//! candle 0.11 computes Q4_1, Q5_0 and Q5_1 dot products with its scalar reference code (it has
//! no SIMD path for these types), which made them four fifths of a decode step. These kernels
//! follow ggml's scheme: activations are quantized per block of 32 to i8 with an f32 scale; each
//! weight block is widened to 32 bytes once and multiplied (u8 × i8: `vpdpbusd` where the CPU has
//! AVX-VNNI or AVX-512 VNNI, AVX2's two multiplies otherwise, chosen at run time) against a tile of
//! up to four activation rows, so a batch of sequences reads each weight block once per tile
//! instead of once per row. Work is split over pairs of weight
//! rows on candle's persistent CPU pool. For the K-quants candle 0.11 keeps a second, repacked
//! copy of every tensor beside the file's (a Q4_K_M model held twice); these kernels read the
//! file's layout.

use std::{
	borrow::Cow,
	io::{Read, Seek, SeekFrom},
};

use candle_core::{
	quantized::{GgmlDType, QTensor},
	Device, Result, Tensor,
};

/// Calls `$kernel::<C, R>(isa, w, rows, sums)` for `columns` (1 or 2) weight rows and the 1 to
/// 4 activation rows of `tile`; the kernels are specialised on both counts.
macro_rules! dispatch_tile {
	($($kernel:ident)::+, $isa:expr, $w:expr, $columns:expr, $tile:expr, $blocks_per_row:expr, $sums:expr) => {{
		let (w, tile, blocks_per_row) = ($w, $tile, $blocks_per_row);
		let row = |r: usize| &tile[r * blocks_per_row..(r + 1) * blocks_per_row];
		match ($columns, tile.len() / blocks_per_row) {
			(1, 1) => $($kernel)::+::<1, 1>($isa, [w[0]], [row(0)], $sums),
			(1, 2) => $($kernel)::+::<1, 2>($isa, [w[0]], [row(0), row(1)], $sums),
			(1, 3) => $($kernel)::+::<1, 3>($isa, [w[0]], [row(0), row(1), row(2)], $sums),
			(1, _) => $($kernel)::+::<1, 4>($isa, [w[0]], [row(0), row(1), row(2), row(3)], $sums),
			(_, 1) => $($kernel)::+::<2, 1>($isa, w, [row(0)], $sums),
			(_, 2) => $($kernel)::+::<2, 2>($isa, w, [row(0), row(1)], $sums),
			(_, 3) => $($kernel)::+::<2, 3>($isa, w, [row(0), row(1), row(2)], $sums),
			(_, _) => $($kernel)::+::<2, 4>($isa, w, [row(0), row(1), row(2), row(3)], $sums),
		}
	}};
}

/// `$name::<C, R>(isa, w, rows, sums)`: the kernel of one weight format for the CPU's instruction
/// set.
#[cfg(target_arch = "x86_64")]
macro_rules! by_isa {
	($name:ident, $avx2:ident, $vnni:ident, $avx512_vnni:ident) => {
		/// `sums[c][r] = w[c] · rows[r]`.
		///
		/// Safety: the CPU has `isa`'s features; every row has as many blocks as `w[c]`.
		pub unsafe fn $name<const C: usize, const R: usize>(
			isa: Isa,
			w: [&[u8]; C],
			rows: [&[Q8Block]; R],
			sums: &mut [[f32; ROW_TILE]; 2],
		) {
			match isa {
				Isa::Avx2 => $avx2::<C, R>(w, rows, sums),
				Isa::AvxVnni => $vnni::<C, R>(w, rows, sums),
				Isa::Avx512Vnni => $avx512_vnni::<C, R>(w, rows, sums),
			}
		}
	};
}

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

/// Weights per quantization block of the 32-element formats and the activations' Q8 blocks.
const BLOCK: usize = 32;
/// Activation rows multiplied against one decoded weight block.
const ROW_TILE: usize = 4;

/// 32 activations as `d · q`; `sum` is `d · Σq`, which a weight block's minimum (or offset)
/// multiplies.
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct Q8Block {
	d: f32,
	sum: f32,
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

	/// One block's 32 weights, in the layout [`dot_scalar`] reads.
	fn dequantize_block(self, block: &[u8], out: &mut [f32]) {
		let f16 = |at: usize| half::f16::from_le_bytes([block[at], block[at + 1]]).to_f32();
		let high = |at: usize| u32::from_le_bytes([block[at], block[at + 1], block[at + 2], block[at + 3]]);
		let d = f16(0);
		// Element j is byte j's low nibble, element j + 16 its high nibble, with bits j and j + 16
		// of `high` as their fifth bits; each value is (q − offset)·d, or q·d + m.
		let mut nibbles = |qs: &[u8], high: u32, value: &dyn Fn(i32) -> f32| {
			for (j, &byte) in qs.iter().enumerate() {
				out[j] = value((byte & 0x0F) as i32 | (((high >> j) & 1) << 4) as i32);
				out[j + BLOCK / 2] = value((byte >> 4) as i32 | (((high >> (j + 16)) & 1) << 4) as i32);
			}
		};
		match self {
			Self::Q4_0 => nibbles(&block[2..], 0, &|q| (q - 8) as f32 * d),
			Self::Q4_1 => nibbles(&block[4..], 0, &|q| q as f32 * d + f16(2)),
			Self::Q5_0 => nibbles(&block[6..], high(2), &|q| (q - 16) as f32 * d),
			Self::Q5_1 => nibbles(&block[8..], high(4), &|q| q as f32 * d + f16(2)),
			Self::Q8_0 => {
				for (x, &q) in out.iter_mut().zip(&block[2..]) {
					*x = q as i8 as f32 * d;
				}
			},
			Self::Q4K | Self::Q5K | Self::Q6K => unreachable!("{self:?} is read from its tiles"),
		}
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

/// A quantized weight matrix `[rows (out features), cols (in features)]`.
pub struct QuantMatrix {
	format: Format,
	rows: usize,
	cols: usize,
	weights: Weights,
}

/// How a [`QuantMatrix`] holds its weights.
enum Weights {
	/// GGUF's blocks of 32, row after row.
	Rows(Vec<u8>),
	/// The K-quants, in tiles of 8 rows.
	Tiles(k::Tiles),
}

impl QuantMatrix {
	/// Takes a CPU tensor of a format above whose rows are whole blocks; `None` for anything
	/// else (another type or device), which the caller leaves to candle.
	pub fn from_qtensor(t: &QTensor) -> Result<Option<Self>> {
		let Some((format, rows, cols)) = Self::kernel_for(t.dtype(), t.shape())? else { return Ok(None) };
		if !t.device().is_cpu() {
			return Ok(None);
		}
		Self::from_blocks(format, rows, cols, t.data()?).map(Some)
	}

	/// Reads a tensor of GGUF type `dtype` and shape `shape` (candle's order) from `offset` of
	/// `file` straight into its final layout, without the copies candle's `QTensor` makes on
	/// the way (the file's bytes, then a typed copy); `None` for a type without a kernel here.
	pub fn read(dtype: GgmlDType, shape: &candle_core::Shape, file: &mut (impl Read + Seek), offset: u64) -> Result<Option<Self>> {
		let Some((format, rows, cols)) = Self::kernel_for(dtype, shape)? else { return Ok(None) };
		let mut bytes = vec![0u8; rows * cols / format.block_len() * format.block_bytes()];
		file.seek(SeekFrom::Start(offset))?;
		file.read_exact(&mut bytes)?;
		Self::from_blocks(format, rows, cols, Cow::Owned(bytes)).map(Some)
	}

	/// The format and (rows, cols) of a matrix whose rows are whole blocks of a format with a
	/// kernel here.
	fn kernel_for(dtype: GgmlDType, shape: &candle_core::Shape) -> Result<Option<(Format, usize, usize)>> {
		let Some(format) = Format::of(dtype) else { return Ok(None) };
		let (rows, cols) = shape.dims2()?;
		Ok((cols % format.block_len() == 0).then_some((format, rows, cols)))
	}

	fn from_blocks(format: Format, rows: usize, cols: usize, data: Cow<[u8]>) -> Result<Self> {
		if data.len() != rows * cols / format.block_len() * format.block_bytes() {
			candle_core::bail!("{format:?} tensor of shape ({rows}, {cols}) has {} bytes", data.len());
		}
		let weights = match format.block_len() {
			k::QK_K => Weights::Tiles(k::Tiles::pack(format, rows, cols, &data)),
			_ => Weights::Rows(data.into_owned()),
		};
		Ok(Self { format, rows, cols, weights })
	}

	/// `x · Wᵀ` for `x` of shape `[.., cols]`.
	pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
		let dims = x.dims();
		let Some((&k, lead)) = dims.split_last() else { candle_core::bail!("matmul of a scalar") };
		if k != self.cols {
			candle_core::bail!("matmul: the input has {k} features, the weights {}", self.cols);
		}
		let m: usize = lead.iter().product();
		let input = x.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
		let out = self.matmul_rows(&input, m)?;
		let mut shape = lead.to_vec();
		shape.push(self.rows);
		Tensor::from_vec(out, shape, &Device::Cpu)
	}

	/// `input · Wᵀ` for `m` rows of `cols` inputs, as a row-major `[m, rows]` vector.
	pub fn matmul_rows(&self, input: &[f32], m: usize) -> Result<Vec<f32>> {
		if input.len() != m * self.cols {
			candle_core::bail!("matmul: {} inputs for {m} rows of {}", input.len(), self.cols);
		}
		let mut out = vec![0f32; m * self.rows];
		self.matmul(input, m, &mut out);
		Ok(out)
	}

	/// Weight rows `ids` as f32s, `[ids.len(), cols]`: the rows a step looks up when this is a
	/// token embedding table, dequantized as llama.cpp dequantizes them.
	pub fn dequantize_rows(&self, ids: &[u32]) -> Result<Tensor> {
		let mut out = vec![0f32; ids.len() * self.cols];
		for (&id, out) in ids.iter().zip(out.chunks_exact_mut(self.cols)) {
			if id as usize >= self.rows {
				candle_core::bail!("token id {id} is outside the {} rows of the embedding table", self.rows);
			}
			match &self.weights {
				Weights::Rows(_) => {
					for (block, out) in self.weight_row(id as usize).chunks_exact(self.format.block_bytes()).zip(out.chunks_exact_mut(BLOCK)) {
						self.format.dequantize_block(block, out);
					}
				},
				Weights::Tiles(tiles) => tiles.dequantize_row(id as usize, out),
			}
		}
		Tensor::from_vec(out, (ids.len(), self.cols), &Device::Cpu)
	}

	/// Row `j`'s blocks of 32 (the K-quants' rows are interleaved in tiles).
	fn weight_row(&self, j: usize) -> &[u8] {
		let Weights::Rows(blocks) = &self.weights else { unreachable!("{:?} rows are tiled", self.format) };
		let bytes = self.cols / BLOCK * self.format.block_bytes();
		&blocks[j * bytes..(j + 1) * bytes]
	}

	/// `out[m, rows] = input[m, cols] · Wᵀ`, with the CPU's fastest kernels.
	fn matmul(&self, input: &[f32], m: usize, out: &mut [f32]) {
		self.matmul_on(isa(), input, m, out)
	}

	/// [`Self::matmul`] with the kernels of `isa` (the scalar reference for `None`), which the
	/// CPU must run.
	fn matmul_on(&self, isa: Option<Isa>, input: &[f32], m: usize, out: &mut [f32]) {
		if let Weights::Tiles(tiles) = &self.weights {
			return tiles.matmul(isa, input, m, out);
		}
		let blocks_per_row = self.cols / BLOCK;
		let mut quantized = vec![Q8Block::default(); m * blocks_per_row];
		for (row, q) in input.chunks_exact(self.cols).zip(quantized.chunks_exact_mut(blocks_per_row)) {
			quantize_row(row, q);
		}
		let n = self.rows;
		let out_ptr = SyncPtr(out.as_mut_ptr());
		let pool = candle_core::utils::barrier_pool();
		pool.execute_chunked(n.div_ceil(2), |weight_row_pairs| {
			let out_ptr = &out_ptr;
			for pair in weight_row_pairs {
				let first = pair * 2;
				let columns = (n - first).min(2);
				let w = [self.weight_row(first), self.weight_row(first + columns - 1)];
				for tile_start in (0..m).step_by(ROW_TILE) {
					let tile = &quantized[tile_start * blocks_per_row..(tile_start + ROW_TILE).min(m) * blocks_per_row];
					let mut sums = [[0f32; ROW_TILE]; 2];
					dot_tile(isa, self.format, w, columns, tile, blocks_per_row, &mut sums);
					for (c, column) in sums.iter().enumerate().take(columns) {
						for (r, &s) in column.iter().enumerate().take(tile.len() / blocks_per_row) {
							// Safety: each (row, column) of `out` is written by exactly one work
							// item, and `execute_chunked` returns only after every item is done.
							unsafe { *out_ptr.0.add((tile_start + r) * n + first + c) = s };
						}
					}
				}
			}
		});
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
	}
}

/// Dot products of one or two weight rows (`w`) with each activation row of `tile` (1 to 4 rows
/// of `blocks_per_row` blocks): `sums[c][r]`.
fn dot_tile(
	isa: Option<Isa>,
	format: Format,
	w: [&[u8]; 2],
	columns: usize,
	tile: &[Q8Block],
	blocks_per_row: usize,
	sums: &mut [[f32; ROW_TILE]; 2],
) {
	#[cfg(target_arch = "x86_64")]
	if let Some(isa) = isa {
		// Safety: `isa` is one the CPU runs; every row has `blocks_per_row` blocks.
		unsafe {
			match format {
				Format::Q4_0 => dispatch_tile!(simd::q4_0, isa, w, columns, tile, blocks_per_row, sums),
				Format::Q4_1 => dispatch_tile!(simd::q4_1, isa, w, columns, tile, blocks_per_row, sums),
				Format::Q5_0 => dispatch_tile!(simd::q5_0, isa, w, columns, tile, blocks_per_row, sums),
				Format::Q5_1 => dispatch_tile!(simd::q5_1, isa, w, columns, tile, blocks_per_row, sums),
				Format::Q8_0 => dispatch_tile!(simd::q8_0, isa, w, columns, tile, blocks_per_row, sums),
				Format::Q4K | Format::Q5K | Format::Q6K => unreachable!("{format:?} takes Q8K activations"),
			}
		}
		return;
	}
	#[cfg(not(target_arch = "x86_64"))]
	let _ = isa;
	for c in 0..columns {
		for (r, x) in tile.chunks_exact(blocks_per_row).enumerate() {
			sums[c][r] = dot_scalar(format, w[c], x);
		}
	}
}

/// The reference: what the SIMD kernels compute, one block at a time.
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
		// (Σ q·x over the block, what multiplies `xb.sum`: the minimum or −offset·d.)
		let (products, min) = match format {
			Format::Q4_0 => (nibbles(&wb[2..], 0, xb), -8.0 * d),
			Format::Q4_1 => (nibbles(&wb[4..], 0, xb), f16(wb, 2)),
			Format::Q5_0 => (nibbles(&wb[6..], high_bits(wb, 2), xb), -16.0 * d),
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

	use super::{Q8Block, ROW_TILE};

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

	/// One kernel per weight format and instruction set: the same loop around a different block
	/// decoding and 32-byte u8 × i8 dot product. Each weight block is decoded once and multiplied
	/// against every row's block; two weight rows at a time keep independent accumulators in
	/// flight. `$decode` turns the block pointer `$p` into (scale, minimum, the weights `$w` as
	/// 32 bytes); `$products` turns `$w` and the activations `$x` into eight i32 sums.
	macro_rules! kernel {
		(
			$name:ident, $features:literal, $block_bytes:literal,
			|$p:ident| $decode:expr,
			|$w:ident, $x:ident| $products:expr
		) => {
			#[target_feature(enable = $features)]
			unsafe fn $name<const C: usize, const R: usize>(
				w: [&[u8]; C],
				rows: [&[Q8Block]; R],
				sums: &mut [[f32; ROW_TILE]; 2],
			) {
				let mut acc = [[_mm256_setzero_ps(); R]; C];
				let mut min_terms = [[0f32; R]; C];
				let blocks = w[0].len() / $block_bytes;
				for b in 0..blocks {
					for c in 0..C {
						let $p = w[c].as_ptr().add(b * $block_bytes);
						// The weights stream from L3 or memory, in runs too short for the hardware
						// prefetcher to catch up: ask for what comes a few KiB ahead.
						_mm_prefetch::<_MM_HINT_T0>($p.add(PREFETCH_BYTES) as *const i8);
						let (scale, min, $w): (f32, f32, __m256i) = $decode;
						for r in 0..R {
							let xb = rows[r].get_unchecked(b);
							let $x = _mm256_loadu_si256(xb.qs.as_ptr() as *const __m256i);
							let products: __m256i = $products;
							acc[c][r] =
								_mm256_fmadd_ps(_mm256_cvtepi32_ps(products), _mm256_set1_ps(scale * xb.d), acc[c][r]);
							min_terms[c][r] += min * xb.sum;
						}
					}
				}
				for c in 0..C {
					for r in 0..R {
						sums[c][r] = hsum(acc[c][r]) + min_terms[c][r];
					}
				}
			}
		};
	}

	/// The sum of the eight lanes.
	#[inline(always)]
	pub(super) unsafe fn hsum(v: __m256) -> f32 {
		let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
		let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
		_mm_cvtss_f32(_mm_add_ss(pair, _mm_movehdup_ps(pair)))
	}

	/// The f16 at `p` as f32, loaded with the next two bytes (a 16-bit load into a vector
	/// register made the whole kernel a third slower).
	#[inline(always)]
	pub(super) unsafe fn f16_at(p: *const u8) -> f32 {
		_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(p as *const i32))))
	}

	/// The 16 packed bytes at `p` widened to [low nibbles | high nibbles], the activations' order
	/// (elements j and j + 16 share a byte).
	#[inline(always)]
	unsafe fn nibbles(p: *const u8) -> __m256i {
		let packed = _mm_loadu_si128(p as *const __m128i);
		let nibbles = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
		_mm256_and_si256(nibbles, _mm256_set1_epi8(0x0F))
	}

	/// The 32 bits at `p` as 32 bytes, 16 where the bit is set: the five-bit formats' fifth bits.
	#[inline(always)]
	unsafe fn fifth_bits(p: *const u8) -> __m256i {
		let bits = _mm256_set1_epi32(std::ptr::read_unaligned(p as *const i32));
		// Byte i takes the bit's byte (i / 8), then keeps bit i % 8.
		let spread = _mm256_shuffle_epi8(
			bits,
			_mm256_setr_epi64x(0, 0x0101_0101_0101_0101, 0x0202_0202_0202_0202, 0x0303_0303_0303_0303),
		);
		let mask = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
		_mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, mask), mask), _mm256_set1_epi8(16))
	}

	/// The adjacent f16s at `p` (scale, minimum) as f32s: one load and one conversion for both.
	#[inline(always)]
	unsafe fn f16_pair(p: *const u8) -> (f32, f32) {
		let pair = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(p as *const i32)));
		(_mm_cvtss_f32(pair), _mm_cvtss_f32(_mm_movehdup_ps(pair)))
	}

	// Each decoding gives (scale, what multiplies the activations' sum, the weights as 32 u8).
	/// Q4_0: `d·(q − 8)`, the offset through the activations' sum.
	#[inline(always)]
	unsafe fn q4_0_decode(p: *const u8) -> (f32, f32, __m256i) {
		let d = f16_at(p);
		(d, -8.0 * d, nibbles(p.add(2)))
	}

	#[inline(always)]
	unsafe fn q4_1_decode(p: *const u8) -> (f32, f32, __m256i) {
		let (d, m) = f16_pair(p);
		(d, m, nibbles(p.add(4)))
	}

	#[inline(always)]
	unsafe fn q5_0_decode(p: *const u8) -> (f32, f32, __m256i) {
		let d = f16_at(p);
		(d, -16.0 * d, _mm256_or_si256(nibbles(p.add(6)), fifth_bits(p.add(2))))
	}

	#[inline(always)]
	unsafe fn q5_1_decode(p: *const u8) -> (f32, f32, __m256i) {
		let (d, m) = f16_pair(p);
		(d, m, _mm256_or_si256(nibbles(p.add(8)), fifth_bits(p.add(4))))
	}

	/// Q8_0: signed weights, multiplied as |w| × (x with w's sign) to fit u8 × i8.
	#[inline(always)]
	unsafe fn q8_0_decode(p: *const u8) -> (f32, f32, __m256i) {
		(f16_at(p), 0.0, _mm256_loadu_si256(p.add(2) as *const __m256i))
	}

	/// Unsigned weights (every format but Q8_0) times signed activations, eight i32 sums.
	#[inline(always)]
	unsafe fn unsigned_avx2(w: __m256i, x: __m256i) -> __m256i {
		_mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1))
	}

	#[inline(always)]
	unsafe fn unsigned_vnni(w: __m256i, x: __m256i) -> __m256i {
		_mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), w, x)
	}

	#[inline(always)]
	unsafe fn unsigned_avx512_vnni(w: __m256i, x: __m256i) -> __m256i {
		_mm256_dpbusd_epi32(_mm256_setzero_si256(), w, x)
	}

	// maddubs sums u8 × i8 pairs into i16 without saturating here (at most 2·31·128 for the
	// five-bit formats, 2·127·127 for Q8_0), then madd sums pairs of those into i32.
	kernel!(q4_0_avx2, "avx2,fma,f16c", 18, |p| q4_0_decode(p), |w, x| unsigned_avx2(w, x));
	kernel!(q4_0_vnni, "avx2,fma,f16c,avxvnni", 18, |p| q4_0_decode(p), |w, x| unsigned_vnni(w, x));
	kernel!(q4_0_avx512_vnni, "avx2,fma,f16c,avx512vnni,avx512vl", 18, |p| q4_0_decode(p), |w, x| unsigned_avx512_vnni(w, x));
	kernel!(q4_1_avx2, "avx2,fma,f16c", 20, |p| q4_1_decode(p), |w, x| unsigned_avx2(w, x));
	kernel!(q4_1_vnni, "avx2,fma,f16c,avxvnni", 20, |p| q4_1_decode(p), |w, x| unsigned_vnni(w, x));
	kernel!(q4_1_avx512_vnni, "avx2,fma,f16c,avx512vnni,avx512vl", 20, |p| q4_1_decode(p), |w, x| unsigned_avx512_vnni(w, x));
	kernel!(q5_0_avx2, "avx2,fma,f16c", 22, |p| q5_0_decode(p), |w, x| unsigned_avx2(w, x));
	kernel!(q5_0_vnni, "avx2,fma,f16c,avxvnni", 22, |p| q5_0_decode(p), |w, x| unsigned_vnni(w, x));
	kernel!(q5_0_avx512_vnni, "avx2,fma,f16c,avx512vnni,avx512vl", 22, |p| q5_0_decode(p), |w, x| unsigned_avx512_vnni(w, x));
	kernel!(q5_1_avx2, "avx2,fma,f16c", 24, |p| q5_1_decode(p), |w, x| unsigned_avx2(w, x));
	kernel!(q5_1_vnni, "avx2,fma,f16c,avxvnni", 24, |p| q5_1_decode(p), |w, x| unsigned_vnni(w, x));
	kernel!(q5_1_avx512_vnni, "avx2,fma,f16c,avx512vnni,avx512vl", 24, |p| q5_1_decode(p), |w, x| unsigned_avx512_vnni(w, x));
	kernel!(q8_0_avx2, "avx2,fma,f16c", 34, |p| q8_0_decode(p), |w, x| {
		unsigned_avx2(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w))
	});
	kernel!(q8_0_vnni, "avx2,fma,f16c,avxvnni", 34, |p| q8_0_decode(p), |w, x| {
		unsigned_vnni(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w))
	});
	kernel!(q8_0_avx512_vnni, "avx2,fma,f16c,avx512vnni,avx512vl", 34, |p| q8_0_decode(p), |w, x| {
		unsigned_avx512_vnni(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w))
	});

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
		}
	}

	by_isa!(q4_0, q4_0_avx2, q4_0_vnni, q4_0_avx512_vnni);
	by_isa!(q4_1, q4_1_avx2, q4_1_vnni, q4_1_avx512_vnni);
	by_isa!(q5_0, q5_0_avx2, q5_0_vnni, q5_0_avx512_vnni);
	by_isa!(q5_1, q5_1_avx2, q5_1_vnni, q5_1_avx512_vnni);
	by_isa!(q8_0, q8_0_avx2, q8_0_vnni, q8_0_avx512_vnni);
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
			assert_eq!((a.d, a.sum, a.qs), (b.d, b.sum, b.qs));
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
