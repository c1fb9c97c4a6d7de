//! PEFT + transformers load the adapter files this crate writes and give the logits this crate's
//! training forward and the serving engine give: the reference was made by
//! `scripts/factory/peft_reference.py` from the same fixture (same bytes, hashes checked).

use candle_core::Device;
use openledger_engine::adapters::{load_adapter, AdapterLimits};
use openledger_factory::{
	model::{FrozenBase, LoraModel, Sequence},
	testing::{write_peft_fixture, FIXTURE_TOKENS},
};

#[derive(serde::Deserialize)]
struct Reference {
	tokens: Vec<u32>,
	base_weights_blake2: String,
	adapter_weights_blake2: String,
	logits: Vec<Vec<f32>>,
}

fn blake2(path: &std::path::Path) -> String {
	hex::encode(openledger_primitives::content_hash(&std::fs::read(path).unwrap()).0)
}

#[test]
fn peft_gives_the_logits_we_do() {
	let reference: Reference = serde_json::from_str(include_str!("data/peft_reference.json")).unwrap();
	let tmp = tempfile::tempdir().unwrap();
	let (llama, layout, params) = write_peft_fixture(tmp.path()).unwrap();
	assert_eq!(reference.tokens, FIXTURE_TOKENS, "the reference scores other tokens: rerun peft_reference.py");
	assert_eq!(blake2(&tmp.path().join("base/model.safetensors")), reference.base_weights_blake2, "rerun peft_reference.py");
	assert_eq!(
		blake2(&tmp.path().join("adapter/adapter_model.safetensors")),
		reference.adapter_weights_blake2,
		"the adapter files changed: rerun peft_reference.py"
	);
	let base = FrozenBase::new(llama.clone(), true).unwrap();
	let model = LoraModel { base: &base, lora: &layout, activation_budget: usize::MAX };
	let mut seq = Sequence::default();
	seq.push_item(&FIXTURE_TOKENS);
	let ours = model.logits(&params, &seq).unwrap();
	let vocab = llama.config.vocab_size;
	let close = |got: &[f32], want: &[f32], what: &str| {
		let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
		let diff = got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
		assert!(diff <= 1e-4 * scale, "{what}: differs from PEFT by {diff} (scale {scale})");
	};
	for (t, want) in reference.logits.iter().enumerate() {
		close(&ours[t * vocab..][..vocab], want, &format!("training forward at position {t}"));
	}
	// The serving engine, loading the same files.
	let adapter = load_adapter(&tmp.path().join("adapter"), &llama.config, &AdapterLimits::default(), &Device::Cpu).unwrap();
	let served = llama.logits_alone(&FIXTURE_TOKENS, Some(&adapter)).unwrap().to_vec1::<f32>().unwrap();
	close(&served, reference.logits.last().unwrap(), "served");
	// And the adapter matters: without it, the logits are far from PEFT's.
	let plain = llama.logits_alone(&FIXTURE_TOKENS, None).unwrap().to_vec1::<f32>().unwrap();
	let moved = plain.iter().zip(reference.logits.last().unwrap()).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
	assert!(moved > 0.05, "the adapter changes the logits by {moved} only");
}
