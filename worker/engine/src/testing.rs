//! Fixtures for tests, benchmarks and the CLI: a tiny random float Llama in HF layout
//! (`config.json`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json`,
//! `generation_config.json`), small enough to build and run in milliseconds on a CPU.
//!
//! The tokenizer is byte-level BPE like SmolLM2's: ids 0..3 are the special tokens
//! `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`; ids 3..259 the 256 byte-level characters in
//! byte order; then the products of a few English merges ([`TINY_MERGES`]); then unused
//! `<|extra_N|>` tokens (ordinary vocabulary entries) up to the spec's vocabulary size. Every
//! string encodes, and decoding gives it back. The chat template is plain ChatML
//! ([`DEFAULT_CHAT_TEMPLATE`]) and EOS is `<|im_end|>`.

use std::{collections::HashMap, fs, path::Path};

use anyhow::{bail, Context, Result};
use rand::{rngs::StdRng, Rng, SeedableRng};
use safetensors::tensor::{Dtype, TensorView};
use serde_json::json;

use crate::{
	model::{Architecture, LlamaConfig},
	tokenizer::DEFAULT_CHAT_TEMPLATE,
};

/// The special tokens of the tiny tokenizer, with ids 0, 1, 2.
pub const TINY_SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
/// The tiny tokenizer's merges, in priority order (`Ġ` is the byte-level space).
pub const TINY_MERGES: &[(&str, &str)] = &[
	("Ġ", "t"),
	("h", "e"),
	("Ġt", "he"),
	("i", "n"),
	("e", "r"),
	("a", "n"),
	("o", "n"),
	("r", "e"),
	("Ġ", "a"),
	("Ġ", "s"),
	("Ġ", "w"),
	("Ġ", "i"),
	("o", "r"),
	("e", "n"),
	("l", "l"),
	("i", "s"),
];
/// Id of `<|im_end|>`, the tiny model's EOS.
pub const TINY_EOS_ID: u32 = 2;

/// Shape of the tiny model. `vocab_size` must be at least [`tiny_tokenizer_len`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TinyLlamaSpec {
	/// The family: Qwen 2 adds q, k and v biases, Qwen 3 per-head q and k norms.
	pub architecture: Architecture,
	pub vocab_size: usize,
	pub hidden_size: usize,
	pub intermediate_size: usize,
	pub num_layers: usize,
	pub num_heads: usize,
	pub num_kv_heads: usize,
	pub max_position: usize,
}

impl Default for TinyLlamaSpec {
	fn default() -> Self {
		Self {
			architecture: Architecture::Llama,
			vocab_size: 300,
			hidden_size: 64,
			intermediate_size: 128,
			num_layers: 2,
			num_heads: 4,
			num_kv_heads: 2,
			max_position: 256,
		}
	}
}

/// Number of tokens the tiny tokenizer defines before padding: specials, bytes and merges.
pub fn tiny_tokenizer_len() -> usize {
	TINY_SPECIAL_TOKENS.len() + 256 + TINY_MERGES.len()
}

/// The [`LlamaConfig`] that [`LlamaConfig::from_hf_json`] reads from the `config.json`
/// [`write_tiny_llama`] writes for `spec`.
pub fn tiny_config(spec: &TinyLlamaSpec) -> LlamaConfig {
	LlamaConfig {
		architecture: spec.architecture,
		vocab_size: spec.vocab_size,
		hidden_size: spec.hidden_size,
		intermediate_size: spec.intermediate_size,
		num_layers: spec.num_layers,
		num_heads: spec.num_heads,
		num_kv_heads: spec.num_kv_heads,
		head_dim: spec.hidden_size / spec.num_heads.max(1),
		rope_theta: 10_000.0,
		rope_freq_factors: None,
		rms_norm_eps: 1e-5,
		sliding_window: None,
		attention_scale: 1.0 / ((spec.hidden_size / spec.num_heads.max(1)) as f32).sqrt(),
		final_logit_softcap: None,
		max_position: spec.max_position,
		rope_interleaved: false,
	}
}

/// Writes a random float32 `LlamaForCausalLM` in HF layout into `dir` (created if needed) and
/// returns its config. Weights are uniform with standard deviation 1/√fan_in (the embedding and
/// `lm_head` use fan_in = hidden size); RMSNorm weights are uniform in 1.0 ± 0.1. They come
/// from a `StdRng` seeded with `seed`, so the same spec and seed give byte-identical files.
pub fn write_tiny_llama(dir: &Path, spec: &TinyLlamaSpec, seed: u64) -> Result<LlamaConfig> {
	if spec.vocab_size < tiny_tokenizer_len() {
		bail!(
			"tiny vocabulary of {} is smaller than its tokenizer ({} tokens)",
			spec.vocab_size,
			tiny_tokenizer_len()
		);
	}
	if spec.num_heads == 0 || spec.hidden_size % spec.num_heads != 0 {
		bail!("hidden size {} is not a multiple of {} heads", spec.hidden_size, spec.num_heads);
	}
	fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
	let config = tiny_config(spec);
	let write = |name: &str, value: &serde_json::Value| -> Result<()> {
		let path = dir.join(name);
		let text = serde_json::to_string_pretty(value)? + "\n";
		fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
	};
	let config_json = json!({
		"architectures": [match spec.architecture {
			Architecture::Llama => "LlamaForCausalLM",
			Architecture::Qwen2 => "Qwen2ForCausalLM",
			Architecture::Qwen3 => "Qwen3ForCausalLM",
			Architecture::Gemma3 => "Gemma3ForCausalLM",
		}],
		"model_type": if spec.architecture == Architecture::Gemma3 { "gemma3_text" } else { spec.architecture.name() },
		"vocab_size": spec.vocab_size,
		"hidden_size": spec.hidden_size,
		"intermediate_size": spec.intermediate_size,
		"num_hidden_layers": spec.num_layers,
		"num_attention_heads": spec.num_heads,
		"num_key_value_heads": spec.num_kv_heads,
		"head_dim": config.head_dim,
		"hidden_act": "silu",
		"rms_norm_eps": config.rms_norm_eps,
		"rope_theta": config.rope_theta,
		"rope_scaling": null,
		"max_position_embeddings": spec.max_position,
		"tie_word_embeddings": false,
		"attention_bias": spec.architecture.qkv_bias(),
		"mlp_bias": false,
		"bos_token_id": 1,
		"eos_token_id": TINY_EOS_ID,
		"torch_dtype": "float32",
	});
	// Catch a spec the engine would refuse now, not when the directory is loaded.
	let parsed = LlamaConfig::from_hf_json(&config_json.to_string())?;
	debug_assert_eq!(parsed, config);
	write("config.json", &config_json)?;
	write_weights(&dir.join("model.safetensors"), &config, seed)?;
	write("tokenizer.json", &tokenizer_json(spec.vocab_size))?;
	write(
		"tokenizer_config.json",
		&json!({
			"add_bos_token": false,
			"add_prefix_space": false,
			"bos_token": "<|im_start|>",
			"eos_token": "<|im_end|>",
			"pad_token": "<|im_end|>",
			"unk_token": "<|endoftext|>",
			"chat_template": DEFAULT_CHAT_TEMPLATE,
			"clean_up_tokenization_spaces": false,
			"model_max_length": spec.max_position,
			"tokenizer_class": "GPT2Tokenizer",
		}),
	)?;
	write("generation_config.json", &json!({ "bos_token_id": 1, "eos_token_id": TINY_EOS_ID }))?;
	Ok(parsed)
}

fn write_weights(path: &Path, c: &LlamaConfig, seed: u64) -> Result<()> {
	let mut rng = StdRng::seed_from_u64(seed);
	let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
	let mut linear = |rng: &mut StdRng, name: String, out_dim: usize, in_dim: usize| {
		// Uniform on ±√(3/fan_in) has standard deviation 1/√fan_in.
		let bound = (3.0 / in_dim as f32).sqrt();
		let values = (0..out_dim * in_dim).map(|_| rng.random_range(-bound..bound));
		tensors.push((name, vec![out_dim, in_dim], values.flat_map(f32::to_le_bytes).collect()));
	};
	let q_dim = c.num_heads * c.head_dim;
	let kv_dim = c.num_kv_heads * c.head_dim;
	let (h, i) = (c.hidden_size, c.intermediate_size);
	linear(&mut rng, "model.embed_tokens.weight".into(), c.vocab_size, h);
	let mut norms = Vec::new();
	// The families' biases and per-head norms.
	let mut vectors: Vec<(String, Vec<f32>)> = Vec::new();
	for layer in 0..c.num_layers {
		let p = format!("model.layers.{layer}");
		linear(&mut rng, format!("{p}.self_attn.q_proj.weight"), q_dim, h);
		linear(&mut rng, format!("{p}.self_attn.k_proj.weight"), kv_dim, h);
		linear(&mut rng, format!("{p}.self_attn.v_proj.weight"), kv_dim, h);
		linear(&mut rng, format!("{p}.self_attn.o_proj.weight"), h, q_dim);
		linear(&mut rng, format!("{p}.mlp.gate_proj.weight"), i, h);
		linear(&mut rng, format!("{p}.mlp.up_proj.weight"), i, h);
		linear(&mut rng, format!("{p}.mlp.down_proj.weight"), h, i);
		norms.push(format!("{p}.input_layernorm.weight"));
		norms.push(format!("{p}.post_attention_layernorm.weight"));
		if c.architecture.post_norms() {
			norms.push(format!("{p}.pre_feedforward_layernorm.weight"));
			norms.push(format!("{p}.post_feedforward_layernorm.weight"));
		}
		if c.architecture.qkv_bias() {
			for (name, width) in [("q", q_dim), ("k", kv_dim), ("v", kv_dim)] {
				let values = (0..width).map(|_| rng.random_range(-0.5f32..0.5));
				vectors.push((format!("{p}.self_attn.{name}_proj.bias"), values.collect()));
			}
		}
		if c.architecture.qk_norm() {
			for name in ["q_norm", "k_norm"] {
				let values = (0..c.head_dim).map(|_| 1.0 + rng.random_range(-0.5f32..0.5));
				vectors.push((format!("{p}.self_attn.{name}.weight"), values.collect()));
			}
		}
	}
	norms.push("model.norm.weight".into());
	linear(&mut rng, "lm_head.weight".into(), c.vocab_size, h);
	// Gemma stores its norms as offsets from 1.
	let one = if c.architecture.hf_norms_offset_from_one() { 0.0 } else { 1.0 };
	for name in norms {
		let values = (0..h).map(|_| one + rng.random_range(-0.1f32..0.1));
		tensors.push((name, vec![h], values.flat_map(f32::to_le_bytes).collect()));
	}
	for (name, values) in vectors {
		tensors.push((name, vec![values.len()], values.into_iter().flat_map(f32::to_le_bytes).collect()));
	}
	let views = tensors
		.iter()
		.map(|(name, shape, data)| {
			Ok((name.as_str(), TensorView::new(Dtype::F32, shape.clone(), data)?))
		})
		.collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
	let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
	safetensors::serialize_to_file(views, Some(metadata), path)
		.with_context(|| format!("writing {}", path.display()))
}

/// GPT-2's byte → character table (`bytes_to_unicode`), indexed by byte.
fn byte_level_alphabet() -> Vec<char> {
	let mut shifted = 0;
	(0u32..256)
		.map(|b| {
			let printable = (0x21..=0x7E).contains(&b)
				|| (0xA1..=0xAC).contains(&b)
				|| (0xAE..=0xFF).contains(&b);
			let code = if printable {
				b
			} else {
				shifted += 1;
				255 + shifted
			};
			char::from_u32(code).expect("byte-level characters are valid")
		})
		.collect()
}

fn tokenizer_json(vocab_size: usize) -> serde_json::Value {
	let mut tokens: Vec<String> = TINY_SPECIAL_TOKENS.iter().map(|t| t.to_string()).collect();
	tokens.extend(byte_level_alphabet().into_iter().map(String::from));
	tokens.extend(TINY_MERGES.iter().map(|(a, b)| format!("{a}{b}")));
	let extras = vocab_size - tokens.len();
	tokens.extend((0..extras).map(|n| format!("<|extra_{n}|>")));
	let vocab: serde_json::Map<String, serde_json::Value> =
		tokens.iter().enumerate().map(|(id, t)| (t.clone(), json!(id))).collect();
	let added: Vec<serde_json::Value> = TINY_SPECIAL_TOKENS
		.iter()
		.enumerate()
		.map(|(id, t)| {
			json!({
				"id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
				"normalized": false, "special": true,
			})
		})
		.collect();
	let byte_level = json!({
		"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true,
	});
	json!({
		"version": "1.0",
		"truncation": null,
		"padding": null,
		"added_tokens": added,
		"normalizer": null,
		"pre_tokenizer": byte_level,
		"post_processor": byte_level,
		"decoder": byte_level,
		"model": {
			"type": "BPE",
			"dropout": null,
			"unk_token": null,
			"continuing_subword_prefix": null,
			"end_of_word_suffix": null,
			"fuse_unk": false,
			"byte_fallback": false,
			"ignore_merges": false,
			"vocab": vocab,
			"merges": TINY_MERGES.iter().map(|(a, b)| format!("{a} {b}")).collect::<Vec<_>>(),
		},
	})
}

/// Runs test bodies on every device the build has, as candle's per-device test macro does:
/// `device_tests!(body)` makes a module `body` whose test `cpu` calls `body(&Device::Cpu)` and,
/// with the `cuda` feature, whose test `cuda` calls it on the first GPU.
#[macro_export]
macro_rules! device_tests {
	($($body:ident),+ $(,)?) => {$(
		mod $body {
			#[test]
			fn cpu() {
				super::$body(&candle_core::Device::Cpu)
			}

			#[cfg(feature = "cuda")]
			#[test]
			fn cuda() {
				super::$body(&candle_core::Device::new_cuda(0).expect("the cuda feature's tests need a GPU"))
			}
		}
	)+};
}

#[cfg(test)]
mod tests {
	use safetensors::SafeTensors;

	use super::*;
	use crate::tokenizer::{ChatMessage, TextCodec};

	const FILES: [&str; 5] = [
		"config.json",
		"model.safetensors",
		"tokenizer.json",
		"tokenizer_config.json",
		"generation_config.json",
	];

	#[test]
	fn config_round_trips_through_hf_json() {
		let dir = tempfile::tempdir().unwrap();
		let spec = TinyLlamaSpec::default();
		let written = write_tiny_llama(dir.path(), &spec, 1).unwrap();
		let read =
			LlamaConfig::from_hf_json(&fs::read_to_string(dir.path().join("config.json")).unwrap())
				.unwrap();
		assert_eq!(read, tiny_config(&spec));
		assert_eq!(written, read);
		assert_eq!(read.head_dim, 16);
		assert!(!read.rope_interleaved);
	}

	#[test]
	fn same_seed_same_files() {
		let spec = TinyLlamaSpec::default();
		let (a, b, c) = (
			tempfile::tempdir().unwrap(),
			tempfile::tempdir().unwrap(),
			tempfile::tempdir().unwrap(),
		);
		write_tiny_llama(a.path(), &spec, 7).unwrap();
		write_tiny_llama(b.path(), &spec, 7).unwrap();
		write_tiny_llama(c.path(), &spec, 8).unwrap();
		for name in FILES {
			let read = |d: &tempfile::TempDir| fs::read(d.path().join(name)).unwrap();
			assert_eq!(read(&a), read(&b), "{name} differs for the same seed");
			assert_eq!(read(&a) == read(&c), name != "model.safetensors", "{name} vs another seed");
		}
	}

	#[test]
	fn weights_have_hf_names_shapes_and_scales() {
		let dir = tempfile::tempdir().unwrap();
		let spec = TinyLlamaSpec { num_layers: 3, ..TinyLlamaSpec::default() };
		let c = write_tiny_llama(dir.path(), &spec, 3).unwrap();
		let bytes = fs::read(dir.path().join("model.safetensors")).unwrap();
		let st = SafeTensors::deserialize(&bytes).unwrap();
		assert_eq!(st.len(), 3 + 3 * 9);
		let values = |name: &str, shape: &[usize]| -> Vec<f32> {
			let t = st.tensor(name).unwrap_or_else(|_| panic!("missing {name}"));
			assert_eq!(t.dtype(), Dtype::F32, "{name}");
			assert_eq!(t.shape(), shape, "{name}");
			t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
		};
		let (h, q, kv) = (c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
		let std = |v: &[f32]| (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
		let embed = values("model.embed_tokens.weight", &[spec.vocab_size, h]);
		assert!((std(&embed) - 1.0 / (h as f32).sqrt()).abs() < 0.01, "{}", std(&embed));
		values("lm_head.weight", &[spec.vocab_size, h]);
		for layer in 0..3 {
			let p = format!("model.layers.{layer}");
			let wq = values(&format!("{p}.self_attn.q_proj.weight"), &[q, h]);
			assert!((std(&wq) - 1.0 / (h as f32).sqrt()).abs() < 0.01);
			values(&format!("{p}.self_attn.k_proj.weight"), &[kv, h]);
			values(&format!("{p}.self_attn.v_proj.weight"), &[kv, h]);
			values(&format!("{p}.self_attn.o_proj.weight"), &[h, q]);
			values(&format!("{p}.mlp.gate_proj.weight"), &[c.intermediate_size, h]);
			values(&format!("{p}.mlp.up_proj.weight"), &[c.intermediate_size, h]);
			let down = values(&format!("{p}.mlp.down_proj.weight"), &[h, c.intermediate_size]);
			assert!((std(&down) - 1.0 / (c.intermediate_size as f32).sqrt()).abs() < 0.01);
			for norm in ["input_layernorm", "post_attention_layernorm"] {
				let w = values(&format!("{p}.{norm}.weight"), &[h]);
				assert!(w.iter().all(|x| (0.9..=1.1).contains(x)));
				assert!(w.iter().any(|&x| x != 1.0));
			}
		}
		let norm = values("model.norm.weight", &[h]);
		assert!(norm.iter().all(|x| (0.9..=1.1).contains(x)));
	}

	#[test]
	fn tokenizer_loads_and_round_trips() {
		let dir = tempfile::tempdir().unwrap();
		let spec = TinyLlamaSpec::default();
		write_tiny_llama(dir.path(), &spec, 0).unwrap();
		let codec = TextCodec::from_hf_dir(dir.path()).unwrap();
		assert_eq!(codec.vocab_size(), spec.vocab_size);
		assert_eq!(codec.eos_token_ids(), &[TINY_EOS_ID]);
		assert_eq!(codec.token_to_id("<|im_start|>"), Some(1));
		assert_eq!(codec.id_to_token(3 + 256).as_deref(), Some("Ġt"));
		assert_eq!(codec.id_to_token(spec.vocab_size as u32 - 1).as_deref(), Some("<|extra_24|>"));
		for text in [
			"Hello, world! The cat is in there.",
			"x = [1, 2, 3]\n\ttabs  and  spaces",
			"Grüße 🦀",
			"",
		] {
			let ids = codec.encode(text).unwrap();
			assert!(ids.iter().all(|&id| (id as usize) < spec.vocab_size));
			assert_eq!(codec.decode(&ids).unwrap(), text);
		}
		// Bytes are ids 3.. in byte order; " the" is one merged token.
		assert_eq!(codec.encode("A").unwrap(), vec![3 + b'A' as u32]);
		assert_eq!(codec.encode(" the").unwrap().len(), 1);
		let prompt = codec.render_chat(&[ChatMessage::new("user", "hi")], true).unwrap();
		assert_eq!(prompt, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
		let ids = codec.encode(&prompt).unwrap();
		assert_eq!(ids[0], 1);
		assert_eq!(ids.iter().filter(|&&id| id == TINY_EOS_ID).count(), 1);
		assert_eq!(codec.decode(&ids).unwrap(), "user\nhi\nassistant\n");
	}

	#[test]
	fn byte_alphabet_is_gpt2s() {
		let alphabet = byte_level_alphabet();
		assert_eq!(alphabet[b' ' as usize], 'Ġ');
		assert_eq!(alphabet[b'\n' as usize], 'Ċ');
		assert_eq!(alphabet[b'!' as usize], '!');
		assert_eq!(alphabet[0], 'Ā');
		let distinct: std::collections::HashSet<_> = alphabet.iter().collect();
		assert_eq!(distinct.len(), 256);
	}

	#[test]
	fn bad_specs_are_refused() {
		let dir = tempfile::tempdir().unwrap();
		let small = TinyLlamaSpec { vocab_size: 100, ..TinyLlamaSpec::default() };
		assert!(write_tiny_llama(dir.path(), &small, 0)
			.unwrap_err()
			.to_string()
			.contains("smaller than its tokenizer"));
		let heads = TinyLlamaSpec { num_heads: 3, ..TinyLlamaSpec::default() };
		assert!(write_tiny_llama(dir.path(), &heads, 0).is_err());
		let kv = TinyLlamaSpec { num_kv_heads: 3, ..TinyLlamaSpec::default() };
		assert!(write_tiny_llama(dir.path(), &kv, 0).is_err());
	}
}
