//! The K-quants (Q4_K, Q5_K, Q6_K): weights in super-blocks of 256 with a scale per 16 or 32,
//! against activations in Q8K blocks of 256. A Q4_K_M file, what most people download, holds
//! Q4_K and Q6_K tensors.
//!
//! The file's layouts (ggml's, which candle's block types copy byte for byte):
//! - Q4_K, 144 bytes: d, dmin (f16), 12 bytes of eight 6-bit scales and minimums, 128 bytes of
//!   nibbles. Each 32 bytes hold two sub-blocks of 32: the low nibbles the first, the high the
//!   second. `w = d·scale_s·q − dmin·min_s`, q in 0..16.
//! - Q5_K, 176 bytes: as Q4_K with 32 bytes of fifth bits after the scales (bit 2c of byte l for
//!   element 64c + l, bit 2c + 1 for element 64c + 32 + l), q in 0..32.
//! - Q6_K, 210 bytes: 128 bytes of low nibbles, 64 of high bit pairs, 16 signed scales (one per
//!   16 elements), d last. `w = d·scale_g·(q − 32)`, q in 0..64.
//!
//! Loading re-lays each tensor in tiles of 8 rows (the layout of llama.cpp's and candle's
//! repacked GEMM kernels, but with the scales kept as bytes, so a tile is as small as the file's
//! eight blocks and replaces them): a 32-byte vector holds 4 weights of each of the 8 rows, and
//! one u8 × i8 dot product against 4 broadcast activations gives all 8 rows' partial sums, with
//! no horizontal sums and no shuffles. Per tile and super-block:
//! - Q4_K and Q5_K: `qs` [32 groups of 8 elements][8 rows][4 bytes], byte j of group g holding
//!   q(8g + j) in its low 4 bits and q(8g + 4 + j) in its high 4 bits; Q5_K then `fifth`
//!   [8 sub-blocks][8 rows][4 bytes], bit 2i (2i + 1) of byte j the fifth bit of element
//!   32s + 8i + j (32s + 8i + 4 + j); `scales` u8 [8 sub-blocks][8 rows]; `mins` u8 [4 pairs of
//!   sub-blocks][8 rows][2]; d and dmin, f16 [8] each.
//! - Q6_K: `qs` as above for the low 4 bits; `high` [16 groups of 16][8 rows][4 bytes], bits
//!   2i and 2i + 1 of byte j the top bits of element 16g + 4i + j; `scales` i8 [16][8 rows];
//!   d f16 [8].
//!
//! The integer sums are exact: a sub-block's (Q6_K: group's) u8 × i8 products are summed in i32,
//! multiplied by its scale, and turned into f32 once per super-block. The minimums and Q6_K's
//! −32 are applied through the activations' per-32 and per-16 sums.

use super::{Format, Isa, SyncPtr};

/// Weights per super-block.
pub(super) const QK_K: usize = 256;
/// Weight rows per tile.
const TILE_ROWS: usize = 8;
/// Activation rows multiplied against one tile at a time.
const ROW_TILE: usize = 4;

/// 256 activations as `d · q`, with the sums of q per 16 (`bsums`, Q6_K's groups) and per 32
/// (`bsums32`, Q4_K's and Q5_K's sub-blocks).
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub(super) struct Q8KBlock {
	pub(super) qs: [i8; QK_K],
	pub(super) bsums: [i16; 16],
	pub(super) bsums32: [i16; 8],
	pub(super) d: f32,
}

impl Default for Q8KBlock {
	fn default() -> Self {
		Self { qs: [0; QK_K], bsums: [0; 16], bsums32: [0; 8], d: 0.0 }
	}
}

/// Quantizes one row to Q8K blocks.
pub(super) fn quantize_row(x: &[f32], out: &mut [Q8KBlock]) {
	#[cfg(target_arch = "x86_64")]
	if super::simd::isa().is_some() {
		// Safety: `isa` checked for AVX2.
		unsafe { simd::quantize_row(x, out) };
		return;
	}
	quantize_row_scalar(x, out);
}

/// Scale `amax / 127` (so |q| ≤ 127), round to nearest even: the same rule as the Q8 blocks.
pub(super) fn quantize_row_scalar(x: &[f32], out: &mut [Q8KBlock]) {
	for (chunk, block) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
		let amax = chunk.iter().fold(0f32, |a, v| a.max(v.abs()));
		let d = amax / 127.0;
		let inverse = if d != 0.0 { 1.0 / d } else { 0.0 };
		for (q, &v) in block.qs.iter_mut().zip(chunk) {
			*q = (v * inverse).round_ties_even() as i8;
		}
		block.d = d;
		block_sums(block);
	}
}

/// Fills `bsums` and `bsums32` from `qs`.
fn block_sums(block: &mut Q8KBlock) {
	for (sum, group) in block.bsums.iter_mut().zip(block.qs.chunks_exact(16)) {
		*sum = group.iter().map(|&q| q as i16).sum();
	}
	for (j, sum) in block.bsums32.iter_mut().enumerate() {
		*sum = block.bsums[2 * j] + block.bsums[2 * j + 1];
	}
}

/// Q4_K's and Q5_K's 6-bit (scale, minimum) of sub-block `j` from the 12 packed bytes: for
/// j < 4 the low 6 bits of bytes j and j + 4; above, byte j + 4's nibbles with the top 2 bits of
/// bytes j − 4 and j.
fn scale_min_k4(j: usize, packed: &[u8]) -> (u8, u8) {
	if j < 4 {
		(packed[j] & 63, packed[j + 4] & 63)
	} else {
		((packed[j + 4] & 0x0F) | ((packed[j - 4] >> 6) << 4), (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4))
	}
}

/// The eight scales and then the eight minimums of a Q4_K/Q5_K block's 12 packed bytes.
fn scales_and_mins(packed: &[u8]) -> [u8; 16] {
	let mut out = [0u8; 16];
	for j in 0..8 {
		(out[j], out[8 + j]) = scale_min_k4(j, packed);
	}
	out
}

/// The unsigned quant of element `e` (0..256) of a Q4_K (`fifth` empty) or Q5_K block.
#[cfg(test)]
fn q45_k_quant(nibbles: &[u8], fifth: Option<&[u8]>, e: usize) -> i32 {
	let (chunk, l) = (e / 64, e % 64);
	let byte = nibbles[32 * chunk + l % 32];
	let (q, bit) = if l < 32 { (byte & 0x0F, 2 * chunk) } else { (byte >> 4, 2 * chunk + 1) };
	let high = fifth.map_or(0, |h| (h[l % 32] >> bit) & 1);
	(q | high << 4) as i32
}

/// The unsigned 6-bit quant of element `e` of a Q6_K block (subtract 32 for its value).
#[cfg(test)]
fn q6_k_quant(block: &[u8], e: usize) -> i32 {
	let (half, p) = (e / 128, e % 128);
	let (ql, qh) = (&block[64 * half..], &block[128 + 32 * half..]);
	let (group, l) = (p / 32, p % 32);
	let low = match group {
		0 => ql[l] & 0x0F,
		1 => ql[l + 32] & 0x0F,
		2 => ql[l] >> 4,
		_ => ql[l + 32] >> 4,
	};
	(low | ((qh[l] >> (2 * group)) & 3) << 4) as i32
}


/// Byte offsets of one tile's parts for one super-block, and its size.
#[derive(Clone, Copy)]
struct TileLayout {
	/// Q5_K's fifth bits or Q6_K's high bit pairs (unused for Q4_K).
	high: usize,
	scales: usize,
	/// Q4_K's and Q5_K's minimums (unused for Q6_K).
	mins: usize,
	/// d, then (Q4_K, Q5_K) dmin.
	d: usize,
	bytes: usize,
}

/// The 4-bit quants' bytes per tile and super-block.
const QS_BYTES: usize = QK_K / 2 * TILE_ROWS;

const fn layout(format: Format) -> TileLayout {
	let (high, scales) = match format {
		Format::Q5K => (QS_BYTES, QS_BYTES + QK_K / 8 * TILE_ROWS),
		Format::Q6K => (QS_BYTES, QS_BYTES + QK_K / 4 * TILE_ROWS),
		_ => (QS_BYTES, QS_BYTES),
	};
	match format {
		Format::Q6K => TileLayout { high, scales, mins: 0, d: scales + 16 * TILE_ROWS, bytes: scales + 16 * TILE_ROWS + 2 * TILE_ROWS },
		_ => {
			let mins = scales + 8 * TILE_ROWS;
			let d = mins + 8 * TILE_ROWS;
			TileLayout { high, scales, mins, d, bytes: d + 4 * TILE_ROWS }
		},
	}
}

/// A K-quant weight matrix `[rows, cols]` in tiles of 8 rows (the last padded with zero rows),
/// tile after tile, each with its `cols / 256` super-blocks in order.
pub(super) struct Tiles {
	format: Format,
	rows: usize,
	cols: usize,
	bytes: Vec<u8>,
}

impl Tiles {
	/// Re-lays the file's blocks (`rows` rows of `cols / 256` blocks).
	pub(super) fn pack(format: Format, rows: usize, cols: usize, file: &[u8]) -> Self {
		let (l, blocks_per_row) = (layout(format), cols / QK_K);
		let mut bytes = vec![0u8; rows.div_ceil(TILE_ROWS) * blocks_per_row * l.bytes];
		for (row, blocks) in file.chunks_exact(blocks_per_row * format.block_bytes()).enumerate() {
			let r = row % TILE_ROWS;
			for (b, block) in blocks.chunks_exact(format.block_bytes()).enumerate() {
				let tile = &mut bytes[((row / TILE_ROWS) * blocks_per_row + b) * l.bytes..][..l.bytes];
				pack_block(format, l, block, r, tile);
			}
		}
		Self { format, rows, cols, bytes }
	}

	fn blocks_per_row(&self) -> usize {
		self.cols / QK_K
	}

	/// The super-blocks of tile `t`.
	fn tile(&self, t: usize) -> &[u8] {
		let span = self.blocks_per_row() * layout(self.format).bytes;
		&self.bytes[t * span..(t + 1) * span]
	}

	/// Row `j` as f32s, computed as candle and llama.cpp dequantize (`(d·scale)·q − dmin·min`,
	/// `(d·scale)·(q − 32)`), so looked-up embedding rows match theirs.
	pub(super) fn dequantize_row(&self, j: usize, out: &mut [f32]) {
		let (l, r) = (layout(self.format), j % TILE_ROWS);
		for (block, out) in self.tile(j / TILE_ROWS).chunks_exact(l.bytes).zip(out.chunks_exact_mut(QK_K)) {
			let d = f16_at(block, l.d + 2 * r);
			match self.format {
				Format::Q6K => {
					for (e, x) in out.iter_mut().enumerate() {
						let scale = block[l.scales + e / 16 * TILE_ROWS + r] as i8;
						*x = d * scale as f32 * (tile_quant(self.format, l, block, r, e) - 32) as f32;
					}
				},
				_ => {
					let dmin = f16_at(block, l.d + 2 * TILE_ROWS + 2 * r);
					for (e, x) in out.iter_mut().enumerate() {
						let (scale, min) = scale_min(l, block, r, e / 32);
						*x = d * scale as f32 * tile_quant(self.format, l, block, r, e) as f32 - dmin * min as f32;
					}
				},
			}
		}
	}

	/// `out[m, rows] = input[m, cols] · Wᵀ` with the kernels of `isa` (the scalar code for
	/// `None`), which the CPU must run. Work is split over tiles on candle's CPU pool.
	pub(super) fn matmul(&self, isa: Option<Isa>, input: &[f32], m: usize, out: &mut [f32]) {
		let blocks_per_row = self.blocks_per_row();
		let mut quantized = vec![Q8KBlock::default(); m * blocks_per_row];
		for (row, q) in input.chunks_exact(self.cols).zip(quantized.chunks_exact_mut(blocks_per_row)) {
			quantize_row(row, q);
		}
		let n = self.rows;
		let out_ptr = SyncPtr(out.as_mut_ptr());
		candle_core::utils::barrier_pool().execute_chunked(n.div_ceil(TILE_ROWS), |tiles| {
			let out_ptr = &out_ptr;
			for t in tiles {
				let tile = self.tile(t);
				for tile_start in (0..m).step_by(ROW_TILE) {
					let x = &quantized[tile_start * blocks_per_row..(tile_start + ROW_TILE).min(m) * blocks_per_row];
					let mut sums = [[0f32; TILE_ROWS]; ROW_TILE];
					dot_tile(isa, self.format, tile, x, blocks_per_row, &mut sums);
					let first = t * TILE_ROWS;
					for (r, row_sums) in sums.iter().enumerate().take(x.len() / blocks_per_row) {
						for (i, &s) in row_sums.iter().enumerate().take(n - first) {
							// Safety: each (row, column) of `out` is written by exactly one work
							// item, and `execute_chunked` returns only after every item is done.
							unsafe { *out_ptr.0.add((tile_start + r) * n + first + i) = s };
						}
					}
				}
			}
		});
	}
}

/// Writes one file block of row `r` of its tile into `tile` (one super-block's part).
fn pack_block(format: Format, l: TileLayout, block: &[u8], r: usize, tile: &mut [u8]) {
	// The low 4 bits of group g's 8 elements are 8 consecutive bytes' nibbles in the file
	// (bytes 32c.. of Q4_K's chunk c, ql's 64h + 32(k % 2).. of Q6_K's half h, quarter k):
	// byte j of the tile takes elements j and j + 4.
	let nibbles = match format {
		Format::Q6K => &block[..128],
		Format::Q5K => &block[48..],
		_ => &block[16..],
	};
	let source = |g: usize| match format {
		Format::Q6K => (64 * (g / 16) + 32 * (g % 16 / 4 % 2) + 8 * (g % 4), 4 * (g % 16 / 8)),
		_ => (32 * (g / 8) + 8 * (g % 4), 4 * (g % 8 / 4)),
	};
	for g in 0..QK_K / 8 {
		let (at, shift) = source(g);
		let src = &nibbles[at..at + 8];
		let dst = &mut tile[(g * TILE_ROWS + r) * 4..][..4];
		for j in 0..4 {
			dst[j] = ((src[j] >> shift) & 15) | (((src[j + 4] >> shift) & 15) << 4);
		}
	}
	match format {
		Format::Q6K => {
			// Bits 2i, 2i + 1 of tile byte j of group g: the top bits of element 16g + 4i + j,
			// bit pair k of qh byte 32h + l for element 128h + 32k + l.
			let qh = &block[128..192];
			for g in 0..16 {
				for j in 0..4 {
					let mut byte = 0;
					for i in 0..4 {
						let e = 16 * g + 4 * i + j;
						let (half, k, l) = (e / 128, e % 128 / 32, e % 32);
						byte |= ((qh[32 * half + l] >> (2 * k)) & 3) << (2 * i);
					}
					tile[l.high + (g * TILE_ROWS + r) * 4 + j] = byte;
				}
			}
			for g in 0..16 {
				tile[l.scales + g * TILE_ROWS + r] = block[192 + g];
			}
			tile[l.d + 2 * r..l.d + 2 * r + 2].copy_from_slice(&block[208..210]);
		},
		_ => {
			if format == Format::Q5K {
				// Element 32s + 8i + j's fifth bit is bit s of the file's byte 8i + j.
				let fifth = &block[16..48];
				for s in 0..8 {
					for j in 0..4 {
						let mut byte = 0;
						for i in 0..4 {
							byte |= ((fifth[8 * i + j] >> s) & 1) << (2 * i);
							byte |= ((fifth[8 * i + j + 4] >> s) & 1) << (2 * i + 1);
						}
						tile[l.high + (s * TILE_ROWS + r) * 4 + j] = byte;
					}
				}
			}
			let sm = scales_and_mins(&block[4..16]);
			for s in 0..8 {
				tile[l.scales + s * TILE_ROWS + r] = sm[s];
				tile[l.mins + (s / 2 * TILE_ROWS + r) * 2 + s % 2] = sm[8 + s];
			}
			tile[l.d + 2 * r..l.d + 2 * r + 2].copy_from_slice(&block[0..2]);
			tile[l.d + 2 * TILE_ROWS + 2 * r..l.d + 2 * TILE_ROWS + 2 * r + 2].copy_from_slice(&block[2..4]);
		},
	}
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
	half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// The unsigned quant of element `e` of row `r` in one super-block of a tile.
fn tile_quant(format: Format, l: TileLayout, block: &[u8], r: usize, e: usize) -> i32 {
	let (g, j) = (e / 8, e % 8);
	let low = (block[(g * TILE_ROWS + r) * 4 + j % 4] >> (4 * (j / 4))) & 15;
	let high = match format {
		Format::Q4K => 0,
		Format::Q5K => (block[l.high + (e / 32 * TILE_ROWS + r) * 4 + j % 4] >> (2 * (e % 32 / 8) + j / 4)) & 1,
		_ => (block[l.high + (e / 16 * TILE_ROWS + r) * 4 + e % 4] >> (2 * (e % 16 / 4))) & 3,
	};
	(low | high << 4) as i32
}

/// Q4_K's and Q5_K's (scale, minimum) of sub-block `s` of row `r`.
fn scale_min(l: TileLayout, block: &[u8], r: usize, s: usize) -> (u8, u8) {
	(block[l.scales + s * TILE_ROWS + r], block[l.mins + (s / 2 * TILE_ROWS + r) * 2 + s % 2])
}

/// `sums[r][i]` = row i of `tile` · activation row r of `x` (1 to 4 rows of `blocks_per_row`).
fn dot_tile(
	isa: Option<Isa>,
	format: Format,
	tile: &[u8],
	x: &[Q8KBlock],
	blocks_per_row: usize,
	sums: &mut [[f32; TILE_ROWS]; ROW_TILE],
) {
	#[cfg(target_arch = "x86_64")]
	if let Some(isa) = isa {
		let row = |r: usize| &x[r * blocks_per_row..(r + 1) * blocks_per_row];
		macro_rules! rows {
			($kernel:ident) => {
				// Safety: `isa` is one the CPU runs; the tile has `blocks_per_row` super-blocks of
				// the format's layout, as does every row.
				unsafe {
					match x.len() / blocks_per_row {
						1 => simd::$kernel::<1>(isa, tile, [row(0)], sums),
						2 => simd::$kernel::<2>(isa, tile, [row(0), row(1)], sums),
						3 => simd::$kernel::<3>(isa, tile, [row(0), row(1), row(2)], sums),
						_ => simd::$kernel::<4>(isa, tile, [row(0), row(1), row(2), row(3)], sums),
					}
				}
			};
		}
		match format {
			Format::Q4K => rows!(q4_k),
			Format::Q5K => rows!(q5_k),
			Format::Q6K => rows!(q6_k),
			_ => unreachable!("{format:?} is not a K-quant"),
		}
		return;
	}
	#[cfg(not(target_arch = "x86_64"))]
	let _ = isa;
	let l = layout(format);
	for (r, x) in x.chunks_exact(blocks_per_row).enumerate() {
		for (i, sum) in sums[r].iter_mut().enumerate() {
			*sum = tile_dot_scalar(format, l, tile, i, x);
		}
	}
}

/// Row `i` of a tile · one activation row, in the kernels' integer steps.
fn tile_dot_scalar(format: Format, l: TileLayout, tile: &[u8], i: usize, x: &[Q8KBlock]) -> f32 {
	let mut total = 0f32;
	for (block, xb) in tile.chunks_exact(l.bytes).zip(x) {
		let products = |from: usize, len: usize| -> i32 {
			(from..from + len).map(|e| tile_quant(format, l, block, i, e) * xb.qs[e] as i32).sum()
		};
		let d = f16_at(block, l.d + 2 * i);
		match format {
			Format::Q6K => {
				let sumi: i32 = (0..16)
					.map(|g| block[l.scales + g * TILE_ROWS + i] as i8 as i32 * (products(16 * g, 16) - 32 * xb.bsums[g] as i32))
					.sum();
				total += d * xb.d * sumi as f32;
			},
			_ => {
				let (mut sumi, mut summ) = (0i32, 0i32);
				for s in 0..8 {
					let (scale, min) = scale_min(l, block, i, s);
					sumi += scale as i32 * products(32 * s, 32);
					summ += min as i32 * xb.bsums32[s] as i32;
				}
				let dmin = f16_at(block, l.d + 2 * TILE_ROWS + 2 * i);
				total += d * xb.d * sumi as f32 - dmin * xb.d * summ as f32;
			},
		}
	}
	total
}

#[cfg(test)]
/// The reference on the file's layout, one super-block at a time: what the tiles must compute.
pub(super) fn dot_scalar(format: Format, w: &[u8], x: &[Q8KBlock]) -> f32 {
	let f16 = |wb: &[u8], at: usize| half::f16::from_le_bytes([wb[at], wb[at + 1]]).to_f32();
	let mut total = 0f32;
	for (wb, xb) in w.chunks_exact(format.block_bytes()).zip(x) {
		match format {
			Format::Q4K | Format::Q5K => {
				let sm = scales_and_mins(&wb[4..16]);
				let (fifth, nibbles) = match format {
					Format::Q5K => (Some(&wb[16..48]), &wb[48..]),
					_ => (None, &wb[16..]),
				};
				let mut sumi = 0i32;
				let mut summ = 0i32;
				for j in 0..8 {
					let products: i32 =
						(32 * j..32 * j + 32).map(|e| q45_k_quant(nibbles, fifth, e) * xb.qs[e] as i32).sum();
					sumi += sm[j] as i32 * products;
					summ += sm[8 + j] as i32 * xb.bsums32[j] as i32;
				}
				total += f16(wb, 0) * xb.d * sumi as f32 - f16(wb, 2) * xb.d * summ as f32;
			},
			Format::Q6K => {
				let mut sumi = 0i32;
				for g in 0..16 {
					let scale = wb[192 + g] as i8 as i32;
					let products: i32 = (16 * g..16 * g + 16).map(|e| q6_k_quant(wb, e) * xb.qs[e] as i32).sum();
					sumi += scale * (products - 32 * xb.bsums[g] as i32);
				}
				total += f16(wb, 208) * xb.d * sumi as f32;
			},
			_ => unreachable!("{format:?} takes Q8 activations"),
		}
	}
	total
}


#[cfg(target_arch = "x86_64")]
mod simd {
	use std::arch::x86_64::*;

	use super::{layout, Q8KBlock, QK_K, ROW_TILE, TILE_ROWS};
	use crate::model::quant::{
		simd::{Isa, PREFETCH_BYTES},
		Format,
	};

	/// [`super::quantize_row_scalar`] in AVX2: the same scale and rounding, 32 lanes at a time.
	///
	/// Safety: the CPU has AVX2 and FMA.
	#[target_feature(enable = "avx2,fma")]
	pub unsafe fn quantize_row(x: &[f32], out: &mut [Q8KBlock]) {
		let sign_bit = _mm256_set1_ps(-0.0);
		for (chunk, block) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
			let p = chunk.as_ptr();
			let mut max8 = _mm256_setzero_ps();
			for i in (0..QK_K).step_by(8) {
				max8 = _mm256_max_ps(max8, _mm256_andnot_ps(sign_bit, _mm256_loadu_ps(p.add(i))));
			}
			let max4 = _mm_max_ps(_mm256_castps256_ps128(max8), _mm256_extractf128_ps(max8, 1));
			let max2 = _mm_max_ps(max4, _mm_movehl_ps(max4, max4));
			let amax = _mm_cvtss_f32(_mm_max_ss(max2, _mm_movehdup_ps(max2)));
			let d = amax / 127.0;
			let inverse = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
			for i in (0..QK_K).step_by(32) {
				let q = [0, 8, 16, 24].map(|o| {
					let v = _mm256_mul_ps(_mm256_loadu_ps(p.add(i + o)), inverse);
					_mm256_cvtps_epi32(_mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v))
				});
				// Pack 32 i32 lanes to i8; the packs interleave 128-bit halves, the permute restores
				// the order.
				let packed = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
				let ordered = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
				_mm256_store_si256(block.qs.as_mut_ptr().add(i) as *mut __m256i, ordered);
			}
			block.d = d;
			super::block_sums(block);
		}
	}

	/// The four activations at `p` in every 32-bit lane.
	#[inline(always)]
	unsafe fn broadcast4(p: *const i8) -> __m256i {
		_mm256_set1_epi32(std::ptr::read_unaligned(p as *const i32))
	}

	/// `acc` + the sums of four u8 × i8 products per 32-bit lane: AVX2's two multiplies, or one
	/// `vpdpbusd` (AVX-VNNI's or AVX-512 VNNI's encoding). u8 × i8 pairs fit i16 unsaturated
	/// (2·63·128 at most).
	#[inline(always)]
	unsafe fn dot_avx2(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
		_mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1)))
	}

	#[inline(always)]
	unsafe fn dot_vnni(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
		_mm256_dpbusd_avx_epi32(acc, w, x)
	}

	#[inline(always)]
	unsafe fn dot_avx512_vnni(acc: __m256i, w: __m256i, x: __m256i) -> __m256i {
		_mm256_dpbusd_epi32(acc, w, x)
	}

	/// Bit `shift` of each byte of `bits`, moved to bit 4 (Q5_K's fifth bits).
	#[inline(always)]
	unsafe fn fifth_bit(bits: __m256i, shift: usize) -> __m256i {
		let bit = _mm256_and_si256(_mm256_srl_epi16(bits, _mm_cvtsi32_si128(shift as i32)), _mm256_set1_epi8(1));
		_mm256_slli_epi16(bit, 4)
	}

	/// Asks for the `bytes` that lie `PREFETCH_BYTES` after `p`: the weights stream from memory in
	/// runs too short for the hardware prefetcher to catch up (as for the blocks of 32).
	/// Issued a few lines at a time through a super-block.
	#[inline(always)]
	unsafe fn prefetch(p: *const u8, bytes: usize) {
		for line in (0..bytes).step_by(64) {
			_mm_prefetch::<_MM_HINT_T0>(p.add(PREFETCH_BYTES + line) as *const i8);
		}
	}

	/// The eight f16s at `p` as f32s.
	#[inline(always)]
	unsafe fn f16x8(p: *const u8) -> __m256 {
		_mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
	}

	/// Q4_K (`FIVE` false) and Q5_K: per sub-block of 32, four vectors of nibbles (plus one of
	/// fifth bits) give 8 rows × 32 quants, multiplied against each activation row's 4-element
	/// broadcasts; the sub-block's sums times its 8 scales go into the super-block's i32 sums, and
	/// the minimums meet the activations' per-32 sums in pairs (`vpmaddwd`).
	macro_rules! kernel_q45_k {
		($name:ident, $features:literal, $dot:ident) => {
			#[target_feature(enable = $features)]
			unsafe fn $name<const FIVE: bool, const R: usize>(
				tile: &[u8],
				rows: [&[Q8KBlock]; R],
				sums: &mut [[f32; TILE_ROWS]; ROW_TILE],
			) {
				let l = layout(if FIVE { Format::Q5K } else { Format::Q4K });
				let nibble_mask = _mm256_set1_epi8(0x0F);
				let mut acc = [_mm256_setzero_ps(); R];
				for (b, block) in tile.chunks_exact(l.bytes).enumerate() {
					let p = block.as_ptr();
					let mut scaled = [_mm256_setzero_si256(); R];
					for s in 0..QK_K / 32 {
						// A few lines at a time: all of a super-block's at once were mostly dropped
						// (the head's Q6_K streamed at 16 GB/s instead of 40).
						prefetch(p.add(192 * s), 192);
						let fifth = if FIVE { _mm256_loadu_si256(p.add(l.high + 32 * s) as *const __m256i) } else { nibble_mask };
						let mut isum = [_mm256_setzero_si256(); R];
						for i in 0..4 {
							let w = _mm256_loadu_si256(p.add(32 * (4 * s + i)) as *const __m256i);
							let mut low = _mm256_and_si256(w, nibble_mask);
							let mut high = _mm256_and_si256(_mm256_srli_epi16(w, 4), nibble_mask);
							if FIVE {
								low = _mm256_or_si256(low, fifth_bit(fifth, 2 * i));
								high = _mm256_or_si256(high, fifth_bit(fifth, 2 * i + 1));
							}
							for r in 0..R {
								let x = rows[r].get_unchecked(b).qs.as_ptr().add(32 * s + 8 * i);
								isum[r] = $dot(isum[r], low, broadcast4(x));
								isum[r] = $dot(isum[r], high, broadcast4(x.add(4)));
							}
						}
						let scale = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(l.scales + TILE_ROWS * s) as *const __m128i));
						for r in 0..R {
							scaled[r] = _mm256_add_epi32(scaled[r], _mm256_mullo_epi32(isum[r], scale));
						}
					}
					let d = f16x8(p.add(l.d));
					let dmin = f16x8(p.add(l.d + 2 * TILE_ROWS));
					for r in 0..R {
						let xb = rows[r].get_unchecked(b);
						let mut min_sum = _mm256_setzero_si256();
						for pair in 0..4 {
							let mins = _mm256_cvtepu8_epi16(_mm_loadu_si128(p.add(l.mins + 2 * TILE_ROWS * pair) as *const __m128i));
							let bsums = _mm256_set1_epi32(std::ptr::read_unaligned(xb.bsums32.as_ptr().add(2 * pair) as *const i32));
							min_sum = _mm256_add_epi32(min_sum, _mm256_madd_epi16(mins, bsums));
						}
						let xd = _mm256_set1_ps(xb.d);
						acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(scaled[r]), _mm256_mul_ps(d, xd), acc[r]);
						acc[r] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(min_sum), _mm256_mul_ps(dmin, xd), acc[r]);
					}
				}
				for r in 0..R {
					_mm256_storeu_ps(sums[r].as_mut_ptr(), acc[r]);
				}
			}
		};
	}

	/// Q6_K: per group of 16, two vectors of low nibbles and one of high bit pairs give four
	/// vectors of 8 rows × 4 six-bit quants; the −32 comes off each group's sum as 32 times the
	/// activations' group sum before its signed scale multiplies it.
	macro_rules! kernel_q6_k {
		($name:ident, $features:literal, $dot:ident) => {
			#[target_feature(enable = $features)]
			unsafe fn $name<const R: usize>(tile: &[u8], rows: [&[Q8KBlock]; R], sums: &mut [[f32; TILE_ROWS]; ROW_TILE]) {
				let l = layout(Format::Q6K);
				let nibble_mask = _mm256_set1_epi8(0x0F);
				let top_mask = _mm256_set1_epi8(0x30);
				let mut acc = [_mm256_setzero_ps(); R];
				for (b, block) in tile.chunks_exact(l.bytes).enumerate() {
					let p = block.as_ptr();
					let mut scaled = [_mm256_setzero_si256(); R];
					for g in 0..QK_K / 16 {
						// As for Q4_K: 128 bytes per group covers the 1,680 of a super-block.
						prefetch(p.add(128 * g), 128);
						let w0 = _mm256_loadu_si256(p.add(64 * g) as *const __m256i);
						let w1 = _mm256_loadu_si256(p.add(64 * g + 32) as *const __m256i);
						let h = _mm256_loadu_si256(p.add(l.high + 32 * g) as *const __m256i);
						let q = [
							_mm256_or_si256(_mm256_and_si256(w0, nibble_mask), _mm256_and_si256(_mm256_slli_epi16(h, 4), top_mask)),
							_mm256_or_si256(
								_mm256_and_si256(_mm256_srli_epi16(w0, 4), nibble_mask),
								_mm256_and_si256(_mm256_slli_epi16(h, 2), top_mask),
							),
							_mm256_or_si256(_mm256_and_si256(w1, nibble_mask), _mm256_and_si256(h, top_mask)),
							_mm256_or_si256(
								_mm256_and_si256(_mm256_srli_epi16(w1, 4), nibble_mask),
								_mm256_and_si256(_mm256_srli_epi16(h, 2), top_mask),
							),
						];
						let scale = _mm256_cvtepi8_epi32(_mm_loadl_epi64(p.add(l.scales + TILE_ROWS * g) as *const __m128i));
						for r in 0..R {
							let xb = rows[r].get_unchecked(b);
							let x = xb.qs.as_ptr().add(16 * g);
							let mut isum = _mm256_set1_epi32(-32 * xb.bsums[g] as i32);
							for (k, &q) in q.iter().enumerate() {
								isum = $dot(isum, q, broadcast4(x.add(4 * k)));
							}
							scaled[r] = _mm256_add_epi32(scaled[r], _mm256_mullo_epi32(isum, scale));
						}
					}
					let d = f16x8(p.add(l.d));
					for r in 0..R {
						let xd = _mm256_set1_ps(rows[r].get_unchecked(b).d);
						acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(scaled[r]), _mm256_mul_ps(d, xd), acc[r]);
					}
				}
				for r in 0..R {
					_mm256_storeu_ps(sums[r].as_mut_ptr(), acc[r]);
				}
			}
		};
	}

	kernel_q45_k!(q45_k_avx2, "avx2,fma,f16c", dot_avx2);
	kernel_q45_k!(q45_k_vnni, "avx2,fma,f16c,avxvnni", dot_vnni);
	kernel_q45_k!(q45_k_avx512_vnni, "avx2,fma,f16c,avx512vnni,avx512vl", dot_avx512_vnni);
	kernel_q6_k!(q6_k_avx2, "avx2,fma,f16c", dot_avx2);
	kernel_q6_k!(q6_k_vnni, "avx2,fma,f16c,avxvnni", dot_vnni);
	kernel_q6_k!(q6_k_avx512_vnni, "avx2,fma,f16c,avx512vnni,avx512vl", dot_avx512_vnni);

	/// `sums[r][i]` = tile row i · `rows[r]`, for the format's kernel on `isa`.
	///
	/// Safety: the CPU has `isa`'s features; `tile` holds whole super-blocks of the format's
	/// layout, as many as each row has blocks.
	pub unsafe fn q4_k<const R: usize>(isa: Isa, tile: &[u8], rows: [&[Q8KBlock]; R], sums: &mut [[f32; TILE_ROWS]; ROW_TILE]) {
		match isa {
			Isa::Avx2 => q45_k_avx2::<false, R>(tile, rows, sums),
			Isa::AvxVnni => q45_k_vnni::<false, R>(tile, rows, sums),
			Isa::Avx512Vnni => q45_k_avx512_vnni::<false, R>(tile, rows, sums),
		}
	}

	/// As [`q4_k`].
	pub unsafe fn q5_k<const R: usize>(isa: Isa, tile: &[u8], rows: [&[Q8KBlock]; R], sums: &mut [[f32; TILE_ROWS]; ROW_TILE]) {
		match isa {
			Isa::Avx2 => q45_k_avx2::<true, R>(tile, rows, sums),
			Isa::AvxVnni => q45_k_vnni::<true, R>(tile, rows, sums),
			Isa::Avx512Vnni => q45_k_avx512_vnni::<true, R>(tile, rows, sums),
		}
	}

	/// As [`q4_k`].
	pub unsafe fn q6_k<const R: usize>(isa: Isa, tile: &[u8], rows: [&[Q8KBlock]; R], sums: &mut [[f32; TILE_ROWS]; ROW_TILE]) {
		match isa {
			Isa::Avx2 => q6_k_avx2::<R>(tile, rows, sums),
			Isa::AvxVnni => q6_k_vnni::<R>(tile, rows, sums),
			Isa::Avx512Vnni => q6_k_avx512_vnni::<R>(tile, rows, sums),
		}
	}
}
