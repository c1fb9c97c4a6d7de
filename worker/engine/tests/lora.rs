//! LoRA applied unmerged equals the merged model; a zero-B adapter is the base exactly; mixed
//! adapters in one ragged batch give what each gives alone. On a tiny random float Llama (and,
//! for the merge, one of each family).

use std::{collections::HashMap, path::Path};

use candle_core::{Device, Tensor};
use openledger_engine::{
	adapters::{load_adapter, write_random_adapter, write_random_adapter_as, AdapterLimits, FloatDtype},
	model::{kv_pool, Architecture, KvCache, Llama, LoraAdapter, Projection, SeqStep},
	testing::{write_tiny_llama, TinyLlamaSpec},
};

const RANK: usize = 8;
const ALPHA: f64 = 16.0;

fn tiny_model(dir: &Path) -> Llama {
	tiny_model_of(dir, Architecture::Llama)
}

fn tiny_model_of(dir: &Path, architecture: Architecture) -> Llama {
	write_tiny_llama(dir, &TinyLlamaSpec { architecture, ..TinyLlamaSpec::default() }, 7).expect("writing the tiny model");
	Llama::from_hf_dir(dir, &Device::Cpu, |_, _| {}).expect("loading the tiny model")
}

fn adapter(model: &Llama, dir: &Path, seed: u64, zero_b: bool, rslora: bool) -> LoraAdapter {
	write_random_adapter(dir, &model.config, RANK, ALPHA, &Projection::ALL, seed, zero_b, rslora)
		.expect("writing an adapter");
	load_adapter(dir, &model.config, &AdapterLimits::default(), &Device::Cpu).expect("loading the adapter")
}

fn max_relative_error(a: &Tensor, b: &Tensor) -> f32 {
	let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
	let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
	diff / scale
}

/// Writes `W + scale·B·A` into a copy of the model directory: the merged model the unmerged path
/// must reproduce.
fn write_merged(base_dir: &Path, adapter_dir: &Path, out: &Path, scale: f64) {
	std::fs::create_dir_all(out).unwrap();
	for entry in std::fs::read_dir(base_dir).unwrap() {
		let path = entry.unwrap().path();
		if path.file_name().unwrap() != "model.safetensors" {
			std::fs::copy(&path, out.join(path.file_name().unwrap())).unwrap();
		}
	}
	let mut weights: HashMap<String, Tensor> =
		candle_core::safetensors::load(base_dir.join("model.safetensors"), &Device::Cpu).unwrap();
	let lora = candle_core::safetensors::load(adapter_dir.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
	let mut merged = 0;
	for (name, w) in weights.iter_mut() {
		let Some(module) = name.strip_suffix(".weight") else { continue };
		let a = lora.get(&format!("base_model.model.{module}.lora_A.weight"));
		let b = lora.get(&format!("base_model.model.{module}.lora_B.weight"));
		if let (Some(a), Some(b)) = (a, b) {
			*w = (&*w + (b.matmul(a).unwrap() * scale).unwrap()).unwrap();
			merged += 1;
		}
	}
	assert_eq!(merged, 7 * TinyLlamaSpec::default().num_layers, "every projection merged");
	candle_core::safetensors::save(&weights, out.join("model.safetensors")).unwrap();
}

#[test]
fn unmerged_lora_equals_merged_model() {
	for architecture in [Architecture::Llama, Architecture::Qwen2, Architecture::Qwen3, Architecture::Gemma3] {
		unmerged_lora_equals_merged_model_of(architecture);
	}
}

fn unmerged_lora_equals_merged_model_of(architecture: Architecture) {
	let tmp = tempfile::tempdir().unwrap();
	let model = tiny_model_of(&tmp.path().join("base"), architecture);
	let prompt: Vec<u32> = vec![5, 17, 42, 99, 3, 250, 7, 61];
	for rslora in [false, true] {
		let adapter_dir = tmp.path().join(format!("adapter-{rslora}"));
		let lora = adapter(&model, &adapter_dir, 11, false, rslora);
		let scale = if rslora { ALPHA / (RANK as f64).sqrt() } else { ALPHA / RANK as f64 };
		let merged_dir = tmp.path().join(format!("merged-{rslora}"));
		write_merged(&tmp.path().join("base"), &adapter_dir, &merged_dir, scale);
		let merged = Llama::from_hf_dir(&merged_dir, &Device::Cpu, |_, _| {}).unwrap();

		let unmerged = model.logits_alone(&prompt, Some(&lora)).unwrap();
		let reference = merged.logits_alone(&prompt, None).unwrap();
		let base = model.logits_alone(&prompt, None).unwrap();
		let err = max_relative_error(&unmerged, &reference);
		assert!(err <= 1e-4, "{architecture:?}, rslora={rslora}: unmerged vs merged relative error {err}");
		// The adapter must matter, or the comparison above proves nothing.
		assert!(max_relative_error(&base, &reference) > 1e-2, "the adapter changes the output");
	}
}

#[test]
fn zero_b_adapter_reproduces_the_base_exactly() {
	let tmp = tempfile::tempdir().unwrap();
	let model = tiny_model(&tmp.path().join("base"));
	let lora = adapter(&model, &tmp.path().join("zero"), 3, true, false);
	let prompt: Vec<u32> = (1..40).collect();
	let with = model.logits_alone(&prompt, Some(&lora)).unwrap().to_vec1::<f32>().unwrap();
	let without = model.logits_alone(&prompt, None).unwrap().to_vec1::<f32>().unwrap();
	assert_eq!(with, without);
}

/// Greedy decode of `n` tokens for several sequences at once, each with its own adapter, through
/// the ragged batch; returns each sequence's tokens and final logits.
fn decode_batched(model: &Llama, prompts: &[Vec<u32>], adapters: &[Option<&LoraAdapter>], n: usize) -> Vec<(Vec<u32>, Vec<f32>)> {
	decode_following(model, prompts, adapters, n, None)
}

/// [`decode_batched`], feeding sequence `i` the tokens `follow[i]` instead of its own picks when
/// given (so two devices are compared on the same inputs even where a near tie flips a pick).
fn decode_following(
	model: &Llama,
	prompts: &[Vec<u32>],
	adapters: &[Option<&LoraAdapter>],
	n: usize,
	follow: Option<&[Vec<u32>]>,
) -> Vec<(Vec<u32>, Vec<f32>)> {
	let pool = model.kv_pool(kv_pool::tokens_for(prompts.len(), model.config.max_position));
	let mut caches: Vec<KvCache> = prompts.iter().map(|_| pool.cache()).collect();
	let mut inputs: Vec<Vec<u32>> = prompts.to_vec();
	let mut out: Vec<(Vec<u32>, Vec<f32>)> = prompts.iter().map(|_| (Vec::new(), Vec::new())).collect();
	for step in 0..n {
		let logits = {
			let mut steps: Vec<SeqStep<'_>> = caches
				.iter_mut()
				.zip(inputs.iter())
				.zip(adapters.iter())
				.map(|((cache, tokens), adapter)| SeqStep { tokens, cache, adapter: *adapter })
				.collect();
			model.forward(&mut steps).unwrap()
		};
		for (i, o) in out.iter_mut().enumerate() {
			let row = logits.get(i).unwrap();
			let token = openledger_engine::model::llama::argmax(&row).unwrap();
			o.0.push(token);
			o.1 = row.to_vec1::<f32>().unwrap();
			inputs[i] = vec![follow.map_or(token, |f| f[i][step])];
		}
	}
	out
}

#[test]
fn two_adapters_in_one_batch_match_each_alone() {
	let tmp = tempfile::tempdir().unwrap();
	let model = tiny_model(&tmp.path().join("base"));
	let a = adapter(&model, &tmp.path().join("a"), 1, false, false);
	let b = adapter(&model, &tmp.path().join("b"), 2, false, false);
	// Different lengths, different adapters (and the base), sharing every step.
	let prompts = vec![vec![1, 2, 3, 4, 5, 6, 7], vec![9, 8], vec![100, 101, 102, 103], vec![42; 12]];
	let adapters = [Some(&a), Some(&b), None, Some(&a)];
	let together = decode_batched(&model, &prompts, &adapters, 12);
	for (i, prompt) in prompts.iter().enumerate() {
		let alone = decode_batched(&model, std::slice::from_ref(prompt), &adapters[i..=i], 12);
		assert_eq!(together[i].0, alone[0].0, "sequence {i}: tokens differ in the batch");
		let err = max_relative_error(
			&Tensor::new(together[i].1.as_slice(), &Device::Cpu).unwrap(),
			&Tensor::new(alone[0].1.as_slice(), &Device::Cpu).unwrap(),
		);
		assert!(err <= 1e-5, "sequence {i}: logits differ by {err}");
	}
	// And the adapters really differ from each other.
	assert_ne!(together[0].0, decode_batched(&model, &prompts[0..1], &[Some(&b)], 12)[0].0);
}

openledger_engine::device_tests!(mixed_batch_on_a_device_matches_each_alone_on_the_cpu);

/// The same ragged batch (prefills of different lengths, then decode steps; adapters of two
/// ranks and weight types, and the base) on `device`, through the GPU's path (batched LoRA,
/// batched paged decode attention; on the CPU too), gives each sequence what it gets alone on the
/// CPU's default path: logits within 1e-4 of the largest (GPU sums run in another order).
fn mixed_batch_on_a_device_matches_each_alone_on_the_cpu(device: &Device) {
	let tmp = tempfile::tempdir().unwrap();
	let cpu = tiny_model(&tmp.path().join("base"));
	let on_device = Llama::from_hf_dir(&tmp.path().join("base"), device, |_, _| {}).unwrap().with_batched_decode(true);
	let (wide, narrow) = (tmp.path().join("wide"), tmp.path().join("narrow"));
	write_random_adapter(&wide, &cpu.config, RANK, ALPHA, &Projection::ALL, 3, false, false).unwrap();
	write_random_adapter_as(FloatDtype::BF16, &narrow, &cpu.config, 3, 6.0, &[Projection::Q, Projection::V, Projection::Down], 4, false, true)
		.unwrap();
	let load = |dir: &Path, device: &Device| load_adapter(dir, &cpu.config, &AdapterLimits::default(), device).unwrap();
	let (wide_cpu, narrow_cpu) = (load(&wide, &Device::Cpu), load(&narrow, &Device::Cpu));
	let (wide_dev, narrow_dev) = (load(&wide, device), load(&narrow, device));
	let prompts = vec![vec![1, 2, 3, 4, 5, 6, 7], vec![9, 8], vec![100, 101, 102, 103], vec![42; 12], vec![7; 3]];
	let on_cpu = [Some(&wide_cpu), Some(&wide_cpu), Some(&narrow_cpu), None, Some(&narrow_cpu)];
	let on_dev = [Some(&wide_dev), Some(&wide_dev), Some(&narrow_dev), None, Some(&narrow_dev)];
	let alone: Vec<_> = (0..prompts.len()).map(|i| decode_batched(&cpu, &prompts[i..=i], &on_cpu[i..=i], 6).remove(0)).collect();
	let follow: Vec<Vec<u32>> = alone.iter().map(|(tokens, _)| tokens.clone()).collect();
	let together = decode_following(&on_device, &prompts, &on_dev, 6, Some(&follow));
	for (i, ((_, mine), (_, theirs))) in together.iter().zip(&alone).enumerate() {
		let err = max_relative_error(&Tensor::new(mine.as_slice(), &Device::Cpu).unwrap(), &Tensor::new(theirs.as_slice(), &Device::Cpu).unwrap());
		assert!(err <= 1e-4, "sequence {i} on {device:?}: logits differ by {err}");
	}
	assert_ne!(alone[0].0, decode_batched(&cpu, &prompts[0..1], &[Some(&narrow_cpu)], 6)[0].0, "the adapters differ");
}

#[test]
fn chunked_prefill_equals_one_shot() {
	let tmp = tempfile::tempdir().unwrap();
	let model = tiny_model(&tmp.path().join("base"));
	let lora = adapter(&model, &tmp.path().join("a"), 5, false, false);
	let prompt: Vec<u32> = (10..70).collect();
	let one_shot = model.logits_alone(&prompt, Some(&lora)).unwrap();
	let mut cache = model.kv_pool(model.config.max_position).cache();
	let mut last = None;
	for chunk in prompt.chunks(7) {
		let mut steps = [SeqStep { tokens: chunk, cache: &mut cache, adapter: Some(&lora) }];
		last = Some(model.forward(&mut steps).unwrap().squeeze(0).unwrap());
	}
	assert_eq!(cache.len(), prompt.len());
	let err = max_relative_error(&last.unwrap(), &one_shot);
	assert!(err <= 1e-5, "chunked prefill differs by {err}");
}

/// Token-at-a-time decoding (the one-token attention path) gives the logits of a one-shot
/// prefill of the same tokens (candle's batched attention), with and without an adapter.
#[test]
fn token_by_token_decoding_equals_one_shot() {
	let tmp = tempfile::tempdir().unwrap();
	let model = tiny_model(&tmp.path().join("base"));
	let lora = adapter(&model, &tmp.path().join("a"), 9, false, false);
	let prompt: Vec<u32> = (3..40).collect();
	for adapter in [None, Some(&lora)] {
		let one_shot = model.logits_alone(&prompt, adapter).unwrap();
		let mut cache = model.kv_pool(model.config.max_position).cache();
		let mut last = None;
		for token in prompt.chunks(1) {
			let mut steps = [SeqStep { tokens: token, cache: &mut cache, adapter }];
			last = Some(model.forward(&mut steps).unwrap().squeeze(0).unwrap());
		}
		let err = max_relative_error(&last.unwrap(), &one_shot);
		assert!(err <= 1e-5, "token-by-token decoding differs by {err}");
	}
}

/// A bf16 adapter, kept in bf16, gives the f32 adapter of the same seed's logits up to bf16's
/// rounding of the weights: far closer to it than to the base the adapter changes.
#[test]
fn half_precision_adapter_matches_its_f32_original() {
	let tmp = tempfile::tempdir().unwrap();
	let model = tiny_model(&tmp.path().join("base"));
	let f32_adapter = adapter(&model, &tmp.path().join("f32"), 4, false, false);
	let bf16_dir = tmp.path().join("bf16");
	write_random_adapter_as(FloatDtype::BF16, &bf16_dir, &model.config, RANK, ALPHA, &Projection::ALL, 4, false, false)
		.unwrap();
	let bf16_adapter = load_adapter(&bf16_dir, &model.config, &AdapterLimits::default(), &Device::Cpu).unwrap();
	assert_eq!(bf16_adapter.resident_bytes * 2, f32_adapter.resident_bytes);
	let prompt: Vec<u32> = (5..30).collect();
	let base = model.logits_alone(&prompt, None).unwrap();
	let full = model.logits_alone(&prompt, Some(&f32_adapter)).unwrap();
	let half = model.logits_alone(&prompt, Some(&bf16_adapter)).unwrap();
	let (rounding, effect) = (max_relative_error(&half, &full), max_relative_error(&base, &full));
	assert!(rounding < 1e-2 && rounding < effect / 10.0, "bf16 differs by {rounding}, the adapter's effect is {effect}");
}
