//! `adapter train`: the training run. Sequences from the items, AdamW updates with warm-up and
//! cosine decay, a progress line, checkpoints from which a killed run resumes to the very same
//! weights, and at the end the PEFT files and the manifest, moved into place in one rename.

use std::{
	fs,
	io::Write,
	path::{Path, PathBuf},
	sync::Arc,
	time::Instant,
};

use anyhow::{bail, ensure, Context, Result};
use openledger_engine::{
	adapters::{inspect_with_base, AdapterInfo, AdapterLimits},
	model::{Llama, Projection},
};
use openledger_primitives::ContentHash;
use serde::{Deserialize, Serialize};

use crate::{
	data::{epoch_sequences, pieces, Packed, TrainingItem},
	influence::{item_sketches, InfluenceSketch, SketchProjection},
	lora::{bytes, floats, LoraLayout},
	manifest::{BaseModelRef, Hyperparameters, Manifest, ManifestItem, MANIFEST_FILE, MANIFEST_FORMAT},
	model::{FrozenBase, LoraModel, Sequence},
	optim::{clip_global_norm, learning_rate, AdamW},
};

/// What to train, from what, and where to put it.
pub struct TrainJob {
	pub llama: Arc<Llama>,
	pub base: BaseModelRef,
	pub items: Vec<TrainingItem>,
	pub targets: Vec<Projection>,
	pub hyperparameters: Hyperparameters,
	/// `steps` in the hyper-parameters is 0 here: taken from `epochs`.
	pub steps: Option<usize>,
	/// The adapter's directory; must not exist.
	pub out: PathBuf,
	pub options: RunOptions,
}

/// How the run uses the machine; none of it changes the weights.
#[derive(Clone, Debug)]
pub struct RunOptions {
	/// Save a checkpoint every this many updates (0: never).
	pub checkpoint_every: usize,
	/// Keep the base's layers dequantized (their f32 size) rather than dequantize per use.
	pub keep_base: bool,
	/// Bytes of activations kept per sequence; beyond, layers are recomputed.
	pub activation_budget: usize,
	/// Stop (as a kill would) after this many updates, leaving the checkpoint: for tests.
	pub stop_after: Option<usize>,
	/// Store every item's projected gradient for per-item attribution (`None`: no sketch).
	pub sketch: Option<SketchProjection>,
	pub limits: AdapterLimits,
}

/// What a finished run made.
pub struct Trained {
	pub adapter: AdapterInfo,
	pub manifest: Manifest,
	/// blake2-256 of the manifest file.
	pub manifest_hash: ContentHash,
	/// Whether this run resumed from a checkpoint.
	pub resumed_from: Option<usize>,
	/// Tokens per second over the updates this run made.
	pub tokens_per_second: f64,
}

/// The state a checkpoint saves besides the weights and moments.
#[derive(Serialize, Deserialize)]
struct CheckpointState {
	/// Hash of everything that determines the weights: a checkpoint of another run is refused.
	fingerprint: String,
	step: usize,
	adam: AdamW,
	loss_curve: Vec<f32>,
	tokens_processed: usize,
}

/// The checkpoint's file in the work directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";

/// The directory a run works in until it renames it to `out`: beside it, hidden.
pub fn work_dir(out: &Path) -> Result<PathBuf> {
	let name = out.file_name().and_then(|n| n.to_str()).context("the output directory needs a name")?;
	Ok(out.with_file_name(format!(".{name}.training")))
}

/// Runs `job` to the end (or to `stop_after`, returning `None`).
pub fn train(job: TrainJob) -> Result<Option<Trained>> {
	let hp = &job.hyperparameters;
	let config = job.llama.config.clone();
	ensure!(!job.out.exists(), "{} already exists; choose another --out or remove it", job.out.display());
	ensure!(hp.rank <= job.options.limits.max_rank, "rank {} is over this worker's limit of {}", hp.rank, job.options.limits.max_rank);
	ensure!(hp.max_seq_len >= 2, "--max-seq-len must be at least 2 (a token and the one it predicts)");
	ensure!(
		hp.max_seq_len <= config.max_position,
		"--max-seq-len {} is beyond the model's context of {} tokens",
		hp.max_seq_len,
		config.max_position
	);
	ensure!(hp.batch_size > 0, "the batch size must be positive");
	ensure!(hp.epochs > 0 || job.steps.is_some(), "epochs must be positive (or give --steps)");
	ensure!(hp.learning_rate > 0.0 && hp.learning_rate.is_finite(), "the learning rate must be positive");
	ensure!(hp.weight_decay >= 0.0 && hp.weight_decay.is_finite(), "the weight decay must be 0 or more");
	ensure!(hp.max_grad_norm >= 0.0 && hp.max_grad_norm.is_finite(), "--max-grad-norm must be 0 (no clipping) or more");
	let layout = LoraLayout::new(&config, hp.rank, hp.alpha, &job.targets)?;
	let cut = pieces(&job.items, hp.max_seq_len);
	ensure!(!cut.is_empty(), "the items hold nothing to train on");

	// The run's sequences, epoch after epoch, until the updates are covered.
	let first_epoch = epoch_sequences(&job.items, &cut, hp.max_seq_len, hp.seed, 0);
	let total_steps = job.steps.unwrap_or_else(|| (first_epoch.len() * hp.epochs).div_ceil(hp.batch_size));
	ensure!(total_steps > 0, "nothing to train: 0 updates");
	let mut stream: Vec<Packed> = first_epoch;
	let mut epoch = 1;
	while stream.len() < total_steps * hp.batch_size {
		stream.extend(epoch_sequences(&job.items, &cut, hp.max_seq_len, hp.seed, epoch));
		epoch += 1;
	}
	stream.truncate(total_steps * hp.batch_size);
	let mut hp = hp.clone();
	hp.steps = total_steps;
	let fingerprint = fingerprint(&job, &hp, &layout);

	let work = work_dir(&job.out)?;
	let (mut params, mut adam, mut loss_curve, mut tokens_processed, start) = match read_checkpoint(&work, &fingerprint, &layout)? {
		Some((params, state)) => {
			tracing::info!("resuming from the checkpoint at update {}/{total_steps} in {}", state.step, work.display());
			// The constants from the flags, not read back through decimal text.
			let mut adam = AdamW::new(layout.len(), hp.weight_decay);
			(adam.step, adam.m, adam.v) = (state.adam.step, state.adam.m, state.adam.v);
			(params, adam, state.loss_curve, state.tokens_processed, state.step)
		},
		None => {
			if work.exists() {
				fs::remove_dir_all(&work).with_context(|| format!("clearing {}", work.display()))?;
			}
			fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
			(layout.init(hp.seed), AdamW::new(layout.len(), hp.weight_decay), Vec::new(), 0, 0)
		},
	};

	let base = FrozenBase::new(job.llama.clone(), job.options.keep_base)?;
	let model = LoraModel { base: &base, lora: &layout, activation_budget: job.options.activation_budget };
	// The influence sketch depends on the initial weights only (see `influence`): made first, so
	// an item it cannot sketch stops the run before the training, not after.
	let sketch = match job.options.sketch {
		Some(projection) => {
			let started = Instant::now();
			let (sketched, vectors) = item_sketches(&model, &layout.init(hp.seed), &job.items, projection, hp.max_seq_len)?;
			tracing::info!("influence sketch of {} items ({} dimensions) in {:.1} s", sketched.len(), projection.dim, started.elapsed().as_secs_f64());
			Some(InfluenceSketch {
				projection,
				items: sketched.iter().map(|&i| (job.items[i].datanet, job.items[i].item)).collect(),
				vectors: vectors.concat(),
			})
		},
		None => None,
	};
	let started = Instant::now();
	let mut run_tokens = 0;
	let mut last_report = Instant::now();
	let mut grads = vec![0f32; layout.len()];
	for step in start..total_steps {
		let batch: Vec<&Sequence> = stream[step * hp.batch_size..(step + 1) * hp.batch_size].iter().map(|p| &p.seq).collect();
		let targets: usize = batch.iter().map(|s| s.target_count()).sum();
		grads.iter_mut().for_each(|g| *g = 0.0);
		let mut loss = 0f64;
		for seq in &batch {
			loss += model.accumulate(&params, seq, 1.0 / targets as f32, &mut grads)?.sum;
		}
		let mean_loss = (loss / targets as f64) as f32;
		ensure!(mean_loss.is_finite(), "the loss is {mean_loss} at update {}: lower the learning rate", step + 1);
		let grad_norm = clip_global_norm(&mut grads, hp.max_grad_norm);
		ensure!(grad_norm.is_finite(), "the gradient's norm is {grad_norm} at update {}: lower the learning rate", step + 1);
		let lr = learning_rate(step, total_steps, hp.warmup_steps, hp.learning_rate);
		adam.update(&mut params, &grads, lr);
		loss_curve.push(mean_loss);
		let tokens: usize = batch.iter().map(|s| s.len()).sum();
		tokens_processed += tokens;
		run_tokens += tokens;
		let done = step + 1;
		if done == total_steps || done == start + 1 || last_report.elapsed().as_secs_f64() >= 2.0 {
			last_report = Instant::now();
			let rate = run_tokens as f64 / started.elapsed().as_secs_f64();
			let eta = (total_steps - done) as f64 * started.elapsed().as_secs_f64() / (done - start) as f64;
			tracing::info!(
				"{} update {done}/{total_steps}: loss {mean_loss:.4}, lr {lr:.2e}, grad norm {grad_norm:.3}, {rate:.0} tokens/s, {eta:.0} s left",
				bar(done, total_steps)
			);
		}
		let checkpoint_due = job.options.checkpoint_every > 0 && done % job.options.checkpoint_every == 0;
		if done < total_steps && (checkpoint_due || job.options.stop_after == Some(done)) {
			let state = CheckpointState { fingerprint: fingerprint.clone(), step: done, adam: adam.clone(), loss_curve: loss_curve.clone(), tokens_processed };
			write_checkpoint(&work, &params, &state)?;
		}
		if job.options.stop_after == Some(done) && done < total_steps {
			return Ok(None);
		}
	}
	let tokens_per_second = run_tokens as f64 / started.elapsed().as_secs_f64().max(1e-9);

	// The adapter, its sketch, its manifest, then one rename: nothing half-written at `out`.
	layout.write_peft(&work, &params, &job.base.name)?;
	if let Some(sketch) = &sketch {
		sketch.write(&work)?;
	}
	let adapter = inspect_with_base(&work, &config, &job.options.limits).context("checking the trained adapter")?;
	// What the loss covered of each item over the updates actually made; items never reached
	// (a run of fewer updates than an epoch) are not in the manifest.
	let mut trained = vec![0usize; job.items.len()];
	stream.iter().flat_map(Packed::trained_per_item).for_each(|(i, n)| trained[i] += n);
	let items: Vec<ManifestItem> = job
		.items
		.iter()
		.zip(&trained)
		.filter(|(_, &tokens)| tokens > 0)
		.map(|(item, &tokens)| ManifestItem { datanet: item.datanet, item: item.item, hash: format!("{:?}", item.hash), tokens })
		.collect();
	let manifest = Manifest {
		format: MANIFEST_FORMAT.into(),
		base_model: job.base.clone(),
		adapter_weights_hash: adapter.hash.clone(),
		hyperparameters: hp,
		datanets: Manifest::shares_of(&items),
		items,
		tokens_processed,
		loss_curve,
		influence_sketch: sketch.map(|s| s.projection),
	};
	let manifest_bytes = serde_json::to_vec_pretty(&manifest)?;
	write_file(&work.join(MANIFEST_FILE), &manifest_bytes)?;
	let _ = fs::remove_file(work.join(CHECKPOINT_FILE));
	fs::rename(&work, &job.out).with_context(|| format!("moving {} to {}", work.display(), job.out.display()))?;
	Ok(Some(Trained {
		adapter,
		manifest,
		manifest_hash: openledger_primitives::content_hash(&manifest_bytes),
		resumed_from: (start > 0).then_some(start),
		tokens_per_second,
	}))
}

/// `[#####·····]`: how far through the run.
fn bar(done: usize, total: usize) -> String {
	let filled = done * 20 / total.max(1);
	format!("[{}{}]", "#".repeat(filled), "·".repeat(20 - filled))
}

/// Everything that determines the weights: the base (its weights and shape), every item's
/// tokens and trained marks, the hyper-parameters and the adapter's layout.
fn fingerprint(job: &TrainJob, hp: &Hyperparameters, layout: &LoraLayout) -> String {
	let items: Vec<(u32, u32, String)> = job
		.items
		.iter()
		.map(|i| {
			let mut bytes: Vec<u8> = i.tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
			bytes.extend(i.trained.iter().map(|&t| t as u8));
			(i.datanet, i.item, format!("{:?}", openledger_primitives::content_hash(&bytes)))
		})
		.collect();
	let targets: Vec<&str> = layout.targets.iter().map(|p| p.peft_name()).collect();
	let identity = serde_json::json!({
		"base": job.base.weights_hash,
		"config": format!("{:?}", job.llama.config),
		"hyperparameters": hp,
		"targets": targets,
		"items": items,
	});
	format!("{:?}", openledger_primitives::content_hash(identity.to_string().as_bytes()))
}

/// Writes `bytes` to `path` through a temporary file, synced, and a rename.
fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
	let tmp = path.with_extension("tmp");
	let mut file = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
	file.write_all(bytes).and_then(|()| file.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
	fs::rename(&tmp, path).with_context(|| format!("renaming {}", tmp.display()))?;
	if let Some(dir) = path.parent() {
		fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))?;
	}
	Ok(())
}

/// One file, replaced in one rename: the weights and AdamW's moments as tensors, the rest of
/// the state in its metadata.
fn write_checkpoint(work: &Path, params: &[f32], state: &CheckpointState) -> Result<()> {
	let tensors = [("params", bytes(params)), ("adam_m", bytes(&state.adam.m)), ("adam_v", bytes(&state.adam.v))];
	let views = tensors
		.iter()
		.map(|(name, data)| Ok((*name, safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![data.len() / 4], data)?)))
		.collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
	let metadata = [("state".to_string(), serde_json::to_string(state)?)].into_iter().collect();
	write_file(&work.join(CHECKPOINT_FILE), &safetensors::serialize(views, Some(metadata))?)
}

/// The checkpoint in `work` if it belongs to this run (same fingerprint); another run's is an
/// error, so that nothing is resumed into the wrong adapter.
fn read_checkpoint(work: &Path, fingerprint: &str, layout: &LoraLayout) -> Result<Option<(Vec<f32>, CheckpointState)>> {
	let path = work.join(CHECKPOINT_FILE);
	if !path.is_file() {
		return Ok(None);
	}
	let unreadable = || format!("{} is unreadable; remove {} to start afresh", path.display(), work.display());
	let bytes = fs::read(&path).with_context(unreadable)?;
	let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).with_context(unreadable)?;
	let state = meta.metadata().as_ref().and_then(|m| m.get("state")).with_context(unreadable)?;
	let mut state: CheckpointState = serde_json::from_str(state).with_context(unreadable)?;
	if state.fingerprint != fingerprint {
		bail!(
			"{} holds the checkpoint of a different training run (other items, base or flags); remove it to start afresh",
			work.display()
		);
	}
	let st = safetensors::SafeTensors::deserialize(&bytes).with_context(unreadable)?;
	let vector = |name: &str| -> Result<Vec<f32>> {
		let data = floats(st.tensor(name)?.data());
		ensure!(data.len() == layout.len(), "the checkpoint's `{name}` has {} values for {}", data.len(), layout.len());
		Ok(data)
	};
	let params = vector("params")?;
	(state.adam.m, state.adam.v) = (vector("adam_m")?, vector("adam_v")?);
	Ok(Some((params, state)))
}
