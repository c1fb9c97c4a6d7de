//! The base weights as plain f32, for training LoRA adapters over them: the serving path keeps
//! them in the kernels' layouts, which compute `x · Wᵀ` only, while a backward pass needs `g · W`
//! too. Each layer is dequantized when asked for, so a caller can hold one layer at a time (as
//! QLoRA does) or keep them all.

use std::ops::Range;

use candle_core::{Result, Tensor};

use super::{BaseLinear, Llama};
use crate::model::Projection;

/// One decoder layer's weights, row-major f32: a projection is `[out, in]` as HF stores it.
pub struct FrozenLayer {
	/// Indexed by [`Projection::index`].
	pub proj: [Vec<f32>; 7],
	pub attn_norm: Vec<f32>,
	pub ffn_norm: Vec<f32>,
	/// The q, k and v biases (Qwen 2).
	pub qkv_bias: Option<[Vec<f32>; 3]>,
	/// The per-head q and k norms (Qwen 3, Gemma 3).
	pub qk_norm: Option<[Vec<f32>; 2]>,
	/// The norms of attention's and the MLP's outputs (Gemma 3).
	pub post_norms: Option<[Vec<f32>; 2]>,
}

fn vector(t: &Tensor) -> Result<Vec<f32>> {
	t.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1()
}

impl BaseLinear {
	/// Rows `range` of `W` as f32, row-major.
	fn rows_f32(&self, range: Range<usize>) -> Result<Vec<f32>> {
		let ids: Vec<u32> = (range.start as u32..range.end as u32).collect();
		self.rows(&ids)?.flatten_all()?.to_vec1()
	}
}

impl Llama {
	/// Layer `l`'s weights, dequantized.
	pub fn frozen_layer(&self, l: usize) -> Result<FrozenLayer> {
		let layer = &self.layers[l];
		let mut proj: [Vec<f32>; 7] = Default::default();
		for p in Projection::ALL {
			let out = self.config.projection_dims(p).1;
			proj[p.index()] = layer.proj[p.index()].rows_f32(0..out)?;
		}
		let vectors = |ts: &[Tensor]| ts.iter().map(vector).collect::<Result<Vec<_>>>();
		Ok(FrozenLayer {
			proj,
			attn_norm: vector(&layer.attn_norm)?,
			ffn_norm: vector(&layer.ffn_norm)?,
			qkv_bias: layer.qkv_bias.as_ref().map(|b| vectors(b)).transpose()?.map(|v| v.try_into().expect("three")),
			qk_norm: layer.qk_norm.as_ref().map(|n| vectors(n)).transpose()?.map(|v| v.try_into().expect("two")),
			post_norms: layer.post_norms.as_ref().map(|n| vectors(n)).transpose()?.map(|v| v.try_into().expect("two")),
		})
	}

	/// The input embeddings of `tokens`, `[tokens, hidden]` row-major (scaled where the family
	/// scales them).
	pub fn frozen_embeddings(&self, tokens: &[u32]) -> Result<Vec<f32>> {
		self.embed(tokens)?.flatten_all()?.to_vec1()
	}

	/// The final norm's weights.
	pub fn frozen_output_norm(&self) -> Result<Vec<f32>> {
		vector(&self.norm)
	}

	/// Rows `range` of the output projection (`[vocab, hidden]`), dequantized: a caller can
	/// take the vocabulary a slice at a time.
	pub fn frozen_lm_head_rows(&self, range: Range<usize>) -> Result<Vec<f32>> {
		if range.end > self.config.vocab_size {
			candle_core::bail!("output rows {range:?} beyond the vocabulary of {}", self.config.vocab_size);
		}
		self.lm_head.rows_f32(range)
	}
}
