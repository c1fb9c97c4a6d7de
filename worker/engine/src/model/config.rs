//! Shape and hyper-parameters of a decoder (Llama and the families built on its graph), read from
//! GGUF metadata or an HF `config.json`.

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file;
use serde::Deserialize;

use super::Projection;

/// The model families the engine runs: Llama's decoder, and what each other family changes in it.
/// LoRA adapters of all of them name the same modules (`q_proj` … `down_proj`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
	/// Llama 1–3.x, and the models converted as Llama (Mistral 7B, SmolLM).
	Llama,
	/// Qwen 2 and 2.5: a bias on the q, k and v projections.
	Qwen2,
	/// Qwen 3: q and k RMS-normed per head before the rotary embedding.
	Qwen3,
	/// Gemma 3: Qwen 3's per-head norms, norms after attention and the MLP too, GeGLU, embeddings
	/// scaled by √hidden, and layers that attend within a sliding window with a rope base of their
	/// own (five in six), between layers that attend to everything.
	Gemma3,
}

impl Architecture {
	/// What [`Self::from_gguf_name`] and [`Self::from_hf`] accept, for error messages.
	pub const SUPPORTED: &'static str = "llama (Llama 1–3.x, Mistral, SmolLM), qwen2 (Qwen 2, 2.5), qwen3 (Qwen 3), gemma3 (Gemma 3)";

	/// The family of a GGUF `general.architecture`.
	pub fn from_gguf_name(name: &str) -> Result<Self> {
		Ok(match name {
			"llama" => Self::Llama,
			"qwen2" => Self::Qwen2,
			"qwen3" => Self::Qwen3,
			"gemma3" => Self::Gemma3,
			other => bail!("model architecture `{other}` is not supported (supported: {})", Self::SUPPORTED),
		})
	}

	/// The family of an HF `config.json`'s `model_type`.
	fn from_hf(model_type: &str) -> Result<Self> {
		Ok(match model_type {
			"llama" | "mistral" => Self::Llama,
			"qwen2" => Self::Qwen2,
			"qwen3" => Self::Qwen3,
			"gemma3_text" => Self::Gemma3,
			other => bail!("config.json model_type `{other}` is not supported (supported: {})", Self::SUPPORTED),
		})
	}

	/// The name GGUF files and the chain's base-model registrations give the family.
	pub fn name(self) -> &'static str {
		match self {
			Self::Llama => "llama",
			Self::Qwen2 => "qwen2",
			Self::Qwen3 => "qwen3",
			Self::Gemma3 => "gemma3",
		}
	}

	/// Whether the q, k and v projections add a bias.
	pub fn qkv_bias(self) -> bool {
		self == Self::Qwen2
	}

	/// Whether q and k are RMS-normed per head (each its own weights) before the rotary embedding.
	pub fn qk_norm(self) -> bool {
		matches!(self, Self::Qwen3 | Self::Gemma3)
	}

	/// Whether the outputs of attention and of the MLP are RMS-normed before the residual adds
	/// them (Gemma's sandwich norms).
	pub fn post_norms(self) -> bool {
		self == Self::Gemma3
	}

	/// Whether the MLP gates with GELU (tanh approximation) rather than SiLU.
	pub fn gelu_gate(self) -> bool {
		self == Self::Gemma3
	}

	/// Whether HF files store the RMS norms' weights as offsets from 1 (GGUF files have the 1
	/// added by llama.cpp's converter).
	pub fn hf_norms_offset_from_one(self) -> bool {
		self == Self::Gemma3
	}

	/// Whether the token embeddings are multiplied by √hidden before the first layer.
	pub fn scaled_embeddings(self) -> bool {
		self == Self::Gemma3
	}

	/// Whether a GGUF file of this family rotates interleaved pairs: llama.cpp's converter
	/// permutes Llama's q and k rows for its "normal" rotary embedding, and leaves the Qwen
	/// families in HF's half-split ("neox") layout.
	fn gguf_rope_interleaved(self) -> bool {
		self == Self::Llama
	}
}

/// Sliding-window attention: which layers use it, over how many positions, with what rope base.
#[derive(Clone, Debug, PartialEq)]
pub struct SlidingWindow {
	pub size: usize,
	/// One per layer: whether it attends within the window.
	pub local: Vec<bool>,
	pub rope_theta: f32,
}

impl SlidingWindow {
	/// Gemma 3's layout: of every `pattern` layers, all but the last are local.
	fn every(pattern: usize, num_layers: usize, size: usize, rope_theta: f32) -> Self {
		let local = (0..num_layers).map(|l| pattern == 0 || l % pattern < pattern - 1).collect();
		Self { size, local, rope_theta }
	}
}

/// Everything the engine and the adapter loader need to know about a base model's shape.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
	pub architecture: Architecture,
	pub vocab_size: usize,
	pub hidden_size: usize,
	pub intermediate_size: usize,
	pub num_layers: usize,
	pub num_heads: usize,
	pub num_kv_heads: usize,
	pub head_dim: usize,
	pub rope_theta: f32,
	/// What each rotary frequency is divided by (`head_dim / 2` of them), for models trained
	/// with rope scaling: Llama 3.1's `llama3` bands, or one `linear` factor. `None`: unscaled.
	/// A GGUF file carries Llama 3's as the tensor `rope_freqs.weight` (read with the weights).
	pub rope_freq_factors: Option<Vec<f32>>,
	pub rms_norm_eps: f64,
	/// Layers that attend only to the last `size` positions (a token's own included), and the
	/// rope base they use; the other layers attend to everything with `rope_theta`.
	pub sliding_window: Option<SlidingWindow>,
	/// What q·k is multiplied by: 1/√head_dim, except where the family says otherwise.
	pub attention_scale: f32,
	/// Gemma 2's cap on the logits (`cap · tanh(logit / cap)`), where a model has one.
	pub final_logit_softcap: Option<f32>,
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

	/// Reads the `{architecture}.*` keys of a GGUF file; a missing key is an error naming it.
	/// Llama 3's rope factors are a tensor, not metadata: the loader sets them.
	pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
		let get = |key: &str| {
			content.metadata.get(key).with_context(|| format!("GGUF metadata has no `{key}`"))
		};
		let arch_name = get("general.architecture")?.to_string()?.clone();
		let architecture = Architecture::from_gguf_name(&arch_name)?;
		let key = |suffix: &str| format!("{arch_name}.{suffix}");
		let u = |suffix: &str| -> Result<usize> { Ok(get(&key(suffix))?.to_u32()? as usize) };
		let hidden_size = u("embedding_length")?;
		let num_heads = u("attention.head_count")?;
		let vocab_size = match content.metadata.get(&key("vocab_size")) {
			Some(v) => v.to_u32()? as usize,
			None => get("tokenizer.ggml.tokens")?.to_vec()?.len(),
		};
		let head_dim = u("attention.key_length").unwrap_or(hidden_size / num_heads.max(1));
		if let Ok(rotated) = u("rope.dimension_count") {
			if rotated != head_dim {
				bail!("the model rotates {rotated} of each head's {head_dim} dimensions; partial rotary embeddings are not supported");
			}
		}
		let rope_freq_factors = match content.metadata.get(&key("rope.scaling.type")) {
			None => None,
			Some(kind) => match kind.to_string()?.as_str() {
				"none" => None,
				"linear" => {
					let factor = get(&key("rope.scaling.factor"))?.to_f32()?;
					Some(vec![factor; head_dim / 2])
				},
				other => bail!("rope scaling `{other}` is not supported (supported: llama3, linear)"),
			},
		};
		let num_layers = u("block_count")?;
		let float = |suffix: &str| content.metadata.get(&key(suffix)).map(|v| v.to_f32()).transpose();
		let sliding_window = match (architecture, u("attention.sliding_window").ok().filter(|&w| w > 0)) {
			(Architecture::Gemma3, Some(size)) => {
				// llama.cpp's defaults for Gemma 3: five local layers in six, rope base 10 000. The
				// pattern is a number, or one flag per layer.
				let theta = float("rope.freq_base_swa")?.unwrap_or(10_000.0);
				Some(match content.metadata.get(&key("attention.sliding_window_pattern")) {
					Some(gguf_file::Value::Array(flags)) => {
						let local = flags
							.iter()
							.map(|f| match f {
								gguf_file::Value::Bool(b) => Ok(*b),
								other => Ok(other.to_u32()? != 0),
							})
							.collect::<Result<Vec<_>>>()?;
						SlidingWindow { size, local, rope_theta: theta }
					},
					Some(pattern) => SlidingWindow::every(pattern.to_u32()? as usize, num_layers, size, theta),
					None => SlidingWindow::every(6, num_layers, size, theta),
				})
			},
			(_, Some(size)) => bail!("the model attends within a sliding window of {size} tokens, which is supported for gemma3 only"),
			(_, None) => None,
		};
		Self {
			architecture,
			vocab_size,
			hidden_size,
			intermediate_size: u("feed_forward_length")?,
			num_layers,
			num_heads,
			num_kv_heads: u("attention.head_count_kv").unwrap_or(num_heads),
			head_dim,
			rope_theta: float("rope.freq_base")?.unwrap_or(10_000.0),
			rope_freq_factors,
			rms_norm_eps: get(&key("attention.layer_norm_rms_epsilon"))?.to_f32()? as f64,
			sliding_window,
			// Gemma 3 27B scales by hidden / heads, not its head dimension (llama.cpp tells it by
			// its 62 layers; the file does not say).
			attention_scale: match (architecture, num_layers) {
				(Architecture::Gemma3, 62) => 1.0 / ((hidden_size / num_heads.max(1)) as f32).sqrt(),
				_ => 1.0 / (head_dim as f32).sqrt(),
			},
			final_logit_softcap: float("final_logit_softcapping")?.filter(|&c| c > 0.0),
			max_position: u("context_length")?,
			rope_interleaved: architecture.gguf_rope_interleaved(),
		}
		.validated()
	}

	/// Reads an HF `config.json` of a `LlamaForCausalLM`, `MistralForCausalLM`,
	/// `Qwen2ForCausalLM` or `Qwen3ForCausalLM`.
	pub fn from_hf_json(json: &str) -> Result<Self> {
		#[derive(Deserialize)]
		struct Hf {
			#[serde(default = "default_model_type")]
			model_type: String,
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
			/// Mistral's; Qwen's counts only with `use_sliding_window`.
			sliding_window: Option<usize>,
			#[serde(default)]
			use_sliding_window: Option<bool>,
			/// Gemma 3's: which layers attend within the window, their rope base, the query scale.
			layer_types: Option<Vec<String>>,
			sliding_window_pattern: Option<usize>,
			rope_local_base_freq: Option<f32>,
			query_pre_attn_scalar: Option<f32>,
			final_logit_softcapping: Option<f32>,
		}
		fn default_model_type() -> String {
			"llama".into()
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
		let hf: Hf = serde_json::from_str(json).context("config.json is not a decoder's config")?;
		let architecture = Architecture::from_hf(&hf.model_type)?;
		let window = match architecture {
			Architecture::Llama | Architecture::Gemma3 => hf.sliding_window,
			Architecture::Qwen2 | Architecture::Qwen3 => hf.sliding_window.filter(|_| hf.use_sliding_window == Some(true)),
		};
		let sliding_window = match window.filter(|&w| w < hf.max_position_embeddings) {
			// Gemma's local layers keep their rope base even where the window spans the context.
			_ if architecture == Architecture::Gemma3 => {
				let size = window.unwrap_or(hf.max_position_embeddings);
				let theta = hf.rope_local_base_freq.unwrap_or(10_000.0);
				Some(match &hf.layer_types {
					Some(types) => {
						let local = types.iter().map(|t| t == "sliding_attention").collect::<Vec<_>>();
						if local.len() != hf.num_hidden_layers {
							bail!("config.json names {} layer types for {} layers", local.len(), hf.num_hidden_layers);
						}
						SlidingWindow { size, local, rope_theta: theta }
					},
					None => SlidingWindow::every(hf.sliding_window_pattern.unwrap_or(6), hf.num_hidden_layers, size, theta),
				})
			},
			None => None,
			Some(window) => bail!(
				"config.json attends within a sliding window of {window} tokens, which this worker implements for gemma3 only (models without one are supported)"
			),
		};
		let head_dim = hf.head_dim.unwrap_or(hf.hidden_size / hf.num_attention_heads.max(1));
		Self {
			architecture,
			vocab_size: hf.vocab_size,
			hidden_size: hf.hidden_size,
			intermediate_size: hf.intermediate_size,
			num_layers: hf.num_hidden_layers,
			num_heads: hf.num_attention_heads,
			num_kv_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
			head_dim,
			rope_theta: hf.rope_theta,
			rope_freq_factors: hf_rope_factors(hf.rope_scaling.as_ref(), head_dim, hf.rope_theta)?,
			rms_norm_eps: hf.rms_norm_eps,
			sliding_window,
			attention_scale: 1.0 / hf.query_pre_attn_scalar.unwrap_or(head_dim as f32).sqrt(),
			final_logit_softcap: hf.final_logit_softcapping.filter(|&c| c > 0.0),
			max_position: hf.max_position_embeddings,
			rope_interleaved: false,
		}
		.validated()
	}

	pub(super) fn validated(self) -> Result<Self> {
		if self.num_heads == 0 || self.num_kv_heads == 0 || self.num_heads % self.num_kv_heads != 0 {
			bail!("{} attention heads cannot share {} key/value heads", self.num_heads, self.num_kv_heads);
		}
		if self.head_dim % 2 != 0 || self.head_dim == 0 {
			bail!("head dimension {} must be even", self.head_dim);
		}
		if self.vocab_size == 0 || self.num_layers == 0 || self.max_position == 0 {
			bail!("vocabulary, layer count and context length must be positive");
		}
		if let Some(window) = &self.sliding_window {
			if window.size == 0 || window.local.len() != self.num_layers {
				bail!("the sliding window must be positive and name every layer");
			}
		}
		if let Some(factors) = &self.rope_freq_factors {
			if factors.len() != self.head_dim / 2 || factors.iter().any(|f| !f.is_finite() || *f <= 0.0) {
				bail!("the rope frequency factors must be {} positive numbers", self.head_dim / 2);
			}
		}
		Ok(self)
	}

	/// The rotary embedding's angle per position for each pair of a head's dimensions, in the
	/// layers that attend to everything.
	pub fn rope_inverse_frequencies(&self) -> Vec<f32> {
		(0..self.head_dim / 2)
			.map(|i| {
				let unscaled = 1.0 / self.rope_theta.powf(2.0 * i as f32 / self.head_dim as f32);
				unscaled / self.rope_freq_factors.as_ref().map_or(1.0, |f| f[i])
			})
			.collect()
	}

	/// The same in the sliding-window layers: their own base, unscaled (as llama.cpp has it).
	pub fn local_rope_inverse_frequencies(&self) -> Option<Vec<f32>> {
		let window = self.sliding_window.as_ref()?;
		Some((0..self.head_dim / 2).map(|i| 1.0 / window.rope_theta.powf(2.0 * i as f32 / self.head_dim as f32)).collect())
	}

	/// Whether layer `l` attends within the sliding window, and the window's size.
	pub fn window_of(&self, l: usize) -> Option<usize> {
		self.sliding_window.as_ref().filter(|w| w.local[l]).map(|w| w.size)
	}
}

/// The frequency factors of an HF `rope_scaling` (`None` when it is absent or `default`):
/// `llama3`'s as `transformers` and llama.cpp's converter compute them, or `linear`'s one factor.
fn hf_rope_factors(scaling: Option<&serde_json::Value>, head_dim: usize, theta: f32) -> Result<Option<Vec<f32>>> {
	let Some(scaling) = scaling.filter(|v| !v.is_null()) else { return Ok(None) };
	let kind = scaling.get("rope_type").or_else(|| scaling.get("type")).and_then(|v| v.as_str()).unwrap_or("default");
	let number = |name: &str, default: Option<f64>| -> Result<f64> {
		match scaling.get(name) {
			Some(v) => v.as_f64().with_context(|| format!("rope_scaling.{name} is not a number")),
			None => default.with_context(|| format!("rope_scaling has no `{name}`")),
		}
	};
	match kind {
		"default" => Ok(None),
		"linear" => Ok(Some(vec![number("factor", None)? as f32; head_dim / 2])),
		"llama3" => {
			let factor = number("factor", None)?;
			let (low, high) = (number("low_freq_factor", Some(1.0))?, number("high_freq_factor", Some(4.0))?);
			let original = number("original_max_position_embeddings", Some(8192.0))?;
			if high <= low {
				bail!("rope_scaling.high_freq_factor must be above low_freq_factor");
			}
			let (low_wavelen, high_wavelen) = (original / low, original / high);
			let factors = (0..head_dim / 2)
				.map(|i| {
					let frequency = 1.0 / (theta as f64).powf(2.0 * i as f64 / head_dim as f64);
					let wavelen = 2.0 * std::f64::consts::PI / frequency;
					let f = if wavelen < high_wavelen {
						1.0
					} else if wavelen > low_wavelen {
						factor
					} else {
						let smooth = (original / wavelen - low) / (high - low);
						1.0 / ((1.0 - smooth) / factor + smooth)
					};
					f as f32
				})
				.collect();
			Ok(Some(factors))
		},
		other => bail!("rope_scaling `{other}` is not supported (supported: llama3, linear)"),
	}
}

#[cfg(test)]
mod tests {
	use super::*;

	fn hf(extra: serde_json::Value) -> Result<LlamaConfig> {
		let mut json = serde_json::json!({
			"model_type": "llama", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
			"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
			"rope_theta": 500000.0, "max_position_embeddings": 131072,
		});
		json.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
		LlamaConfig::from_hf_json(&json.to_string())
	}

	#[test]
	fn llama3_rope_factors_follow_its_three_bands() {
		let scaling = serde_json::json!({"rope_scaling": {
			"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
			"original_max_position_embeddings": 8192,
		}});
		let config = hf(scaling).unwrap();
		let factors = config.rope_freq_factors.as_ref().unwrap();
		assert_eq!(factors.len(), 8);
		// head_dim 16, theta 5e5: wavelengths 2π·5e5^(i/8). Below 8192/4 = 2048 unscaled, above
		// 8192 divided by the factor, between them a smooth blend.
		for (i, &f) in factors.iter().enumerate() {
			let wavelen = 2.0 * std::f64::consts::PI * 500_000f64.powf(i as f64 / 8.0);
			if wavelen < 2048.0 {
				assert_eq!(f, 1.0, "band {i}");
			} else if wavelen > 8192.0 {
				assert_eq!(f, 8.0, "band {i}");
			} else {
				let smooth = (8192.0 / wavelen - 1.0) / 3.0;
				let expected = 1.0 / ((1.0 - smooth) / 8.0 + smooth);
				assert!((f as f64 - expected).abs() < 1e-5 && f > 1.0 && f < 8.0, "band {i}: {f} against {expected}");
			}
		}
		assert!(factors.contains(&1.0) && factors.contains(&8.0) && factors.iter().any(|&f| f > 1.0 && f < 8.0));
		let inverse = config.rope_inverse_frequencies();
		assert_eq!(inverse[0], 1.0);
		assert!((inverse[7] - 1.0 / 500_000f32.powf(7.0 / 8.0) / 8.0).abs() < 1e-12);
	}

	#[test]
	fn linear_scaling_divides_every_frequency() {
		let config = hf(serde_json::json!({"rope_scaling": {"type": "linear", "factor": 2.0}})).unwrap();
		assert_eq!(config.rope_freq_factors, Some(vec![2.0; 8]));
		assert_eq!(hf(serde_json::json!({"rope_scaling": {"rope_type": "default"}})).unwrap().rope_freq_factors, None);
	}

	#[test]
	fn unsupported_scaling_and_windows_are_named() {
		let yarn = hf(serde_json::json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}})).unwrap_err();
		assert!(yarn.to_string().contains("rope_scaling `yarn` is not supported (supported: llama3, linear)"), "{yarn}");
		let mistral = hf(serde_json::json!({"model_type": "mistral", "sliding_window": 4096})).unwrap_err();
		assert!(mistral.to_string().contains("sliding window of 4096 tokens"), "{mistral}");
		// Mistral v0.2 and later have none; Qwen's counts only when switched on.
		assert_eq!(hf(serde_json::json!({"model_type": "mistral", "sliding_window": null})).unwrap().architecture, Architecture::Llama);
		let qwen = hf(serde_json::json!({"model_type": "qwen2", "sliding_window": 4096, "use_sliding_window": false})).unwrap();
		assert_eq!(qwen.architecture, Architecture::Qwen2);
		let phi = hf(serde_json::json!({"model_type": "phi3"})).unwrap_err();
		assert!(phi.to_string().contains("`phi3` is not supported (supported: llama"), "{phi}");
	}

	#[test]
	fn gemma3_local_layers_keep_their_rope_base_even_with_a_window_over_the_context() {
		let config = hf(serde_json::json!({
			"model_type": "gemma3_text", "sliding_window": 512, "max_position_embeddings": 256,
			"layer_types": ["sliding_attention", "full_attention"], "rope_local_base_freq": 10000.0,
			"query_pre_attn_scalar": 16,
		}))
		.unwrap();
		let window = config.sliding_window.as_ref().unwrap();
		assert_eq!((window.local.as_slice(), window.rope_theta), ([true, false].as_slice(), 10_000.0));
		assert_eq!((config.window_of(0), config.window_of(1)), (Some(512), None));
		assert_eq!(config.attention_scale, 0.25);
		assert_eq!(config.local_rope_inverse_frequencies().unwrap()[1], 1.0 / 10_000f32.powf(2.0 / 16.0));
		let wrong = hf(serde_json::json!({"model_type": "gemma3_text", "sliding_window": 8, "layer_types": ["sliding_attention"]}));
		assert!(wrong.unwrap_err().to_string().contains("1 layer types for 2 layers"));
	}

	#[test]
	fn qwen3_keeps_its_own_head_dimension() {
		let config = hf(serde_json::json!({"model_type": "qwen3", "head_dim": 32})).unwrap();
		assert_eq!((config.architecture, config.head_dim), (Architecture::Qwen3, 32));
		assert_eq!(config.projection_dims(Projection::Q), (64, 128));
		assert_eq!(config.projection_dims(Projection::O), (128, 64));
		assert!(config.architecture.qk_norm() && !config.architecture.qkv_bias());
	}
}
