//! Shape and hyper-parameters of a Llama model, read from GGUF metadata or an HF `config.json`.

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file;
use serde::Deserialize;

use super::Projection;

/// Everything the engine and the adapter loader need to know about a base model's shape.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
	pub vocab_size: usize,
	pub hidden_size: usize,
	pub intermediate_size: usize,
	pub num_layers: usize,
	pub num_heads: usize,
	pub num_kv_heads: usize,
	pub head_dim: usize,
	pub rope_theta: f32,
	pub rms_norm_eps: f64,
	/// Longest sequence (prompt + completion) the model accepts.
	pub max_position: usize,
	/// GGUF Llama weights have the rows of `q` and `k` permuted for the interleaved RoPE layout
	/// (llama.cpp's converter does this); HF weights use the half-split layout.
	pub rope_interleaved: bool,
}

impl LlamaConfig {
	/// `(in_features, out_features)` of a projection, as PEFT's `lora_A` / `lora_B` see it.
	pub fn projection_dims(&self, projection: Projection) -> (usize, usize) {
		let h = self.hidden_size;
		let kv = self.num_kv_heads * self.head_dim;
		match projection {
			Projection::Q => (h, self.num_heads * self.head_dim),
			Projection::K | Projection::V => (h, kv),
			Projection::O => (self.num_heads * self.head_dim, h),
			Projection::Gate | Projection::Up => (h, self.intermediate_size),
			Projection::Down => (self.intermediate_size, h),
		}
	}

	/// Reads the `llama.*` keys of a GGUF file; a missing key is an error naming it.
	pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
		let get = |key: &str| {
			content.metadata.get(key).with_context(|| format!("GGUF metadata has no `{key}`"))
		};
		let arch = get("general.architecture")?.to_string()?.clone();
		if arch != "llama" {
			bail!("GGUF architecture `{arch}` is not supported (only `llama`)");
		}
		let u = |key: &str| -> Result<usize> { Ok(get(key)?.to_u32()? as usize) };
		let hidden_size = u("llama.embedding_length")?;
		let num_heads = u("llama.attention.head_count")?;
		let vocab_size = match content.metadata.get("llama.vocab_size") {
			Some(v) => v.to_u32()? as usize,
			None => get("tokenizer.ggml.tokens")?.to_vec()?.len(),
		};
		Ok(Self {
			vocab_size,
			hidden_size,
			intermediate_size: u("llama.feed_forward_length")?,
			num_layers: u("llama.block_count")?,
			num_heads,
			num_kv_heads: u("llama.attention.head_count_kv").unwrap_or(num_heads),
			head_dim: u("llama.rope.dimension_count").unwrap_or(hidden_size / num_heads),
			rope_theta: get("llama.rope.freq_base").and_then(|v| Ok(v.to_f32()?)).unwrap_or(10_000.0),
			rms_norm_eps: get("llama.attention.layer_norm_rms_epsilon")?.to_f32()? as f64,
			max_position: u("llama.context_length")?,
			rope_interleaved: true,
		})
		.and_then(Self::validated)
	}

	/// Reads an HF `config.json` of a `LlamaForCausalLM`.
	pub fn from_hf_json(json: &str) -> Result<Self> {
		#[derive(Deserialize)]
		struct Hf {
			vocab_size: usize,
			hidden_size: usize,
			intermediate_size: usize,
			num_hidden_layers: usize,
			num_attention_heads: usize,
			num_key_value_heads: Option<usize>,
			head_dim: Option<usize>,
			#[serde(default = "default_theta")]
			rope_theta: f32,
			#[serde(default = "default_eps")]
			rms_norm_eps: f64,
			#[serde(default = "default_positions")]
			max_position_embeddings: usize,
			rope_scaling: Option<serde_json::Value>,
		}
		fn default_theta() -> f32 {
			10_000.0
		}
		fn default_eps() -> f64 {
			1e-6
		}
		fn default_positions() -> usize {
			2048
		}
		let hf: Hf = serde_json::from_str(json).context("config.json is not a Llama config")?;
		if hf.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
			bail!("config.json uses rope_scaling, which this worker does not implement");
		}
		Self {
			vocab_size: hf.vocab_size,
			hidden_size: hf.hidden_size,
			intermediate_size: hf.intermediate_size,
			num_layers: hf.num_hidden_layers,
			num_heads: hf.num_attention_heads,
			num_kv_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
			head_dim: hf.head_dim.unwrap_or(hf.hidden_size / hf.num_attention_heads),
			rope_theta: hf.rope_theta,
			rms_norm_eps: hf.rms_norm_eps,
			max_position: hf.max_position_embeddings,
			rope_interleaved: false,
		}
		.validated()
	}

	fn validated(self) -> Result<Self> {
		if self.num_heads == 0 || self.num_kv_heads == 0 || self.num_heads % self.num_kv_heads != 0 {
			bail!("{} attention heads cannot share {} key/value heads", self.num_heads, self.num_kv_heads);
		}
		if self.head_dim % 2 != 0 || self.head_dim == 0 {
			bail!("head dimension {} must be even", self.head_dim);
		}
		if self.vocab_size == 0 || self.num_layers == 0 || self.max_position == 0 {
			bail!("vocabulary, layer count and context length must be positive");
		}
		Ok(self)
	}
}
