//! Every weight format's matrix re-laid at load in tiles of 8 rows (the layout of llama.cpp's and
//! candle's repacked GEMM kernels, but with scales kept as bytes, so a tile is as small as the
//! file's eight rows of blocks, 3 % larger for Q4_K and Q5_K, and replaces them rather than
//! standing beside them): a 32-byte vector holds 4 weights of each of the 8 rows, and one u8 × i8
//! dot product against 4 broadcast activations gives all 8 rows' partial sums, with no horizontal
//! sums and no shuffles. Work is split over tiles on candle's CPU pool, each tile multiplied
//! against up to 4 activation rows at a time.
//!
//! Per tile and block (the file layouts are in `quant.rs` and `k.rs`):
//! - Q4_0, Q4_1, Q5_0, Q5_1 (blocks of 32): `qs` [4 groups of 8 elements][8 rows][4 bytes], byte j
//!   of group g holding q(8g + j) in its low 4 bits and q(8g + 4 + j) in its high 4 bits; the
//!   five-bit formats then `high` [8 rows][4 bytes], bit 2i (2i + 1) of byte j the fifth bit of
//!   element 8i + j (8i + 4 + j); d f16 [8]; Q4_1 and Q5_1 then m f16 [8].
//! - Q8_0: `qs` [8 groups of 4][8 rows][4 signed bytes]; d f16 [8].
//! - Q4_K and Q5_K (super-blocks of 256): `qs` as above over 32 groups; Q5_K then `high` [8
//!   sub-blocks][8 rows][4 bytes] as above within each sub-block; `scales` u8 [8 sub-blocks][8
//!   rows]; `mins` u8 [4 pairs of sub-blocks][8 rows][2]; d and dmin, f16 [8] each.
//! - Q6_K: `qs` as above for the low 4 bits; `high` [16 groups of 16][8 rows][4 bytes], bits
//!   2i and 2i + 1 of byte j the top bits of element 16g + 4i + j; `scales` i8 [16][8 rows];
//!   d f16 [8].
//!
//! The integer sums are exact: a block's (a K-quant sub-block's or group's) products are summed
//! in i32 and, for the K-quants, multiplied by its scale before one conversion to f32 per block.
//! Offsets (Q4_0's 8, Q5_0's 16, Q6_K's 32) come off those sums through the activations' integer
//! sums; minimums (Q4_1, Q5_1, Q4_K, Q5_K) meet the activations' sums once per block.

use super::{
	k::{self, Q8KBlock, QK_K},
	Format, Isa, Q8Block, SyncPtr, BLOCK,
};

/// Weight rows per tile.
const TILE_ROWS: usize = 8;
/// Activation rows multiplied against one tile at a time.
const ROW_TILE: usize = 4;
/// One call's dot products: `[activation row][tile row]`.
type Sums = [[f32; TILE_ROWS]; ROW_TILE];

/// Byte offsets of one tile's parts for one block, and its size.
#[derive(Clone, Copy)]
struct TileLayout {
	/// The five-bit formats' fifth bits or Q6_K's high bit pairs.
	high: usize,
	/// The K-quants' scales.
	scales: usize,
	/// The minimums: Q4_K's and Q5_K's per sub-block, Q4_1's and Q5_1's m.
	mins: usize,
	/// d, then (Q4_K, Q5_K) dmin.
	d: usize,
	bytes: usize,
}

const fn layout(format: Format) -> TileLayout {
	const R: usize = TILE_ROWS;
	let unused = 0;
	match format {
		Format::Q4_0 => TileLayout { high: unused, scales: unused, mins: unused, d: 16 * R, bytes: 18 * R },
		Format::Q4_1 => TileLayout { high: unused, scales: unused, mins: 18 * R, d: 16 * R, bytes: 20 * R },
		Format::Q5_0 => TileLayout { high: 16 * R, scales: unused, mins: unused, d: 20 * R, bytes: 22 * R },
		Format::Q5_1 => TileLayout { high: 16 * R, scales: unused, mins: 22 * R, d: 20 * R, bytes: 24 * R },
		Format::Q8_0 => TileLayout { high: unused, scales: unused, mins: unused, d: 32 * R, bytes: 34 * R },
		Format::Q4K => TileLayout { high: unused, scales: 128 * R, mins: 136 * R, d: 144 * R, bytes: 148 * R },
		Format::Q5K => TileLayout { high: 128 * R, scales: 160 * R, mins: 168 * R, d: 176 * R, bytes: 180 * R },
		Format::Q6K => TileLayout { high: 128 * R, scales: 192 * R, mins: unused, d: 208 * R, bytes: 210 * R },
	}
}

/// A weight matrix `[rows, cols]` in tiles of 8 rows (the last padded with zero rows), tile after
/// tile, each with its blocks in order.
pub(super) struct Tiles {
	pub(super) format: Format,
	pub(super) rows: usize,
	pub(super) cols: usize,
	bytes: Vec<u8>,
}

impl Tiles {
	/// Re-lays the file's blocks (`rows` rows of `cols / block_len` blocks).
	pub(super) fn pack(format: Format, rows: usize, cols: usize, file: &[u8]) -> Self {
		let mut rest = file;
		Self::pack_from(format, rows, cols, |chunk| {
			let (head, tail) = rest.split_at(chunk.len());
			chunk.copy_from_slice(head);
			rest = tail;
			Ok(())
		})
		.expect("copying from a slice of the right length")
	}

	/// [`Self::pack`] from `read`, which fills each buffer it is given with the file's next
	/// bytes: 8 rows at a time, so a tensor read from a file is never held twice.
	pub(super) fn pack_from(
		format: Format,
		rows: usize,
		cols: usize,
		mut read: impl FnMut(&mut [u8]) -> std::io::Result<()>,
	) -> std::io::Result<Self> {
		let (l, blocks_per_row) = (layout(format), cols / format.block_len());
		let row_bytes = blocks_per_row * format.block_bytes();
		let mut bytes = vec![0u8; rows.div_ceil(TILE_ROWS) * blocks_per_row * l.bytes];
		let mut chunk = vec![0u8; TILE_ROWS * row_bytes];
		for (t, tile) in bytes.chunks_exact_mut(blocks_per_row * l.bytes).enumerate() {
			let chunk = &mut chunk[..(rows - t * TILE_ROWS).min(TILE_ROWS) * row_bytes];
			read(chunk)?;
			for (r, blocks) in chunk.chunks_exact(row_bytes).enumerate() {
				for (block, tile) in blocks.chunks_exact(format.block_bytes()).zip(tile.chunks_exact_mut(l.bytes)) {
					pack_block(format, l, block, r, tile);
				}
			}
		}
		Ok(Self { format, rows, cols, bytes })
	}

	fn blocks_per_row(&self) -> usize {
		self.cols / self.format.block_len()
	}

	/// The blocks of tile `t`.
	fn tile(&self, t: usize) -> &[u8] {
		let span = self.blocks_per_row() * layout(self.format).bytes;
		&self.bytes[t * span..(t + 1) * span]
	}

	/// Row `j` as f32s, computed as candle and llama.cpp dequantize (`(q − 8)·d`, `q·d + m`,
	/// `(d·scale)·q − dmin·min`, `(d·scale)·(q − 32)`, ...), so looked-up embedding rows match
	/// theirs.
	pub(super) fn dequantize_row(&self, j: usize, out: &mut [f32]) {
		let (l, r, format) = (layout(self.format), j % TILE_ROWS, self.format);
		for (block, out) in self.tile(j / TILE_ROWS).chunks_exact(l.bytes).zip(out.chunks_exact_mut(format.block_len())) {
			let d = f16_at(block, l.d + 2 * r);
			let q = |e: usize| tile_quant(format, l, block, r, e);
			match format {
				Format::Q4_0 | Format::Q5_0 | Format::Q8_0 => {
					let offset = match format {
						Format::Q4_0 => 8,
						Format::Q5_0 => 16,
						_ => 0,
					};
					for (e, x) in out.iter_mut().enumerate() {
						*x = (q(e) - offset) as f32 * d;
					}
				},
				Format::Q4_1 | Format::Q5_1 => {
					let m = f16_at(block, l.mins + 2 * r);
					for (e, x) in out.iter_mut().enumerate() {
						*x = q(e) as f32 * d + m;
					}
				},
				Format::Q6K => {
					for (e, x) in out.iter_mut().enumerate() {
						let scale = block[l.scales + e / 16 * TILE_ROWS + r] as i8;
						*x = d * scale as f32 * (q(e) - 32) as f32;
					}
				},
				Format::Q4K | Format::Q5K => {
					let dmin = f16_at(block, l.d + 2 * TILE_ROWS + 2 * r);
					for (e, x) in out.iter_mut().enumerate() {
						let (scale, min) = scale_min(l, block, r, e / 32);
						*x = d * scale as f32 * q(e) as f32 - dmin * min as f32;
					}
				},
			}
		}
	}

	/// `out[m, rows] = input[m, cols] · Wᵀ` with the kernels of `isa` (the scalar code for
	/// `None`), which the CPU must run.
	pub(super) fn matmul(&self, isa: Option<Isa>, input: &[f32], m: usize, out: &mut [f32]) {
		Self::matmul_many(isa, &mut [(self, out)], input, m)
	}

	/// Whether [`Self::matmul_many`] takes these matrices together: the same inputs, quantized
	/// the same way.
	pub(super) fn fuse(matrices: &[&Self]) -> bool {
		matrices.windows(2).all(|w| w[0].cols == w[1].cols && w[0].format.block_len() == w[1].format.block_len())
	}

	/// [`Self::matmul`] of one input by several matrices ([`Self::fuse`]), each into its own
	/// output: the input is quantized once and all their tiles are shared out in one dispatch
	/// of the pool, so the threads wait for each other once (a layer's q, k and v; gate and up).
	pub(super) fn matmul_many(isa: Option<Isa>, products: &mut [(&Self, &mut [f32])], input: &[f32], m: usize) {
		debug_assert!(Self::fuse(&products.iter().map(|(w, _)| *w).collect::<Vec<_>>()));
		match products[0].0.format.block_len() {
			QK_K => Self::matmul_with(isa, products, input, m, k::quantize_row, dot_tile_k),
			_ => Self::matmul_with(isa, products, input, m, super::quantize_row, dot_tile_32),
		}
	}

	/// [`Self::matmul_many`] with the activations quantized to `A` blocks by `quantize` and each
	/// tile multiplied by `dot`.
	fn matmul_with<A: Copy + Default + Send + Sync>(
		isa: Option<Isa>,
		products: &mut [(&Self, &mut [f32])],
		input: &[f32],
		m: usize,
		quantize: fn(&[f32], &mut [A]),
		dot: fn(Option<Isa>, Format, &[u8], &[A], usize, &mut Sums),
	) {
		let (cols, blocks_per_row) = (products[0].0.cols, products[0].0.blocks_per_row());
		let mut quantized = vec![A::default(); m * blocks_per_row];
		for (row, q) in input.chunks_exact(cols).zip(quantized.chunks_exact_mut(blocks_per_row)) {
			quantize(row, q);
		}
		// Work item i is tile i - first[p] of product p, the last p with first[p] <= i.
		let mut first = Vec::with_capacity(products.len());
		let mut items = 0;
		for (w, _) in products.iter() {
			first.push(items);
			items += w.rows.div_ceil(TILE_ROWS);
		}
		let targets: Vec<(&Self, SyncPtr)> = products.iter_mut().map(|(w, out)| (*w, SyncPtr(out.as_mut_ptr()))).collect();
		candle_core::utils::barrier_pool().execute_chunked(items, |range| {
			for item in range {
				let p = first.partition_point(|&f| f <= item) - 1;
				let (w, out_ptr) = (targets[p].0, &targets[p].1);
				let (t, n) = (item - first[p], w.rows);
				let tile = w.tile(t);
				for tile_start in (0..m).step_by(ROW_TILE) {
					let x = &quantized[tile_start * blocks_per_row..(tile_start + ROW_TILE).min(m) * blocks_per_row];
					let mut sums = [[0f32; TILE_ROWS]; ROW_TILE];
					dot(isa, w.format, tile, x, blocks_per_row, &mut sums);
					let first_row = t * TILE_ROWS;
					for (r, row_sums) in sums.iter().enumerate().take(x.len() / blocks_per_row) {
						for (i, &s) in row_sums.iter().enumerate().take(n - first_row) {
							// Safety: each (row, column) of each output is written by exactly one
							// work item, and `execute_chunked` returns only after every item is done.
							unsafe { *out_ptr.0.add((tile_start + r) * n + first_row + i) = s };
						}
					}
				}
			}
		});
	}
}

/// Writes one file block of row `r` of its tile into `tile` (that block's part of the tile).
fn pack_block(format: Format, l: TileLayout, block: &[u8], r: usize, tile: &mut [u8]) {
	if format.block_len() == BLOCK {
		return pack_block_32(format, l, block, r, tile);
	}
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
			let sm = k::scales_and_mins(&block[4..16]);
			for s in 0..8 {
				tile[l.scales + s * TILE_ROWS + r] = sm[s];
				tile[l.mins + (s / 2 * TILE_ROWS + r) * 2 + s % 2] = sm[8 + s];
			}
			tile[l.d + 2 * r..l.d + 2 * r + 2].copy_from_slice(&block[0..2]);
			tile[l.d + 2 * TILE_ROWS + 2 * r..l.d + 2 * TILE_ROWS + 2 * r + 2].copy_from_slice(&block[2..4]);
		},
	}
}

/// [`pack_block`] for the formats of 32-element blocks (the file's element j is byte j's low
/// nibble, element j + 16 its high nibble, its fifth bit bit j of a 32-bit word).
fn pack_block_32(format: Format, l: TileLayout, block: &[u8], r: usize, tile: &mut [u8]) {
	let (d, qs, fifth) = match format {
		Format::Q4_0 => (0, 2, None),
		Format::Q4_1 => (0, 4, None),
		Format::Q5_0 => (0, 6, Some(2)),
		Format::Q5_1 => (0, 8, Some(4)),
		_ => (0, 2, None),
	};
	if format == Format::Q8_0 {
		tile[..BLOCK * TILE_ROWS].chunks_exact_mut(4).skip(r).step_by(TILE_ROWS).zip(block[qs..].chunks_exact(4)).for_each(|(to, from)| to.copy_from_slice(from));
	} else {
		// Group g's 8 elements: the low (g < 2) or high nibbles of bytes 8(g % 2)...
		for g in 0..4 {
			let (src, shift) = (&block[qs + 8 * (g % 2)..][..8], 4 * (g / 2));
			let dst = &mut tile[(g * TILE_ROWS + r) * 4..][..4];
			for j in 0..4 {
				dst[j] = ((src[j] >> shift) & 15) | (((src[j + 4] >> shift) & 15) << 4);
			}
		}
	}
	if let Some(at) = fifth {
		let bits = u32::from_le_bytes([block[at], block[at + 1], block[at + 2], block[at + 3]]);
		for j in 0..4 {
			let mut byte = 0;
			for i in 0..4 {
				byte |= (((bits >> (8 * i + j)) & 1) << (2 * i)) as u8;
				byte |= (((bits >> (8 * i + 4 + j)) & 1) << (2 * i + 1)) as u8;
			}
			tile[l.high + r * 4 + j] = byte;
		}
	}
	tile[l.d + 2 * r..l.d + 2 * r + 2].copy_from_slice(&block[d..d + 2]);
	if matches!(format, Format::Q4_1 | Format::Q5_1) {
		tile[l.mins + 2 * r..l.mins + 2 * r + 2].copy_from_slice(&block[2..4]);
	}
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
	half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// The stored quant of element `e` of row `r` in one block of a tile (unsigned but for Q8_0).
fn tile_quant(format: Format, l: TileLayout, block: &[u8], r: usize, e: usize) -> i32 {
	if format == Format::Q8_0 {
		return block[((e / 4) * TILE_ROWS + r) * 4 + e % 4] as i8 as i32;
	}
	let (g, j) = (e / 8, e % 8);
	let low = (block[(g * TILE_ROWS + r) * 4 + j % 4] >> (4 * (j / 4))) & 15;
	let high = match format {
		Format::Q4_0 | Format::Q4_1 | Format::Q4K => 0,
		// A five-bit block of 32 is laid out as one Q5_K sub-block.
		Format::Q5_0 | Format::Q5_1 | Format::Q5K => (block[l.high + (e / 32 * TILE_ROWS + r) * 4 + j % 4] >> (2 * (e % 32 / 8) + j / 4)) & 1,
		_ => (block[l.high + (e / 16 * TILE_ROWS + r) * 4 + e % 4] >> (2 * (e % 16 / 4))) & 3,
	};
	(low | high << 4) as i32
}

/// Q4_K's and Q5_K's (scale, minimum) of sub-block `s` of row `r`.
fn scale_min(l: TileLayout, block: &[u8], r: usize, s: usize) -> (u8, u8) {
	(block[l.scales + s * TILE_ROWS + r], block[l.mins + (s / 2 * TILE_ROWS + r) * 2 + s % 2])
}

/// Calls `simd::$kernel::<R>(isa, tile, rows, sums)` with the R (1 to 4) activation rows of `x`.
#[cfg(target_arch = "x86_64")]
macro_rules! by_rows {
	($kernel:ident, $isa:expr, $tile:expr, $x:expr, $blocks_per_row:expr, $sums:expr) => {{
		let (x, blocks_per_row) = ($x, $blocks_per_row);
		let row = |r: usize| &x[r * blocks_per_row..(r + 1) * blocks_per_row];
		// Safety: `isa` is one the CPU runs; the tile has `blocks_per_row` blocks of the format's
		// layout, as does every row.
		unsafe {
			match x.len() / blocks_per_row {
				1 => simd::$kernel::<1>($isa, $tile, [row(0)], $sums),
				2 => simd::$kernel::<2>($isa, $tile, [row(0), row(1)], $sums),
				3 => simd::$kernel::<3>($isa, $tile, [row(0), row(1), row(2)], $sums),
				_ => simd::$kernel::<4>($isa, $tile, [row(0), row(1), row(2), row(3)], $sums),
			}
		}
	}};
}

/// `sums[r][i]` = row i of `tile` · activation row r of `x` (1 to 4 rows of `blocks_per_row`
/// blocks), for the K-quants.
fn dot_tile_k(isa: Option<Isa>, format: Format, tile: &[u8], x: &[Q8KBlock], blocks_per_row: usize, sums: &mut Sums) {
	#[cfg(target_arch = "x86_64")]
	if let Some(isa) = isa {
		match format {
			Format::Q4K => by_rows!(q4_k, isa, tile, x, blocks_per_row, sums),
			Format::Q5K => by_rows!(q5_k, isa, tile, x, blocks_per_row, sums),
			Format::Q6K => by_rows!(q6_k, isa, tile, x, blocks_per_row, sums),
			_ => unreachable!("{format:?} is not a K-quant"),
		}
		return;
	}
	#[cfg(not(target_arch = "x86_64"))]
	let _ = isa;
	dot_tile_scalar(format, tile, x, blocks_per_row, sums, tile_dot_scalar);
}

/// [`dot_tile_k`] for the formats of 32-element blocks.
fn dot_tile_32(isa: Option<Isa>, format: Format, tile: &[u8], x: &[Q8Block], blocks_per_row: usize, sums: &mut Sums) {
	#[cfg(target_arch = "x86_64")]
	if let Some(isa) = isa {
		match format {
			Format::Q4_0 => by_rows!(q4_0, isa, tile, x, blocks_per_row, sums),
			Format::Q4_1 => by_rows!(q4_1, isa, tile, x, blocks_per_row, sums),
			Format::Q5_0 => by_rows!(q5_0, isa, tile, x, blocks_per_row, sums),
			Format::Q5_1 => by_rows!(q5_1, isa, tile, x, blocks_per_row, sums),
			Format::Q8_0 => by_rows!(q8_0, isa, tile, x, blocks_per_row, sums),
			_ => unreachable!("{format:?} takes Q8K activations"),
		}
		return;
	}
	#[cfg(not(target_arch = "x86_64"))]
	let _ = isa;
	dot_tile_scalar(format, tile, x, blocks_per_row, sums, tile_dot_scalar_32);
}

/// The scalar path: `dot` for every (activation row, tile row).
fn dot_tile_scalar<A>(
	format: Format,
	tile: &[u8],
	x: &[A],
	blocks_per_row: usize,
	sums: &mut Sums,
	dot: fn(Format, TileLayout, &[u8], usize, &[A]) -> f32,
) {
	let l = layout(format);
	for (r, x) in x.chunks_exact(blocks_per_row).enumerate() {
		for (i, sum) in sums[r].iter_mut().enumerate() {
			*sum = dot(format, l, tile, i, x);
		}
	}
}

/// Row `i` of a tile · one activation row, in the kernels' steps: `d·d_x·Σw·x` (the offset of
/// Q4_0 and Q5_0 taken off in integers) plus Q4_1's and Q5_1's minimum times the activations'
/// sum, per block.
fn tile_dot_scalar_32(format: Format, l: TileLayout, tile: &[u8], i: usize, x: &[Q8Block]) -> f32 {
	let mut total = 0f32;
	for (block, xb) in tile.chunks_exact(l.bytes).zip(x) {
		let products: i32 = (0..BLOCK).map(|e| tile_quant(format, l, block, i, e) * xb.qs[e] as i32).sum();
		let d = f16_at(block, l.d + 2 * i);
		let (products, min) = match format {
			Format::Q4_0 => (products - 8 * xb.qsum, 0.0),
			Format::Q5_0 => (products - 16 * xb.qsum, 0.0),
			Format::Q4_1 | Format::Q5_1 => (products, f16_at(block, l.mins + 2 * i)),
			_ => (products, 0.0),
		};
		total += d * xb.d * products as f32 + min * xb.sum;
	}
	total
}

/// Row `i` of a tile · one activation row, in the K-quant kernels' integer steps.
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

#[cfg(target_arch = "x86_64")]
mod simd {
	use std::arch::x86_64::*;

	use super::{layout, Q8Block, Q8KBlock, Sums, QK_K, TILE_ROWS};
	use crate::model::quant::{
		simd::{Isa, PREFETCH_BYTES},
		Format,
	};

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
				sums: &mut Sums,
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
			unsafe fn $name<const R: usize>(tile: &[u8], rows: [&[Q8KBlock]; R], sums: &mut Sums) {
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

	/// Q4_0, Q4_1 (`FIVE` false) and Q5_0, Q5_1: per block of 32, four vectors of nibbles (plus
	/// one of fifth bits) against each activation row's 4-element broadcasts; Q4_0's and Q5_0's
	/// offset (8, 16) comes off the integer sums, Q4_1's and Q5_1's minimum meets the
	/// activations' sum.
	macro_rules! kernel_q45_32 {
		($name:ident, $features:literal, $dot:ident) => {
			#[target_feature(enable = $features)]
			unsafe fn $name<const FIVE: bool, const MIN: bool, const R: usize>(
				tile: &[u8],
				rows: [&[Q8Block]; R],
				sums: &mut Sums,
			) {
				let l = layout(match (FIVE, MIN) {
					(false, false) => Format::Q4_0,
					(false, true) => Format::Q4_1,
					(true, false) => Format::Q5_0,
					(true, true) => Format::Q5_1,
				});
				let nibble_mask = _mm256_set1_epi8(0x0F);
				let mut acc = [_mm256_setzero_ps(); R];
				for (b, block) in tile.chunks_exact(l.bytes).enumerate() {
					let p = block.as_ptr();
					prefetch(p, l.bytes);
					let fifth = if FIVE { _mm256_loadu_si256(p.add(l.high) as *const __m256i) } else { nibble_mask };
					let mut isum = [_mm256_setzero_si256(); R];
					for g in 0..4 {
						let w = _mm256_loadu_si256(p.add(32 * g) as *const __m256i);
						let mut low = _mm256_and_si256(w, nibble_mask);
						let mut high = _mm256_and_si256(_mm256_srli_epi16(w, 4), nibble_mask);
						if FIVE {
							low = _mm256_or_si256(low, fifth_bit(fifth, 2 * g));
							high = _mm256_or_si256(high, fifth_bit(fifth, 2 * g + 1));
						}
						for r in 0..R {
							let x = rows[r].get_unchecked(b).qs.as_ptr().add(8 * g);
							isum[r] = $dot(isum[r], low, broadcast4(x));
							isum[r] = $dot(isum[r], high, broadcast4(x.add(4)));
						}
					}
					let d = f16x8(p.add(l.d));
					for r in 0..R {
						let xb = rows[r].get_unchecked(b);
						if !MIN {
							let offset = if FIVE { 16 } else { 8 };
							isum[r] = _mm256_sub_epi32(isum[r], _mm256_set1_epi32(offset * xb.qsum));
						}
						acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), _mm256_mul_ps(d, _mm256_set1_ps(xb.d)), acc[r]);
						if MIN {
							acc[r] = _mm256_fmadd_ps(f16x8(p.add(l.mins)), _mm256_set1_ps(xb.sum), acc[r]);
						}
					}
				}
				for r in 0..R {
					_mm256_storeu_ps(sums[r].as_mut_ptr(), acc[r]);
				}
			}
		};
	}

	/// Q8_0: signed weights, multiplied as |w| × (x with w's sign) to fit u8 × i8 (|w| ≤ 127 and
	/// |x| ≤ 127 keep AVX2's pair sums unsaturated).
	macro_rules! kernel_q8_0 {
		($name:ident, $features:literal, $dot:ident) => {
			#[target_feature(enable = $features)]
			unsafe fn $name<const R: usize>(tile: &[u8], rows: [&[Q8Block]; R], sums: &mut Sums) {
				let l = layout(Format::Q8_0);
				let mut acc = [_mm256_setzero_ps(); R];
				for (b, block) in tile.chunks_exact(l.bytes).enumerate() {
					let p = block.as_ptr();
					prefetch(p, l.bytes);
					let mut isum = [_mm256_setzero_si256(); R];
					for g in 0..8 {
						let w = _mm256_loadu_si256(p.add(32 * g) as *const __m256i);
						let magnitude = _mm256_sign_epi8(w, w);
						for r in 0..R {
							let x = broadcast4(rows[r].get_unchecked(b).qs.as_ptr().add(4 * g));
							isum[r] = $dot(isum[r], magnitude, _mm256_sign_epi8(x, w));
						}
					}
					let d = f16x8(p.add(l.d));
					for r in 0..R {
						let xd = _mm256_set1_ps(rows[r].get_unchecked(b).d);
						acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), _mm256_mul_ps(d, xd), acc[r]);
					}
				}
				for r in 0..R {
					_mm256_storeu_ps(sums[r].as_mut_ptr(), acc[r]);
				}
			}
		};
	}

	kernel_q45_32!(q45_32_avx2, "avx2,fma,f16c", dot_avx2);
	kernel_q45_32!(q45_32_vnni, "avx2,fma,f16c,avxvnni", dot_vnni);
	kernel_q45_32!(q45_32_avx512_vnni, "avx2,fma,f16c,avx512vnni,avx512vl", dot_avx512_vnni);
	kernel_q8_0!(q8_0_avx2, "avx2,fma,f16c", dot_avx2);
	kernel_q8_0!(q8_0_vnni, "avx2,fma,f16c,avxvnni", dot_vnni);
	kernel_q8_0!(q8_0_avx512_vnni, "avx2,fma,f16c,avx512vnni,avx512vl", dot_avx512_vnni);
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
	pub unsafe fn q4_k<const R: usize>(isa: Isa, tile: &[u8], rows: [&[Q8KBlock]; R], sums: &mut Sums) {
		match isa {
			Isa::Avx2 => q45_k_avx2::<false, R>(tile, rows, sums),
			Isa::AvxVnni => q45_k_vnni::<false, R>(tile, rows, sums),
			Isa::Avx512Vnni => q45_k_avx512_vnni::<false, R>(tile, rows, sums),
		}
	}

	/// As [`q4_k`].
	pub unsafe fn q5_k<const R: usize>(isa: Isa, tile: &[u8], rows: [&[Q8KBlock]; R], sums: &mut Sums) {
		match isa {
			Isa::Avx2 => q45_k_avx2::<true, R>(tile, rows, sums),
			Isa::AvxVnni => q45_k_vnni::<true, R>(tile, rows, sums),
			Isa::Avx512Vnni => q45_k_avx512_vnni::<true, R>(tile, rows, sums),
		}
	}

	/// As [`q4_k`].
	pub unsafe fn q6_k<const R: usize>(isa: Isa, tile: &[u8], rows: [&[Q8KBlock]; R], sums: &mut Sums) {
		match isa {
			Isa::Avx2 => q6_k_avx2::<R>(tile, rows, sums),
			Isa::AvxVnni => q6_k_vnni::<R>(tile, rows, sums),
			Isa::Avx512Vnni => q6_k_avx512_vnni::<R>(tile, rows, sums),
		}
	}

	/// As [`q4_k`], over blocks of 32.
	pub unsafe fn q4_0<const R: usize>(isa: Isa, tile: &[u8], rows: [&[Q8Block]; R], sums: &mut Sums) {
		q45_32::<false, false, R>(isa, tile, rows, sums)
	}

	/// As [`q4_0`].
	pub unsafe fn q4_1<const R: usize>(isa: Isa, tile: &[u8], rows: [&[Q8Block]; R], sums: &mut Sums) {
		q45_32::<false, true, R>(isa, tile, rows, sums)
	}

	/// As [`q4_0`].
	pub unsafe fn q5_0<const R: usize>(isa: Isa, tile: &[u8], rows: [&[Q8Block]; R], sums: &mut Sums) {
		q45_32::<true, false, R>(isa, tile, rows, sums)
	}

	/// As [`q4_0`].
	pub unsafe fn q5_1<const R: usize>(isa: Isa, tile: &[u8], rows: [&[Q8Block]; R], sums: &mut Sums) {
		q45_32::<true, true, R>(isa, tile, rows, sums)
	}

	#[inline(always)]
	unsafe fn q45_32<const FIVE: bool, const MIN: bool, const R: usize>(isa: Isa, tile: &[u8], rows: [&[Q8Block]; R], sums: &mut Sums) {
		match isa {
			Isa::Avx2 => q45_32_avx2::<FIVE, MIN, R>(tile, rows, sums),
			Isa::AvxVnni => q45_32_vnni::<FIVE, MIN, R>(tile, rows, sums),
			Isa::Avx512Vnni => q45_32_avx512_vnni::<FIVE, MIN, R>(tile, rows, sums),
		}
	}

	/// As [`q4_0`].
	pub unsafe fn q8_0<const R: usize>(isa: Isa, tile: &[u8], rows: [&[Q8Block]; R], sums: &mut Sums) {
		match isa {
			Isa::Avx2 => q8_0_avx2::<R>(tile, rows, sums),
			Isa::AvxVnni => q8_0_vnni::<R>(tile, rows, sums),
			Isa::Avx512Vnni => q8_0_avx512_vnni::<R>(tile, rows, sums),
		}
	}
}

