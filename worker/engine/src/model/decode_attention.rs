//! Attention of a sequence's new tokens against its cache, on the CPU, in plain loops.
//!
//! A decode step's attention is a few thousand multiply-adds per head; as some twenty candle ops
//! (reshapes, copies, two small gemms, softmax) its fixed costs were most of the time a step spent
//! outside the projections. Prompt chunks take the same loops, one token at a time: a token's
//! attention is then the same sum in the same order however the prompt was cut into chunks, or
//! whether its start was reused from the prefix cache. With candle's gemms it was not (their
//! summation order depends on the shapes), and the activations' 8-bit quantization turned the
//! last-bit differences into logits 1 % apart: a repeated prompt could answer differently.

use super::kv_pool::BLOCK_TOKENS;

/// Rotary embedding of `x` (`heads × head_dim`) at one position, whose angles' cosines and sines
/// are `cos`, `sin` (`head_dim / 2` each). `interleaved` rotates pairs (2i, 2i + 1), as GGUF
/// stores Llama; otherwise (i, i + head_dim / 2), as Hugging Face does.
pub fn rope_in_place(x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32], interleaved: bool) {
	let half = head_dim / 2;
	for head in x.chunks_exact_mut(head_dim) {
		for i in 0..half {
			let (a, b) = if interleaved { (2 * i, 2 * i + 1) } else { (i, i + half) };
			let (x0, x1) = (head[a], head[b]);
			head[a] = x0 * cos[i] - x1 * sin[i];
			head[b] = x0 * sin[i] + x1 * cos[i];
		}
	}
}

/// A layer's cached keys or values in the paged pool (`[blocks, kv_heads, BLOCK_TOKENS,
/// head_dim]`): kv head `g`, position `t` is row `t % BLOCK_TOKENS` of head `g` in block
/// `blocks[t / BLOCK_TOKENS]`.
pub struct CacheView<'a> {
	pub data: &'a [f32],
	pub blocks: &'a [u32],
}

impl CacheView<'_> {
	/// The rows of kv head `g` for positions `0..heads.len`, in order: one contiguous run per block.
	fn head_rows<'s>(&'s self, g: usize, heads: &Heads) -> impl Iterator<Item = &'s [f32]> + 's {
		let (head_dim, kv_heads, len) = (heads.head_dim, heads.kv_heads, heads.len);
		let block_floats = BLOCK_TOKENS * head_dim;
		self.blocks.iter().enumerate().take(len.div_ceil(BLOCK_TOKENS)).flat_map(move |(i, &block)| {
			let used = (len - i * BLOCK_TOKENS).min(BLOCK_TOKENS);
			let start = (block as usize * kv_heads + g) * block_floats;
			self.data[start..start + used * head_dim].chunks_exact(head_dim)
		})
	}
}

/// Shapes of one attention call.
#[derive(Clone, Copy)]
pub struct Heads {
	pub query_heads: usize,
	pub kv_heads: usize,
	pub head_dim: usize,
	/// Cached positions, the new tokens' included.
	pub len: usize,
	/// Each token attends to this many positions at most, its own included (sliding-window
	/// layers); `None`: to all before it.
	pub window: Option<usize>,
	/// What q·k is multiplied by (1/√head_dim for most families).
	pub scale: f32,
}

/// `softmax(q·Kᵀ / √d)·V` for the query heads of a sequence's `rows` new tokens (`rows ×
/// query_heads × head_dim`; the last is at position `len - 1`, each attends to the positions up
/// to its own, or the last `window` of them), grouped-query: query head `h` reads kv head `h /
/// (query_heads / kv_heads)`. The (token, kv head) pairs are split over candle's CPU pool; the
/// query heads sharing a kv head are scored together, so each cached row is read once for all
/// of them (each head's sums are the same, in the same order, as alone). Returns `rows ×
/// query_heads × head_dim`.
pub fn attend(q: &[f32], rows: usize, keys: &CacheView, values: &CacheView, heads: &Heads) -> Vec<f32> {
	let Heads { query_heads, kv_heads, head_dim, len, window, scale } = *heads;
	let group = query_heads / kv_heads;
	let mut out = vec![0f32; rows * query_heads * head_dim];
	let out_ptr = OutPtr(out.as_mut_ptr());
	candle_core::utils::barrier_pool().execute_chunked(rows * kv_heads, |range| {
		let out_ptr = &out_ptr;
		let (mut scores, mut totals) = (vec![0f32; group * len], vec![0f32; group]);
		for item in range {
			let (row, g) = (item / kv_heads, item % kv_heads);
			let seen = Heads { len: len - (rows - 1 - row), ..*heads };
			// The positions before the window are skipped.
			let first = window.map_or(0, |w| seen.len.saturating_sub(w));
			let n = seen.len - first;
			// Query head `g·group + i` of this token, and its scores.
			let first_head = row * query_heads + g * group;
			let query = |i: usize| &q[(first_head + i) * head_dim..(first_head + i + 1) * head_dim];
			let scores = &mut scores[..group * n];
			for (t, key) in keys.head_rows(g, &seen).skip(first).enumerate() {
				for i in 0..group {
					scores[i * n + t] = dot(query(i), key) * scale;
				}
			}
			totals.fill(0.0);
			for (i, scores) in scores.chunks_exact_mut(n).enumerate() {
				let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
				for score in scores.iter_mut() {
					*score = (*score - max).exp();
					totals[i] += *score;
				}
			}
			// Safety: this (token, kv head)'s query heads' slice of `out` is written by this work
			// item alone, and `execute_chunked` returns only after every item is done.
			let heads_out =
				unsafe { std::slice::from_raw_parts_mut(out_ptr.0.add(first_head * head_dim), group * head_dim) };
			for (t, value) in values.head_rows(g, &seen).skip(first).enumerate() {
				for (i, head_out) in heads_out.chunks_exact_mut(head_dim).enumerate() {
					let weight = scores[i * n + t] / totals[i];
					for (o, &v) in head_out.iter_mut().zip(value) {
						*o += weight * v;
					}
				}
			}
		}
	});
	out
}

struct OutPtr(*mut f32);
unsafe impl Sync for OutPtr {}

/// Dot product in eight independent lanes, so it vectorises.
fn dot(a: &[f32], b: &[f32]) -> f32 {
	let mut lanes = [0f32; 8];
	let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
	let tail: f32 = a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(x, y)| x * y).sum();
	for (x, y) in a_chunks.zip(b_chunks) {
		for i in 0..8 {
			lanes[i] += x[i] * y[i];
		}
	}
	lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
	use candle_core::{Device, Tensor};

	use super::*;

	/// Both pairings agree with candle's rotary kernels (`rope_i` for GGUF, `rope` for HF).
	#[test]
	fn rope_matches_candle() {
		let (heads, head_dim) = (3, 8);
		let x: Vec<f32> = (0..heads * head_dim).map(|i| (i as f32 * 0.37).sin()).collect();
		let cos: Vec<f32> = (0..head_dim / 2).map(|i| (i as f32 * 0.5).cos()).collect();
		let sin: Vec<f32> = (0..head_dim / 2).map(|i| (i as f32 * 0.5).sin()).collect();
		let t = Tensor::from_vec(x.clone(), (1, heads, 1, head_dim), &Device::Cpu).unwrap();
		let angles = |v: &Vec<f32>| Tensor::from_vec(v.clone(), (1, head_dim / 2), &Device::Cpu).unwrap();
		for interleaved in [true, false] {
			let expected = if interleaved {
				candle_nn::rotary_emb::rope_i(&t, &angles(&cos), &angles(&sin))
			} else {
				candle_nn::rotary_emb::rope(&t, &angles(&cos), &angles(&sin))
			};
			let expected = expected.unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
			let mut got = x.clone();
			rope_in_place(&mut got, head_dim, &cos, &sin, interleaved);
			for (a, b) in got.iter().zip(&expected) {
				assert!((a - b).abs() < 1e-6, "interleaved = {interleaved}: {got:?} vs {expected:?}");
			}
		}
	}
}
