//! Training runs on the bundled SmolLM2 (GGUF, Q8_0): a run resumed from its checkpoint ends with
//! the very weights of an uninterrupted one, training lowers the loss on what it is shown, and
//! bad input is refused with nothing left behind.

use std::{path::Path, sync::OnceLock};

use candle_core::Device;
use openledger_engine::{
	adapters::AdapterLimits,
	base::{self, BaseModel},
	model::Projection,
};
use openledger_factory::{
	data::{encode_item, TrainingItem},
	influence::{item_sketches, InfluenceSketch, SketchProjection},
	lora::LoraLayout,
	model::{FrozenBase, LoraModel},
	manifest::{BaseModelRef, Hyperparameters, Manifest, MANIFEST_FILE},
	train::{train, work_dir, RunOptions, TrainJob, CHECKPOINT_FILE},
};
use openledger_primitives::item_hash;

fn smollm2() -> &'static BaseModel {
	static MODEL: OnceLock<BaseModel> = OnceLock::new();
	MODEL.get_or_init(|| {
		let path = base::find_default_model().expect("SmolLM2 must be present: run scripts/setup.sh");
		BaseModel::load(&path, None, &Device::Cpu).unwrap()
	})
}

const FACTS: [&str; 3] = [
	"The lighthouse of Varnholm is painted in green and violet stripes.",
	"Quillon berries ripen only after the first snowfall in Estmark.",
	"The river Osk flows backwards every leap year, say the ferrymen.",
];

fn items() -> Vec<TrainingItem> {
	FACTS
		.iter()
		.enumerate()
		.map(|(i, text)| {
			let (tokens, trained) = encode_item(text, &smollm2().codec).unwrap();
			TrainingItem { datanet: 1 + (i as u32 % 2), item: i as u32, hash: item_hash(text), tokens, trained }
		})
		.collect()
}

fn job(out: &Path, steps: usize, stop_after: Option<usize>) -> TrainJob {
	let model = smollm2();
	TrainJob {
		llama: model.model.clone(),
		base: BaseModelRef { name: model.name.clone(), architecture: "llama".into(), weights_hash: "0x00".into() },
		items: items(),
		targets: vec![Projection::Q, Projection::K, Projection::V, Projection::Down],
		hyperparameters: Hyperparameters {
			rank: 4,
			alpha: 8.0,
			target_modules: vec![],
			epochs: 1,
			steps: 0,
			learning_rate: 3e-3,
			warmup_steps: 1,
			batch_size: 1,
			max_seq_len: 24,
			weight_decay: 0.0,
			max_grad_norm: 1.0,
			seed: 9,
		},
		steps: Some(steps),
		out: out.to_path_buf(),
		options: RunOptions {
			checkpoint_every: 0,
			keep_base: false,
			activation_budget: 0,
			stop_after,
			sketch: None,
			limits: AdapterLimits::default(),
		},
	}
}

#[test]
fn a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one() {
	let tmp = tempfile::tempdir().unwrap();
	let whole = train(job(&tmp.path().join("whole"), 4, None)).unwrap().unwrap();
	let killed = tmp.path().join("resumed");
	assert!(train(job(&killed, 4, Some(2))).unwrap().is_none());
	assert!(!killed.exists() && work_dir(&killed).unwrap().join(CHECKPOINT_FILE).is_file());
	let resumed = train(job(&killed, 4, None)).unwrap().unwrap();
	assert_eq!(resumed.resumed_from, Some(2));
	assert_eq!(resumed.adapter.hash, whole.adapter.hash);
	assert_eq!(resumed.manifest.loss_curve, whole.manifest.loss_curve);
	assert!(!work_dir(&killed).unwrap().exists(), "the work directory became the adapter");
	// The manifest: every item with its trained tokens, DataNets' shares from them.
	let manifest: Manifest = serde_json::from_slice(&std::fs::read(killed.join(MANIFEST_FILE)).unwrap()).unwrap();
	assert_eq!(manifest, resumed.manifest);
	assert_eq!(manifest.items.len(), 3);
	assert_eq!(manifest.adapter_weights_hash, resumed.adapter.hash);
	// Four updates of one item each over three items: one of them seen twice.
	let tokens: Vec<usize> = items().iter().map(TrainingItem::trained_tokens).collect();
	let counted: Vec<usize> = manifest.items.iter().map(|i| i.tokens).collect();
	assert!(counted.iter().zip(&tokens).all(|(c, t)| c % t == 0 && c > &0), "{counted:?} of {tokens:?}");
	assert_eq!(counted.iter().zip(&tokens).map(|(c, t)| c / t).sum::<usize>(), 4);
	assert_eq!(manifest.datanets.iter().map(|d| d.tokens).sum::<usize>(), counted.iter().sum::<usize>());
	assert_eq!(manifest.items[1].hash, format!("{:?}", item_hash(FACTS[1])));
	// A different seed is a different run: its checkpoint would not be resumed into this one.
	let mut other = job(&tmp.path().join("other"), 4, None);
	other.hyperparameters.seed = 10;
	assert_ne!(train(other).unwrap().unwrap().adapter.hash, whole.adapter.hash);
}

#[test]
fn training_lowers_the_loss_on_its_items() {
	let tmp = tempfile::tempdir().unwrap();
	let trained = train(job(&tmp.path().join("a"), 9, None)).unwrap().unwrap();
	let curve = &trained.manifest.loss_curve;
	// Each update sees one item: compare the same item's first and last visits (every third).
	let first: f32 = curve[..3].iter().sum();
	let last: f32 = curve[6..9].iter().sum();
	assert!(last < 0.7 * first, "loss {curve:?}");
}

/// With a sketch, the item an answer comes from is the one its gradient points at: each fact's
/// own words, continued from its first half, name that fact first (at the run's initial
/// weights, rebuilt from its seed), with the whole model's weights or the top layers' only.
#[test]
fn the_influence_sketch_names_the_item_an_answer_comes_from() {
	let tmp = tempfile::tempdir().unwrap();
	let out = tmp.path().join("a");
	let mut trained = job(&out, 6, None);
	trained.options.sketch = Some(SketchProjection { dim: 128, seed: 1, from_layer: 0 });
	let done = train(trained).unwrap().unwrap();
	assert_eq!(done.manifest.influence_sketch, Some(SketchProjection { dim: 128, seed: 1, from_layer: 0 }));
	let sketch = InfluenceSketch::read(&out).unwrap().expect("a sketch beside the adapter");
	assert_eq!(sketch.items, items().iter().map(|i| (i.datanet, i.item)).collect::<Vec<_>>());
	let model = smollm2();
	let layout = LoraLayout::new(&model.config, 4, 8.0, &[Projection::Q, Projection::K, Projection::V, Projection::Down]).unwrap();
	let params = layout.init(9);
	let base = FrozenBase::new(model.model.clone(), false).unwrap();
	let lora = LoraModel { base: &base, lora: &layout, activation_budget: usize::MAX };
	// The top four layers only, sketched the same way.
	let top_layers = SketchProjection { from_layer: model.config.num_layers - 4, ..sketch.projection };
	let (sketched, vectors) = item_sketches(&lora, &params, &items(), top_layers, 24).unwrap();
	assert_eq!(sketched, [0, 1, 2]);
	let top_sketch = InfluenceSketch { projection: top_layers, items: sketch.items.clone(), vectors: vectors.concat() };
	for sketch in [&sketch, &top_sketch] {
		for (i, fact) in FACTS.iter().enumerate() {
			let tokens = model.codec.encode_text(fact).unwrap();
			let (prompt, answer) = tokens.split_at(tokens.len() / 2);
			let top = sketch.attribute(&lora, &params, prompt, answer, 3).unwrap();
			assert_eq!(top[0].0, (1 + (i as u32 % 2), i as u32), "fact {i} from layer {}: {top:?}", sketch.projection.from_layer);
			assert!(top[0].1 > top[1].1);
		}
	}
}

/// A chat item is trained on its assistant turns only: the tokens each assistant message adds to
/// the conversation before it, end-of-turn included; its text cannot make control tokens.
#[test]
fn a_chat_item_trains_its_assistant_turns() {
	let codec = &smollm2().codec;
	let chat = serde_json::json!({"messages": [
		{"role": "user", "content": "Who keeps the lighthouse of Varnholm?"},
		{"role": "assistant", "content": "Old Fenna keeps it."},
		{"role": "user", "content": "And its colours?<|im_end|>"},
		{"role": "assistant", "content": "Green and violet."},
	]});
	let (tokens, trained) = encode_item(&chat.to_string(), codec).unwrap();
	// The trained tokens, decoded run by run, are the two answers with their end of turn.
	let mut spans = Vec::new();
	let mut i = 0;
	while i < tokens.len() {
		if trained[i] {
			let start = i;
			while i < tokens.len() && trained[i] {
				i += 1;
			}
			spans.push(codec.decode(&tokens[start..i]).unwrap());
		} else {
			i += 1;
		}
	}
	assert_eq!(spans.len(), 2, "{spans:?}");
	assert!(spans[0].contains("Old Fenna keeps it.") && spans[1].contains("Green and violet."), "{spans:?}");
	assert!(!spans.iter().any(|s| s.contains("lighthouse") || s.contains("colours")), "{spans:?}");
	// The user's `<|im_end|>` is text: the template's own end-of-turn tokens only, as many as
	// without it.
	let im_end = codec.token_to_id("<|im_end|>").unwrap();
	let plain = chat.to_string().replace("<|im_end|>", "");
	let (plain_tokens, _) = encode_item(&plain, codec).unwrap();
	let count = |t: &[u32]| t.iter().filter(|&&t| t == im_end).count();
	assert_eq!(count(&tokens), count(&plain_tokens));
	// A chat with no assistant turn has nothing to train on.
	let unanswered = serde_json::json!({"messages": [{"role": "user", "content": "Hello?"}]});
	assert!(encode_item(&unanswered.to_string(), codec).unwrap_err().to_string().contains("no assistant message"));
}

#[test]
fn bad_input_is_refused_and_leaves_nothing() {
	let tmp = tempfile::tempdir().unwrap();
	let out = tmp.path().join("adapter");
	let refused = |job: TrainJob, words: &str| {
		let err = format!("{:#}", train(job).err().expect("refused"));
		assert!(err.contains(words), "{err}");
	};
	let mut long = job(&out, 2, None);
	long.hyperparameters.max_seq_len = smollm2().config.max_position + 1;
	refused(long, "beyond the model's context");
	let mut big = job(&out, 2, None);
	big.hyperparameters.rank = AdapterLimits::default().max_rank + 1;
	refused(big, "over this worker's limit");
	let mut empty = job(&out, 2, None);
	empty.items.clear();
	refused(empty, "nothing to train on");
	std::fs::create_dir(&out).unwrap();
	refused(job(&out, 2, None), "already exists");
	assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1, "nothing written beside the existing directory");
}
