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
//! Loading re-lays these blocks in tiles (`tiles.rs`); this file holds the activations' Q8K
//! blocks, the scales' decoding, and the reference dot products on the file's layout.

#[cfg(test)]
use super::Format;

/// Weights per super-block.
pub(super) const QK_K: usize = 256;

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
pub(super) fn scales_and_mins(packed: &[u8]) -> [u8; 16] {
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

	use super::{Q8KBlock, QK_K};

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
}
