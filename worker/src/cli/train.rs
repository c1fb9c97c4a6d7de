//! `openledger-worker adapter train`: a LoRA adapter trained over the base model on DataNets'
//! accepted items, written in PEFT's format with its training manifest; `adapter
//! verify-manifest`: that manifest checked against the chain.

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::{Context, Result};
use candle_core::Device;
use clap::Args;
use openledger_engine::{
	adapters::{self, AdapterLimits},
	base::{self, BaseModel},
	model::Projection,
};
use openledger_factory::{
	data::load_items,
	influence::{InfluenceSketch, SketchProjection},
	lora::LoraLayout,
	model::{FrozenBase, LoraModel},
	manifest::{BaseModelRef, Hyperparameters, Manifest},
	train::{train, RunOptions, TrainJob},
};
use openledger_primitives::DataNetId;

use super::ledger::{connect, runtime_builder, ChainArgs};

#[derive(Args)]
pub struct TrainArgs {
	/// The base model (GGUF file or HF directory; default: the bundled SmolLM2).
	#[arg(long)]
	pub base: Option<PathBuf>,
	/// The DataNet index root (`datanet ingest --index`).
	#[arg(long)]
	pub index: PathBuf,
	/// A DataNet to train on (repeatable); only its accepted items (with on-chain ids) are used.
	#[arg(long = "datanet", required = true)]
	pub datanets: Vec<DataNetId>,
	/// The adapter's directory, created at the end (must not exist).
	#[arg(long)]
	pub out: PathBuf,
	#[arg(long, default_value_t = 16)]
	pub rank: usize,
	#[arg(long, default_value_t = 32.0)]
	pub alpha: f64,
	/// Comma-separated among q,k,v,o,gate,up,down (or their `_proj` names).
	#[arg(long, default_value = "q,k,v,o,gate,up,down")]
	pub targets: String,
	/// Passes over the items (ignored where --steps is given).
	#[arg(long, default_value_t = 1)]
	pub epochs: usize,
	/// Optimizer updates, overriding --epochs (the items are cycled, reshuffled each pass).
	#[arg(long)]
	pub steps: Option<usize>,
	#[arg(long, default_value_t = 2e-4)]
	pub lr: f64,
	/// Updates over which the learning rate rises linearly to --lr (then it decays along a
	/// cosine to 0).
	#[arg(long, default_value_t = 0)]
	pub warmup_steps: usize,
	/// Packed sequences per update.
	#[arg(long, default_value_t = 4)]
	pub batch_size: usize,
	/// Tokens per packed sequence; longer items are cut.
	#[arg(long, default_value_t = 512)]
	pub max_seq_len: usize,
	#[arg(long, default_value_t = 0.0)]
	pub weight_decay: f64,
	/// Clip the gradients' global norm to this (0: no clipping).
	#[arg(long, default_value_t = 1.0)]
	pub max_grad_norm: f64,
	#[arg(long, default_value_t = 0)]
	pub seed: u64,
	/// Save a checkpoint every this many updates (0: never); a rerun of the same command
	/// resumes from it.
	#[arg(long, default_value_t = 20)]
	pub checkpoint_every: usize,
	/// Dequantize each base layer when used instead of once (QLoRA's memory, slower).
	#[arg(long)]
	pub dequantize_per_use: bool,
	/// MiB of layer activations kept per sequence; layers beyond are recomputed.
	#[arg(long, default_value_t = 2048)]
	pub activation_memory: usize,
	/// Dimensions of each item's projected gradient, stored beside the adapter for per-item
	/// attribution of answers (0: no sketch; answers pay the DataNets by their shares).
	#[arg(long, default_value_t = 256)]
	pub sketch_dim: usize,
	/// How many of the top layers' weights the sketch covers (0: all): fewer cost less per
	/// answer scored (and ranked the planted facts' documents better: docs/benchmarks.md).
	#[arg(long, default_value_t = 4)]
	pub sketch_layers: usize,
	/// The largest rank accepted (the worker's adapter limit).
	#[arg(long, default_value_t = AdapterLimits::default().max_rank)]
	pub max_rank: usize,
}

pub fn run(args: TrainArgs, targets: Vec<Projection>) -> Result<()> {
	let path = match args.base {
		Some(path) => path,
		None => base::find_default_model()?,
	};
	// Refuse what can be refused before the model loads.
	anyhow::ensure!(!args.out.exists(), "{} already exists; choose another --out or remove it", args.out.display());
	let weights_hash = base::weights_hash(&path)?;
	let model = BaseModel::load(&path, None, &Device::Cpu)?;
	// 0, or more layers than the model has: all of them.
	let from_layer = model.config.num_layers.saturating_sub(args.sketch_layers);
	let from_layer = if args.sketch_layers == 0 { 0 } else { from_layer };
	let items = load_items(&args.index, &args.datanets, &model.codec)?;
	tracing::info!("training on {} accepted items of DataNets {:?}", items.len(), args.datanets);
	let hyperparameters = Hyperparameters {
		rank: args.rank,
		alpha: args.alpha,
		target_modules: targets.iter().map(|p| p.peft_name().to_string()).collect(),
		epochs: args.epochs,
		steps: 0,
		learning_rate: args.lr,
		warmup_steps: args.warmup_steps,
		batch_size: args.batch_size,
		max_seq_len: args.max_seq_len,
		weight_decay: args.weight_decay,
		max_grad_norm: args.max_grad_norm,
		seed: args.seed,
	};
	let job = TrainJob {
		llama: model.model.clone(),
		base: BaseModelRef {
			name: model.name.clone(),
			architecture: model.config.architecture.name().into(),
			weights_hash: format!("{weights_hash:?}"),
		},
		items,
		targets,
		hyperparameters,
		steps: args.steps,
		out: args.out.clone(),
		options: RunOptions {
			checkpoint_every: args.checkpoint_every,
			keep_base: !args.dequantize_per_use,
			activation_budget: args.activation_memory << 20,
			stop_after: None,
			sketch: (args.sketch_dim > 0).then_some(SketchProjection { dim: args.sketch_dim, seed: args.seed, from_layer }),
			limits: AdapterLimits { max_rank: args.max_rank, ..AdapterLimits::default() },
		},
	};
	let trained = train(job)?.context("the run stopped before its end")?;
	let m = &trained.manifest;
	let summary = serde_json::json!({
		"adapter": args.out,
		"hash": trained.adapter.hash,
		"manifest_hash": format!("{:?}", trained.manifest_hash),
		"base_model": m.base_model,
		"items": m.items.len(),
		"datanets": m.datanets,
		"provenance_ppm": m.shares_ppm(),
		"influence_sketch": m.influence_sketch,
		"updates": m.hyperparameters.steps,
		"loss_first": m.loss_curve.first(),
		"loss_last": m.loss_curve.last(),
		"tokens_per_second": (trained.tokens_per_second * 10.0).round() / 10.0,
		"resumed_from": trained.resumed_from,
	});
	println!("{}", serde_json::to_string_pretty(&summary)?);
	Ok(())
}

#[derive(Args)]
pub struct VerifyManifestArgs {
	/// The adapter's directory: its PEFT files and `training_manifest.json`.
	#[arg(long)]
	pub adapter: PathBuf,
	#[command(flatten)]
	pub chain: ChainArgs,
}

/// Checks an adapter's training manifest against its files and the chain: the weights are the
/// ones it names, every item is an accepted item of its DataNet with the hash it gives, and the
/// DataNet shares are its items' sums. Prints the shares in ppm, as `registry.registerAdapter`
/// takes the provenance.
pub fn verify_manifest(args: VerifyManifestArgs) -> Result<()> {
	let manifest = Manifest::read(&args.adapter)?;
	let adapter = adapters::inspect(&args.adapter)?;
	anyhow::ensure!(
		adapter.hash == manifest.adapter_weights_hash,
		"the adapter's weights hash {} is not the manifest's {}",
		adapter.hash,
		manifest.adapter_weights_hash
	);
	let accepted = runtime_builder()?.block_on(async {
		let client = connect(&args.chain).await?;
		let mut accepted = BTreeMap::new();
		for share in &manifest.datanets {
			accepted.insert(share.datanet, client.accepted_items(share.datanet).await?);
		}
		anyhow::Ok(accepted)
	})?;
	manifest.check_items(&accepted)?;
	let summary = serde_json::json!({
		"verified": true,
		"adapter_hash": adapter.hash,
		"items": manifest.items.len(),
		"datanets": manifest.datanets,
		"provenance_ppm": manifest.shares_ppm(),
	});
	println!("{}", serde_json::to_string_pretty(&summary)?);
	Ok(())
}

#[derive(Args)]
pub struct AttributeArgs {
	/// The trained adapter's directory (with `influence_sketch.safetensors`).
	#[arg(long)]
	pub adapter: PathBuf,
	/// The base model it was trained over (default: the bundled SmolLM2).
	#[arg(long)]
	pub base: Option<PathBuf>,
	/// JSON lines of `{"prompt": …, "answer": …}` (texts; the prompt as the model saw it).
	#[arg(long)]
	pub queries: PathBuf,
	/// Items to name per answer.
	#[arg(long, default_value_t = 5)]
	pub top: usize,
}

/// The training items that taught each answer, by the adapter's influence sketch: one JSON line
/// per query with the best items and their scores, and the seconds it took.
pub fn attribute(args: AttributeArgs) -> Result<()> {
	let sketch = InfluenceSketch::read(&args.adapter)?
		.with_context(|| format!("{} has no influence sketch (trained with --sketch-dim 0?)", args.adapter.display()))?;
	let manifest = Manifest::read(&args.adapter)?;
	let path = match args.base {
		Some(path) => path,
		None => base::find_default_model()?,
	};
	let weights_hash = format!("{:?}", base::weights_hash(&path)?);
	anyhow::ensure!(
		weights_hash == manifest.base_model.weights_hash,
		"{} is not the base the adapter was trained over ({}, weights {}); pass it with --base",
		path.display(),
		manifest.base_model.name,
		manifest.base_model.weights_hash
	);
	let model = BaseModel::load(&path, None, &Device::Cpu)?;
	let hp = &manifest.hyperparameters;
	let targets = hp
		.target_modules
		.iter()
		.map(|name| Projection::from_peft_name(name).with_context(|| format!("unknown target module `{name}`")))
		.collect::<Result<Vec<_>>>()?;
	let layout = LoraLayout::new(&model.config, hp.rank, hp.alpha, &targets)?;
	// The sketch's gradients are taken at the adapter's initial weights, rebuilt from the seed.
	let params = layout.init(hp.seed);
	let frozen = FrozenBase::new(model.model.clone(), true)?;
	let trained = LoraModel { base: &frozen, lora: &layout, activation_budget: 2 << 30 };
	let text = std::fs::read_to_string(&args.queries).with_context(|| format!("reading {}", args.queries.display()))?;
	for (n, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
		#[derive(serde::Deserialize)]
		struct Query {
			prompt: String,
			answer: String,
		}
		let query: Query = serde_json::from_str(line).with_context(|| format!("query {} is not {{\"prompt\", \"answer\"}}", n + 1))?;
		let started = std::time::Instant::now();
		let prompt = model.codec.encode_text(&query.prompt)?;
		let mut answer = model.codec.encode_text(&query.answer)?;
		// The answer continues the prompt: no BOS of its own.
		if model.codec.bos_token_id().is_some() && answer.first() == model.codec.bos_token_id().as_ref() {
			answer.remove(0);
		}
		let top = sketch.attribute(&trained, &params, &prompt, &answer, args.top)?;
		let top: Vec<_> = top.iter().map(|((datanet, item), score)| serde_json::json!({"datanet": datanet, "item": item, "score": score})).collect();
		println!("{}", serde_json::json!({"top": top, "seconds": started.elapsed().as_secs_f64()}));
	}
	Ok(())
}
