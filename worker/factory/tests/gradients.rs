//! The training forward computes what the serving engine computes (on tiny random models of every
//! family, with an adapter written in PEFT's format and loaded by the engine, and on a GGUF Llama
//! whose q and k rows are in llama.cpp's order), packing items changes nothing, and the
//! hand-written backward equals finite differences of the loss.

use std::{path::Path, sync::Arc};

use candle_core::{
	quantized::{gguf_file, GgmlDType, QTensor},
	Device, Tensor,
};
use openledger_engine::{
	adapters::{load_adapter, permute_rows_for_gguf, AdapterLimits},
	model::{Architecture, Llama, Projection},
	testing::{write_tiny_llama, TinyLlamaSpec},
};
use openledger_factory::{
	lora::LoraLayout,
	model::{FrozenBase, LoraModel, Sequence},
};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// A tiny model of `architecture`; Gemma 3's gets a 4-token window on every other layer and
/// capped logits, so both are exercised.
fn tiny(dir: &Path, architecture: Architecture) -> Arc<Llama> {
	write_tiny_llama(dir, &TinyLlamaSpec { architecture, ..TinyLlamaSpec::default() }, 7).unwrap();
	if architecture == Architecture::Gemma3 {
		let path = dir.join("config.json");
		let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
		config["sliding_window"] = 4.into();
		config["sliding_window_pattern"] = 2.into();
		config["rope_local_base_freq"] = 100.0.into();
		config["final_logit_softcapping"] = 5.0.into();
		std::fs::write(&path, config.to_string()).unwrap();
	}
	let llama = Llama::from_hf_dir(dir, &Device::Cpu, |_, _| {}).unwrap();
	if architecture == Architecture::Gemma3 {
		assert!(llama.config.sliding_window.is_some() && llama.config.final_logit_softcap.is_some());
	}
	Arc::new(llama)
}

/// Adapter weights with `B` non-zero too, so every path carries a gradient.
fn random_params(layout: &LoraLayout, seed: u64) -> Vec<f32> {
	let mut rng = StdRng::seed_from_u64(seed);
	(0..layout.len()).map(|_| rng.random_range(-0.2f32..0.2)).collect()
}

const TOKENS: [u32; 10] = [5, 17, 42, 99, 3, 250, 7, 61, 88, 140];

fn one_item(tokens: &[u32]) -> Sequence {
	let mut seq = Sequence::default();
	seq.push_item(tokens);
	seq
}

#[test]
fn forward_equals_the_serving_engine_in_every_family() {
	for architecture in [Architecture::Llama, Architecture::Qwen2, Architecture::Qwen3, Architecture::Gemma3] {
		let tmp = tempfile::tempdir().unwrap();
		let llama = tiny(&tmp.path().join("base"), architecture);
		let layout = LoraLayout::new(&llama.config, 4, 8.0, &Projection::ALL).unwrap();
		let params = random_params(&layout, 1);
		let adapter_dir = tmp.path().join("adapter");
		std::fs::create_dir_all(&adapter_dir).unwrap();
		layout.write_peft(&adapter_dir, &params, "tiny").unwrap();
		let adapter = load_adapter(&adapter_dir, &llama.config, &AdapterLimits::default(), &Device::Cpu).unwrap();
		let base = FrozenBase::new(llama.clone(), true).unwrap();
		let model = LoraModel { base: &base, lora: &layout, activation_budget: usize::MAX };
		let logits = model.logits(&params, &one_item(&TOKENS)).unwrap();
		let vocab = llama.config.vocab_size;
		for n in [1, 4, 7, TOKENS.len()] {
			let served = llama.logits_alone(&TOKENS[..n], Some(&adapter)).unwrap().to_vec1::<f32>().unwrap();
			let ours = &logits[(n - 1) * vocab..][..vocab];
			let scale = served.iter().fold(0f32, |m, x| m.max(x.abs()));
			let diff = served.iter().zip(ours).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
			assert!(diff <= 1e-4 * scale, "{architecture:?} at {n} tokens: differs by {diff} (scale {scale})");
		}
	}
}

/// The tiny HF model of `hf_dir` as a GGUF file of f32 tensors, named and with q's and k's rows
/// permuted as llama.cpp's converter writes a Llama.
fn write_gguf(hf_dir: &Path, llama: &Llama, out: &Path) {
	let c = &llama.config;
	let weights = candle_core::safetensors::load(hf_dir.join("model.safetensors"), &Device::Cpu).unwrap();
	let mut tensors: Vec<(String, QTensor)> = Vec::new();
	let mut add = |name: String, t: &Tensor| tensors.push((name, QTensor::quantize(t, GgmlDType::F32).unwrap()));
	add("token_embd.weight".into(), &weights["model.embed_tokens.weight"]);
	add("output.weight".into(), &weights["lm_head.weight"]);
	add("output_norm.weight".into(), &weights["model.norm.weight"]);
	for l in 0..c.num_layers {
		let w = |name: &str| &weights[&format!("model.layers.{l}.{name}.weight")];
		add(format!("blk.{l}.attn_q.weight"), &permute_rows_for_gguf(w("self_attn.q_proj"), c.num_heads).unwrap());
		add(format!("blk.{l}.attn_k.weight"), &permute_rows_for_gguf(w("self_attn.k_proj"), c.num_kv_heads).unwrap());
		add(format!("blk.{l}.attn_v.weight"), w("self_attn.v_proj"));
		add(format!("blk.{l}.attn_output.weight"), w("self_attn.o_proj"));
		add(format!("blk.{l}.ffn_gate.weight"), w("mlp.gate_proj"));
		add(format!("blk.{l}.ffn_up.weight"), w("mlp.up_proj"));
		add(format!("blk.{l}.ffn_down.weight"), w("mlp.down_proj"));
		add(format!("blk.{l}.attn_norm.weight"), w("input_layernorm"));
		add(format!("blk.{l}.ffn_norm.weight"), w("post_attention_layernorm"));
	}
	let u = |v: usize| gguf_file::Value::U32(v as u32);
	let metadata = [
		("general.architecture", gguf_file::Value::String("llama".into())),
		("llama.vocab_size", u(c.vocab_size)),
		("llama.embedding_length", u(c.hidden_size)),
		("llama.feed_forward_length", u(c.intermediate_size)),
		("llama.block_count", u(c.num_layers)),
		("llama.attention.head_count", u(c.num_heads)),
		("llama.attention.head_count_kv", u(c.num_kv_heads)),
		("llama.context_length", u(c.max_position)),
		("llama.rope.freq_base", gguf_file::Value::F32(c.rope_theta)),
		("llama.attention.layer_norm_rms_epsilon", gguf_file::Value::F32(c.rms_norm_eps as f32)),
	];
	let mut file = std::fs::File::create(out).unwrap();
	let metadata: Vec<(&str, &gguf_file::Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
	let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
	gguf_file::write(&mut file, &metadata, &tensors).unwrap();
}

/// Trained over a GGUF Llama (q and k rows interleaved), an adapter's files are in PEFT's order:
/// on the same weights in HF's layout they give what the training forward gave.
#[test]
fn an_adapter_trained_over_gguf_is_written_in_peft_order() {
	let tmp = tempfile::tempdir().unwrap();
	let hf_dir = tmp.path().join("hf");
	let hf = tiny(&hf_dir, Architecture::Llama);
	write_gguf(&hf_dir, &hf, &tmp.path().join("tiny.gguf"));
	let gguf = Arc::new(Llama::from_gguf(&tmp.path().join("tiny.gguf"), &Device::Cpu, |_, _| {}).unwrap());
	assert!(gguf.config.rope_interleaved && !hf.config.rope_interleaved);
	let layout = LoraLayout::new(&gguf.config, 4, 8.0, &Projection::ALL).unwrap();
	let params = random_params(&layout, 5);
	let base = FrozenBase::new(gguf.clone(), false).unwrap();
	let model = LoraModel { base: &base, lora: &layout, activation_budget: usize::MAX };
	let ours = model.logits(&params, &one_item(&TOKENS)).unwrap();
	let vocab = gguf.config.vocab_size;
	let ours = &ours[(TOKENS.len() - 1) * vocab..];
	let adapter_dir = tmp.path().join("adapter");
	std::fs::create_dir_all(&adapter_dir).unwrap();
	layout.write_peft(&adapter_dir, &params, "tiny").unwrap();
	for served_by in [&hf, &gguf] {
		let adapter = load_adapter(&adapter_dir, &served_by.config, &AdapterLimits::default(), &Device::Cpu).unwrap();
		let served = served_by.logits_alone(&TOKENS, Some(&adapter)).unwrap().to_vec1::<f32>().unwrap();
		let scale = served.iter().fold(0f32, |m, x| m.max(x.abs()));
		let diff = served.iter().zip(ours).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
		assert!(diff <= 1e-4 * scale, "interleaved {}: differs by {diff} (scale {scale})", served_by.config.rope_interleaved);
	}
}

#[test]
fn packed_items_equal_items_alone() {
	let tmp = tempfile::tempdir().unwrap();
	let llama = tiny(tmp.path(), Architecture::Gemma3);
	let layout = LoraLayout::new(&llama.config, 2, 4.0, &[Projection::Q, Projection::Down]).unwrap();
	let params = random_params(&layout, 2);
	let base = FrozenBase::new(llama.clone(), false).unwrap();
	let model = LoraModel { base: &base, lora: &layout, activation_budget: usize::MAX };
	let (first, second) = TOKENS.split_at(6);
	let mut packed = Sequence::default();
	packed.push_item(first);
	packed.push_item(second);
	let together = model.logits(&params, &packed).unwrap();
	let alone = [model.logits(&params, &one_item(first)).unwrap(), model.logits(&params, &one_item(second)).unwrap()].concat();
	for (a, b) in together.iter().zip(&alone) {
		assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
	}
	assert_eq!(packed.target_count(), TOKENS.len() - 2);
}

/// The analytic gradient against central differences of the loss, on the weights with the
/// largest gradients (where f32's rounding is small beside the difference).
fn check_gradients(architecture: Architecture) {
	let tmp = tempfile::tempdir().unwrap();
	let llama = tiny(tmp.path(), architecture);
	let layout = LoraLayout::new(&llama.config, 2, 4.0, &Projection::ALL).unwrap();
	let params = random_params(&layout, 3);
	let base = FrozenBase::new(llama, true).unwrap();
	let mut seq = Sequence::default();
	seq.push_item(&TOKENS[..7]);
	seq.push_item(&TOKENS[7..]);
	// No activations kept: every layer recomputed, the path long runs take.
	let model = LoraModel { base: &base, lora: &layout, activation_budget: 0 };
	let mut grads = vec![0f32; layout.len()];
	let loss = model.accumulate(&params, &seq, 1.0, &mut grads).unwrap();
	let again = model.loss(&params, &seq).unwrap();
	assert!((loss.sum - again.sum).abs() < 1e-4 * loss.sum.abs(), "{} vs {}", loss.sum, again.sum);
	// Kept activations give the same gradients, bit for bit.
	let kept = LoraModel { activation_budget: usize::MAX, ..model };
	let mut kept_grads = vec![0f32; layout.len()];
	kept.accumulate(&params, &seq, 1.0, &mut kept_grads).unwrap();
	assert_eq!(grads, kept_grads, "recomputed and kept activations differ");
	// Every slot's A and B: the weight with the largest gradient.
	let mut checked = 0;
	for slot in layout.slots() {
		let r = layout.rank;
		for (offset, len) in [(slot.offset, r * slot.in_features), (slot.offset + r * slot.in_features, r * slot.out_features)] {
			let i = (offset..offset + len).max_by(|&a, &b| grads[a].abs().total_cmp(&grads[b].abs())).unwrap();
			let eps = 1e-2f32;
			let mut moved = params.clone();
			moved[i] = params[i] + eps;
			let up = model.loss(&moved, &seq).unwrap().sum;
			moved[i] = params[i] - eps;
			let down = model.loss(&moved, &seq).unwrap().sum;
			let numeric = ((up - down) / (2.0 * eps as f64)) as f32;
			let tolerance = 2e-2 * numeric.abs().max(grads[i].abs()) + 2e-3;
			assert!(
				(numeric - grads[i]).abs() <= tolerance,
				"{architecture:?} layer {} {:?} weight {i}: analytic {} vs numeric {numeric}",
				slot.layer,
				slot.projection,
				grads[i]
			);
			checked += 1;
		}
	}
	assert_eq!(checked, 2 * 7 * base.config().num_layers);
}

#[test]
fn gradients_equal_finite_differences_llama() {
	check_gradients(Architecture::Llama);
}

#[test]
fn gradients_equal_finite_differences_qwen3() {
	check_gradients(Architecture::Qwen3);
}

#[test]
fn gradients_equal_finite_differences_gemma3() {
	check_gradients(Architecture::Gemma3);
}
