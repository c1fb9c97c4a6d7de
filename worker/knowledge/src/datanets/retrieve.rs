//! Retrieval: exact top-k by cosine similarity over one or several DataNets, and the
//! attribution weights of the items retrieved.
//!
//! Embeddings are unit vectors, so cosine is the dot product. The scan reads each index's
//! contiguous matrix once per batch of queries (every row is compared with every query while it
//! is in cache) with an eight-lane dot product the compiler turns into AVX2/FMA code; large
//! scans are split across threads. Exact search is the design's first step: an approximate
//! index comes only when measurements ask for one.

use std::{cmp::Ordering, sync::Arc};

use anyhow::Result;
use openledger_primitives::{AttributionEntry, AttributionSource, ContentHash, DataNetId, ItemId, PPM};

use crate::attribution::rule::{apportion, score_units};

use super::{
	embed::{dot, Embedder, EmbeddingModel},
	index::{DataNetIndex, IndexError},
};

/// One retrieved item.
#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
	pub datanet: DataNetId,
	/// The item's content hash (its key in the index and on chain).
	pub hash: ContentHash,
	/// The item's id on chain, when the index knows it.
	pub chain_item: Option<ItemId>,
	pub source: String,
	pub ordinal: u32,
	/// Cosine similarity to the query, in [-1, 1].
	pub score: f32,
	pub text: String,
}

impl Hit {
	/// This hit as a retrieval attribution entry, when its on-chain item id is known.
	pub fn attribution_entry(&self, weight_ppm: u32) -> Option<AttributionEntry> {
		Some(AttributionEntry {
			source: AttributionSource::Retrieval,
			datanet: self.datanet,
			item: Some(self.chain_item?),
			weight_ppm,
		})
	}
}

/// Candidates ordered best first: higher score, then lower DataNet (index position), then lower
/// row; equal scores therefore always rank the same way.
#[derive(Clone, Copy, Debug)]
struct Candidate {
	score: f32,
	index: usize,
	row: usize,
}

fn better(a: &Candidate, b: &Candidate) -> bool {
	match a.score.total_cmp(&b.score) {
		Ordering::Greater => true,
		Ordering::Less => false,
		Ordering::Equal => (a.index, a.row) < (b.index, b.row),
	}
}

/// The best `k` candidates seen so far, best first.
struct TopK {
	k: usize,
	min_score: f32,
	kept: Vec<Candidate>,
}

impl TopK {
	fn new(k: usize, min_score: f32) -> Self {
		Self { k, min_score, kept: Vec::with_capacity(k.min(1024) + 1) }
	}

	/// The score a candidate must reach to be kept.
	#[inline]
	fn floor(&self) -> f32 {
		if self.k > 0 && self.kept.len() == self.k {
			self.kept[self.k - 1].score
		} else {
			self.min_score
		}
	}

	#[inline]
	fn offer(&mut self, c: Candidate) {
		if self.k == 0 || c.score < self.min_score || c.score.is_nan() {
			return;
		}
		if self.kept.len() == self.k && !better(&c, &self.kept[self.k - 1]) {
			return;
		}
		let at = self.kept.partition_point(|kept| better(kept, &c));
		self.kept.insert(at, c);
		self.kept.truncate(self.k);
	}

	fn merge(&mut self, other: TopK) {
		for c in other.kept {
			self.offer(c);
		}
	}
}

/// Searches a set of DataNet indexes built with one embedding model.
pub struct Retriever {
	/// Shared, so a reload keeps the DataNets that did not change (`Knowledge::reload`).
	indexes: Vec<Arc<DataNetIndex>>,
	threads: usize,
}

/// Below this many rows × queries a search runs on the calling thread alone.
const PARALLEL_MIN_WORK: usize = 1 << 16;

impl Retriever {
	/// Refuses indexes built with different models (their vectors are not comparable) and two
	/// indexes of the same DataNet.
	pub fn new(indexes: Vec<DataNetIndex>) -> Result<Self, IndexError> {
		Self::shared(indexes.into_iter().map(Arc::new).collect())
	}

	/// [`Self::new`] over indexes shared with another retriever.
	pub fn shared(indexes: Vec<Arc<DataNetIndex>>) -> Result<Self, IndexError> {
		for pair in indexes.windows(2) {
			if pair[0].model().fingerprint != pair[1].model().fingerprint || pair[0].dim() != pair[1].dim() {
				return Err(IndexError::MixedModels { a: pair[0].dir().into(), b: pair[1].dir().into() });
			}
		}
		let mut ids: Vec<DataNetId> = indexes.iter().map(|i| i.datanet()).collect();
		ids.sort_unstable();
		if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
			return Err(IndexError::InvalidItem {
				path: indexes[0].dir().into(),
				detail: format!("DataNet {} given twice", w[0]),
			});
		}
		Ok(Self { indexes, threads: 1 })
	}

	/// Scans with up to `threads` threads when a search is large enough to gain from it.
	pub fn with_threads(mut self, threads: usize) -> Self {
		self.threads = threads.max(1);
		self
	}

	pub fn indexes(&self) -> &[Arc<DataNetIndex>] {
		&self.indexes
	}

	/// The model the indexes were built with (`None` when there are none).
	pub fn model(&self) -> Option<&EmbeddingModel> {
		self.indexes.first().map(|i| i.model())
	}

	/// Items across all indexes.
	pub fn len(&self) -> usize {
		self.indexes.iter().map(|i| i.len()).sum()
	}

	pub fn is_empty(&self) -> bool {
		self.len() == 0
	}

	/// The `k` items most similar to `query` (a unit vector) with a score of at least
	/// `min_score`, best first.
	pub fn search(&self, query: &[f32], k: usize, min_score: f32) -> Vec<Hit> {
		self.search_many(&[query], k, min_score).pop().unwrap_or_default()
	}

	/// [`Self::search`] for several queries in one pass over the indexes.
	pub fn search_many(&self, queries: &[&[f32]], k: usize, min_score: f32) -> Vec<Vec<Hit>> {
		self.search_in(None, queries, k, min_score)
	}

	/// [`Self::search_many`] restricted to the DataNets in `datanets` (all when `None`).
	pub fn search_in(
		&self,
		datanets: Option<&[DataNetId]>,
		queries: &[&[f32]],
		k: usize,
		min_score: f32,
	) -> Vec<Vec<Hit>> {
		let selected: Vec<usize> = (0..self.indexes.len())
			.filter(|&i| datanets.is_none_or(|ids| ids.contains(&self.indexes[i].datanet())))
			.collect();
		if let Some(model) = self.model() {
			for q in queries {
				assert_eq!(q.len(), model.dim, "a query vector must have the index's dimension");
			}
		}
		let rows: usize = selected.iter().map(|&i| self.indexes[i].len()).sum();
		let threads = if rows * queries.len().max(1) >= PARALLEL_MIN_WORK { self.threads } else { 1 };
		let mut tops: Vec<TopK> = if threads <= 1 {
			let mut tops: Vec<TopK> = queries.iter().map(|_| TopK::new(k, min_score)).collect();
			for &i in &selected {
				scan(&self.indexes[i], i, 0..self.indexes[i].len(), queries, &mut tops);
			}
			tops
		} else {
			// Each thread takes a contiguous share of every selected index's rows.
			let partial: Vec<Vec<TopK>> = std::thread::scope(|s| {
				let handles: Vec<_> = (0..threads)
					.map(|t| {
						let selected = &selected;
						s.spawn(move || {
							let mut tops: Vec<TopK> = queries.iter().map(|_| TopK::new(k, min_score)).collect();
							for &i in selected {
								let n = self.indexes[i].len();
								let range = n * t / threads..n * (t + 1) / threads;
								scan(&self.indexes[i], i, range, queries, &mut tops);
							}
							tops
						})
					})
					.collect();
				handles.into_iter().map(|h| h.join().expect("a search thread panicked")).collect()
			});
			let mut partial = partial.into_iter();
			let mut tops = partial.next().expect("at least one thread");
			for more in partial {
				for (top, other) in tops.iter_mut().zip(more) {
					top.merge(other);
				}
			}
			tops
		};
		tops.iter_mut()
			.map(|top| {
				std::mem::take(&mut top.kept)
					.into_iter()
					.map(|c| {
						let index = &self.indexes[c.index];
						let item = index.item(c.row);
						Hit {
							datanet: index.datanet(),
							hash: item.hash,
							chain_item: item.chain_item,
							source: item.source.clone(),
							ordinal: item.ordinal,
							score: c.score,
							text: item.text.clone(),
						}
					})
					.collect()
			})
			.collect()
	}

	/// Embeds `question` and searches for it. Refuses an embedder other than the indexes' model.
	pub fn search_text(&self, embedder: &Embedder, question: &str, k: usize, min_score: f32) -> Result<Vec<Hit>> {
		if let Some(index) = self.indexes.first() {
			if index.model().fingerprint != embedder.model().fingerprint {
				return Err(IndexError::ModelMismatch {
					path: index.dir().into(),
					index_model: index.model().name.clone(),
					index_fingerprint: index.model().fingerprint,
					model: embedder.model().name.clone(),
					fingerprint: embedder.model().fingerprint,
				}
				.into());
			}
		}
		let query = embedder.embed_one(question)?;
		Ok(self.search(&query, k, min_score))
	}
}

/// Compares rows `rows` of `index` with every query, offering each score to that query's top-k.
fn scan(index: &DataNetIndex, index_pos: usize, rows: std::ops::Range<usize>, queries: &[&[f32]], tops: &mut [TopK]) {
	let dim = index.dim();
	let matrix = index.matrix();
	if queries.len() == 1 {
		let (q, top) = (queries[0], &mut tops[0]);
		let mut floor = top.floor();
		for row in rows {
			let score = dot(&matrix[row * dim..(row + 1) * dim], q);
			if score >= floor {
				top.offer(Candidate { score, index: index_pos, row });
				floor = top.floor();
			}
		}
		return;
	}
	for row in rows {
		let v = &matrix[row * dim..(row + 1) * dim];
		for (q, top) in queries.iter().zip(tops.iter_mut()) {
			let score = dot(v, q);
			if score >= top.floor() {
				top.offer(Candidate { score, index: index_pos, row });
			}
		}
	}
}

/// Splits [`PPM`] among `scores` in proportion to them, by the same rule as a receipt's
/// retrieval entries (see [`crate::attribution::rule`]): negative scores count 0, all-zero
/// scores share equally, and the weights sum to exactly [`PPM`] (empty input gives an empty
/// result).
pub fn ppm_weights(scores: &[f32]) -> Vec<u32> {
	let mut units: Vec<u128> = scores.iter().map(|&s| score_units(s)).collect();
	if units.iter().all(|&u| u == 0) {
		units.iter_mut().for_each(|u| *u = 1);
	}
	apportion(PPM, &units)
}

/// The attribution weight of each hit, proportional to its score, in parts per million summing
/// to exactly [`PPM`] (see [`ppm_weights`]): `(DataNet, content hash, weight)`, in hit order.
pub fn attribution_weights(hits: &[Hit]) -> Vec<(DataNetId, ContentHash, u32)> {
	let scores: Vec<f32> = hits.iter().map(|h| h.score).collect();
	hits.iter().zip(ppm_weights(&scores)).map(|(h, w)| (h.datanet, h.hash, w)).collect()
}

#[cfg(test)]
mod tests {
	use super::*;
	use crate::datanets::index::{IndexWriter, ItemRecord};
	use openledger_primitives::content_hash;

	#[test]
	fn weights_are_proportional_and_sum_to_a_million() {
		assert_eq!(ppm_weights(&[0.5, 0.5]), vec![500_000, 500_000]);
		assert_eq!(ppm_weights(&[0.75, 0.25]), vec![750_000, 250_000]);
		// Thirds: 333,333 each and the one part left goes to the first.
		assert_eq!(ppm_weights(&[0.3, 0.3, 0.3]), vec![333_334, 333_333, 333_333]);
		assert_eq!(ppm_weights(&[0.9]), vec![PPM]);
		assert_eq!(ppm_weights(&[]), Vec::<u32>::new());
		// Negative and zero scores get nothing unless all are such; then equal shares.
		assert_eq!(ppm_weights(&[0.4, -0.2, 0.0]), vec![PPM, 0, 0]);
		assert_eq!(ppm_weights(&[0.0, -1.0]), vec![500_000, 500_000]);
		let mut x = 0x2545_f491u32;
		for n in 1..200usize {
			let scores: Vec<f32> = (0..n)
				.map(|_| {
					x ^= x << 13;
					x ^= x >> 17;
					x ^= x << 5;
					(x % 10_000) as f32 / 10_000.0
				})
				.collect();
			let w = ppm_weights(&scores);
			assert_eq!(w.iter().sum::<u32>(), PPM, "{scores:?}");
			let total: f64 = scores.iter().map(|&s| f64::from(s)).sum();
			for (s, w) in scores.iter().zip(&w) {
				if total > 0.0 {
					let exact = f64::from(*s) / total * 1e6;
					assert!((f64::from(*w) - exact).abs() <= 1.0 + 1e-6, "{s} -> {w} (exact {exact})");
				}
			}
			assert_eq!(w, ppm_weights(&scores), "deterministic");
		}
	}

	fn unit(v: &[f32]) -> Vec<f32> {
		let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
		v.iter().map(|x| x / n).collect()
	}

	fn index_with(root: &std::path::Path, datanet: DataNetId, vectors: &[(&str, [f32; 4])]) -> DataNetIndex {
		let model = EmbeddingModel { name: "m".into(), dim: 4, fingerprint: content_hash(b"m") };
		let mut w = IndexWriter::open(root, datanet, &model).unwrap();
		let records = vectors
			.iter()
			.enumerate()
			.map(|(i, (text, v))| ItemRecord {
				hash: content_hash(text.as_bytes()),
				source: format!("doc{i}.txt"),
				ordinal: 0,
				text: text.to_string(),
				chain_item: Some(100 + i as u32),
				embedding: unit(v),
			})
			.collect();
		w.commit(records, &[]).unwrap();
		w.snapshot()
	}

	#[test]
	fn top_k_across_datanets_with_a_minimum_score_and_stable_ties() {
		let root = tempfile::tempdir().unwrap();
		let a = index_with(root.path(), 1, &[("north", [1.0, 0.0, 0.0, 0.0]), ("east", [0.0, 1.0, 0.0, 0.0])]);
		let b = index_with(
			root.path(),
			2,
			&[("north-ish", [1.0, 0.2, 0.0, 0.0]), ("north twin", [1.0, 0.0, 0.0, 0.0]), ("down", [0.0, 0.0, 0.0, 1.0])],
		);
		let r = Retriever::new(vec![a, b]).unwrap();
		let q = [1.0, 0.0, 0.0, 0.0];
		let hits = r.search(&q, 3, 0.5);
		let texts: Vec<&str> = hits.iter().map(|h| h.text.as_str()).collect();
		// "north" and "north twin" tie at 1.0: DataNet 1 ranks first.
		assert_eq!(texts, ["north", "north twin", "north-ish"]);
		assert_eq!((hits[0].datanet, hits[1].datanet), (1, 2));
		assert!(hits[2].score < 1.0 && hits[2].score > 0.9);
		assert_eq!(r.search(&q, 10, 0.5).len(), 3, "min_score drops the orthogonal items");
		assert_eq!(r.search(&q, 10, -1.0).len(), 5);
		assert_eq!(r.search(&q, 0, -1.0).len(), 0);
		let only_b = r.search_in(Some(&[2]), &[&q], 1, 0.0);
		assert_eq!(only_b[0][0].text, "north twin");
		assert_eq!(hits[0].attribution_entry(PPM).unwrap().item, Some(100));

		// Many queries at once, serial and threaded, give the same answers as one at a time.
		let queries: Vec<Vec<f32>> = (0..5).map(|i| unit(&[1.0, i as f32, 0.5, (i % 2) as f32])).collect();
		let refs: Vec<&[f32]> = queries.iter().map(|q| q.as_slice()).collect();
		let one_by_one: Vec<Vec<Hit>> = refs.iter().map(|q| r.search(q, 2, -1.0)).collect();
		assert_eq!(r.search_many(&refs, 2, -1.0), one_by_one);
		let r = r.with_threads(3);
		let threaded = r.search_in(None, &refs, 2, -1.0);
		assert_eq!(threaded, one_by_one);
	}

	#[test]
	fn indexes_of_different_models_are_not_searched_together() {
		let root = tempfile::tempdir().unwrap();
		let a = index_with(root.path(), 1, &[("x", [1.0, 0.0, 0.0, 0.0])]);
		let other = EmbeddingModel { name: "other".into(), dim: 4, fingerprint: content_hash(b"other") };
		let mut w = IndexWriter::open(root.path(), 2, &other).unwrap();
		w.commit(
			vec![ItemRecord {
				hash: content_hash(b"y"),
				source: "y".into(),
				ordinal: 0,
				text: "y".into(),
				chain_item: None,
				embedding: vec![1.0, 0.0, 0.0, 0.0],
			}],
			&[],
		)
		.unwrap();
		let err = Retriever::new(vec![a, w.snapshot()]).err().unwrap();
		assert!(matches!(err, IndexError::MixedModels { .. }), "{err}");
	}

	#[test]
	fn parallel_scan_agrees_with_the_serial_one_on_a_large_index() {
		let root = tempfile::tempdir().unwrap();
		let model = EmbeddingModel { name: "m".into(), dim: 8, fingerprint: content_hash(b"m8") };
		let mut w = IndexWriter::open(root.path(), 1, &model).unwrap();
		let mut x = 12345u64;
		let mut rnd = || {
			x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
			((x >> 33) as f32 / (1u64 << 31) as f32) - 0.5
		};
		let records: Vec<ItemRecord> = (0..70_000)
			.map(|i| {
				let text = format!("item {i}");
				ItemRecord {
					hash: content_hash(text.as_bytes()),
					source: "s".into(),
					ordinal: i,
					text,
					chain_item: None,
					embedding: unit(&(0..8).map(|_| rnd()).collect::<Vec<_>>()),
				}
			})
			.collect();
		w.commit(records, &[]).unwrap();
		let index = w.snapshot();
		let q = unit(&(0..8).map(|_| rnd()).collect::<Vec<_>>());
		// Brute force by sorting everything.
		let mut all: Vec<(f32, usize)> = (0..index.len()).map(|i| (dot(index.embedding(i), &q), i)).collect();
		all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
		let r = Retriever::new(vec![index]).unwrap();
		let serial = r.search(&q, 10, -1.0);
		let expect: Vec<u32> = all[..10].iter().map(|&(_, i)| r.indexes()[0].item(i).ordinal).collect();
		assert_eq!(serial.iter().map(|h| h.ordinal).collect::<Vec<_>>(), expect);
		let r = r.with_threads(2);
		assert_eq!(r.search(&q, 10, -1.0), serial);
	}
}
