//! Grounding a chat request in DataNets: which DataNets it draws on, the items retrieved from
//! them, the prompt template that lays them out, and — once the answer is known — the attribution
//! entries its receipt will carry.
//!
//! Only items with an on-chain id are served: an item the chain has not accepted can be neither
//! shown to the model nor paid, so it is left out of retrieval and span search alike.

use std::{
	collections::{BTreeMap, BTreeSet},
	path::{Path, PathBuf},
	sync::Arc,
	time::Instant,
};

use anyhow::{Context, Result};
use openledger_primitives::{AttributionEntry, DataNetId, PPM};

use crate::{
	attribution::{combine, span_hits, AttributionPolicy, RetrievalHit, SpanIndex, TrainingShare},
	datanets::{list_datanets, DataNetIndex, Embedder, Retriever},
	templates::{ContextItem, PromptTemplate, TemplateError, TemplateStore, DEFAULT_TEMPLATE_ID},
};
use openledger_engine::tokenizer::ChatMessage;

/// Most DataNets one request may name.
pub const MAX_REQUEST_DATANETS: usize = 16;
/// Most items one request may retrieve.
pub const MAX_TOP_K: usize = 32;

/// Where the DataNets and templates are, and how retrieval and attribution behave.
#[derive(Clone, Debug)]
pub struct KnowledgeConfig {
	/// Root of the DataNet indexes (`datanet ingest --root`).
	pub datanet_root: PathBuf,
	/// Directory of `<id>.json` prompt templates; `None` serves the default template only.
	pub template_root: Option<PathBuf>,
	/// all-MiniLM-L6-v2's directory; `None` finds it in the models directory.
	pub embedder_dir: Option<PathBuf>,
	/// Items retrieved per request unless it asks for fewer.
	pub top_k: usize,
	/// Items scoring below this cosine similarity are not used.
	pub min_score: f32,
	pub policy: AttributionPolicy,
	/// Training provenance per adapter name, for a worker that serves no chain (on a chain the
	/// registry's record is used instead).
	pub provenance: BTreeMap<String, Vec<TrainingShare>>,
}

/// One provenance entry as written in a provenance file.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ProvenanceEntry {
	datanet: DataNetId,
	share_ppm: u32,
}

/// Reads `{"<adapter>": [{"datanet": 1, "share_ppm": 600000}, …], …}`; each adapter's shares
/// must sum to at most a million (as the registry requires).
pub fn read_provenance(path: &Path) -> Result<BTreeMap<String, Vec<TrainingShare>>> {
	let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
	let raw: BTreeMap<String, Vec<ProvenanceEntry>> = serde_json::from_str(&text)
		.with_context(|| format!("{}: expected {{\"adapter\": [{{\"datanet\": N, \"share_ppm\": N}}, …]}}", path.display()))?;
	raw.into_iter()
		.map(|(adapter, entries)| {
			let total: u64 = entries.iter().map(|e| u64::from(e.share_ppm)).sum();
			anyhow::ensure!(total <= u64::from(PPM), "{}: the shares of `{adapter}` sum to {total} ppm, over {PPM}", path.display());
			let shares = entries.into_iter().map(|e| TrainingShare { datanet: e.datanet, share_ppm: e.share_ppm }).collect();
			Ok((adapter, shares))
		})
		.collect()
}

impl KnowledgeConfig {
	pub fn new(datanet_root: PathBuf) -> Self {
		Self {
			datanet_root,
			template_root: None,
			embedder_dir: None,
			top_k: 4,
			min_score: 0.2,
			policy: AttributionPolicy::default(),
			provenance: BTreeMap::new(),
		}
	}
}

/// Why a request could not be grounded.
#[derive(Debug, thiserror::Error)]
pub enum KnowledgeError {
	#[error("DataNet {0} is not served by this worker")]
	UnknownDataNet(DataNetId),
	#[error("{0} DataNets named; at most {MAX_REQUEST_DATANETS}")]
	TooManyDataNets(usize),
	#[error("top_k must be between 1 and {MAX_TOP_K}, not {0}")]
	BadTopK(usize),
	#[error(transparent)]
	Template(#[from] TemplateError),
	#[error("retrieval failed: {0:#}")]
	Internal(anyhow::Error),
}

/// What a request asks of the DataNets (the OpenLedger extension fields of a chat request).
#[derive(Clone, Debug, Default)]
pub struct GroundingRequest {
	pub datanets: Vec<DataNetId>,
	/// The adapter's training provenance, whose DataNets are searched too.
	pub training: Vec<TrainingShare>,
	pub template: Option<String>,
	pub top_k: Option<usize>,
}

/// A request grounded in its DataNets: the messages to generate from and what to attribute.
#[derive(Clone, Debug)]
pub struct Grounded {
	pub messages: Vec<ChatMessage>,
	/// The DataNets searched (named and inherited), ascending.
	pub datanets: Vec<DataNetId>,
	pub retrieved: Vec<RetrievalHit>,
	pub training: Vec<TrainingShare>,
	/// The template applied (id, blake2-256 of its file).
	pub template: (String, [u8; 32]),
}

/// The served DataNets with their embedder, span indexes and templates. Shared by all requests.
pub struct Knowledge {
	config: KnowledgeConfig,
	/// Shared with the [`Knowledge::reload`]s that follow: the model is loaded once.
	embedder: Arc<Embedder>,
	retriever: Retriever,
	/// One span index per DataNet, so a request's spans are looked for in its DataNets only and
	/// anyone holding those DataNets' accepted items can re-check them.
	spans: BTreeMap<DataNetId, Arc<SpanIndex>>,
	templates: Option<Arc<TemplateStore>>,
	default_template: PromptTemplate,
}

impl Knowledge {
	/// Loads every DataNet index under the root (checking each against the embedder's model)
	/// and builds their span indexes.
	pub fn open(config: KnowledgeConfig) -> Result<Self> {
		let embedder = Arc::new(Embedder::load_default(config.embedder_dir.as_deref())?);
		let templates = config.template_root.as_deref().map(TemplateStore::open).transpose()?.map(Arc::new);
		Self::build(config, embedder, templates, None)
	}

	/// The same DataNets again, with the indexes of `changed` read anew (their items accepted
	/// or removed on chain) and everything else (the embedder, the templates, the other
	/// DataNets' indexes and span indexes) shared with `self`: one DataNet's change costs that
	/// DataNet's reload, not every DataNet's and the embedder's.
	pub fn reload(&self, changed: &BTreeSet<DataNetId>) -> Result<Self> {
		let kept = self
			.retriever
			.indexes()
			.iter()
			.filter(|index| !changed.contains(&index.datanet()))
			.map(|index| (index.datanet(), (index.clone(), self.spans[&index.datanet()].clone())))
			.collect();
		Self::build(self.config.clone(), self.embedder.clone(), self.templates.clone(), Some(kept))
	}

	/// Opens the DataNets under the root, taking the indexes in `kept` as they are.
	fn build(
		config: KnowledgeConfig,
		embedder: Arc<Embedder>,
		templates: Option<Arc<TemplateStore>>,
		mut kept: Option<BTreeMap<DataNetId, (Arc<DataNetIndex>, Arc<SpanIndex>)>>,
	) -> Result<Self> {
		let started = Instant::now();
		let ids = list_datanets(&config.datanet_root)?;
		let mut indexes = Vec::with_capacity(ids.len());
		let mut spans = BTreeMap::new();
		for (n, &id) in ids.iter().enumerate() {
			if let Some((index, span_index)) = kept.as_mut().and_then(|kept| kept.remove(&id)) {
				spans.insert(id, span_index);
				indexes.push(index);
				continue;
			}
			let index = DataNetIndex::open_for_model(&config.datanet_root, id, embedder.model())?;
			let served: Vec<_> = index.items().iter().filter_map(|i| Some((id, i.chain_item?, i.text.as_str()))).collect();
			let unregistered = index.len() - served.len();
			if unregistered > 0 {
				tracing::warn!(datanet = id, unregistered, "items without an on-chain id are not served");
			}
			let span_index = SpanIndex::build(served).with_context(|| format!("span index of DataNet {id}"))?;
			tracing::info!(
				datanet = id,
				items = index.len(),
				tokens = span_index.token_count(),
				"loaded DataNet {}/{}",
				n + 1,
				ids.len()
			);
			spans.insert(id, Arc::new(span_index));
			indexes.push(Arc::new(index));
		}
		let retriever =
			Retriever::shared(indexes)?.with_threads(std::thread::available_parallelism().map_or(1, |n| n.get()));
		tracing::info!(datanets = ids.len(), elapsed_ms = started.elapsed().as_millis() as u64, "DataNets ready");
		Ok(Self { config, embedder, retriever, spans, templates, default_template: PromptTemplate::default_template() })
	}

	/// The DataNets served, ascending.
	pub fn datanets(&self) -> impl Iterator<Item = DataNetId> + '_ {
		self.spans.keys().copied()
	}

	/// The training provenance of an adapter (empty for the base model and unknown adapters).
	pub fn provenance(&self, adapter: &str) -> &[TrainingShare] {
		self.config.provenance.get(adapter).map_or(&[], Vec::as_slice)
	}

	/// How attribution weight is split between retrieval, spans and training.
	pub fn policy(&self) -> &AttributionPolicy {
		&self.config.policy
	}

	pub fn datanet_root(&self) -> &Path {
		&self.config.datanet_root
	}

	/// Retrieves context for the conversation's last user message from the named and inherited
	/// DataNets and renders the messages through the template. Blocking (it embeds the question).
	pub fn ground(&self, messages: &[ChatMessage], request: &GroundingRequest) -> Result<Grounded, KnowledgeError> {
		if request.datanets.len() > MAX_REQUEST_DATANETS {
			return Err(KnowledgeError::TooManyDataNets(request.datanets.len()));
		}
		let top_k = request.top_k.unwrap_or(self.config.top_k);
		if top_k == 0 || top_k > MAX_TOP_K {
			return Err(KnowledgeError::BadTopK(top_k));
		}
		for &id in &request.datanets {
			if !self.spans.contains_key(&id) {
				return Err(KnowledgeError::UnknownDataNet(id));
			}
		}
		// Provenance DataNets this worker does not hold still earn their training share; they
		// just cannot be searched.
		let mut datanets: Vec<DataNetId> = request
			.datanets
			.iter()
			.copied()
			.chain(request.training.iter().map(|t| t.datanet).filter(|d| self.spans.contains_key(d)))
			.collect();
		datanets.sort_unstable();
		datanets.dedup();

		// `default` is always the built-in template. On a chain, the worker's charge refuses a
		// template whose file's hash is not registered.
		let template = match request.template.as_deref() {
			None | Some(DEFAULT_TEMPLATE_ID) => self.default_template.clone(),
			Some(id) => self.templates.as_ref().ok_or_else(|| TemplateError::NotFound(id.to_owned()))?.get(id, None)?,
		};

		let mut context = Vec::new();
		let mut retrieved = Vec::new();
		if !datanets.is_empty() {
			let question = messages.iter().rev().find(|m| m.role == "user").map(|m| m.content.as_str()).unwrap_or("");
			let query = self.embedder.embed_one(question).map_err(KnowledgeError::Internal)?;
			let hits = self
				.retriever
				.search_in(Some(&datanets), &[&query], top_k, self.config.min_score)
				.pop()
				.unwrap_or_default();
			for hit in hits {
				let Some(item) = hit.chain_item else { continue };
				retrieved.push(RetrievalHit { datanet: hit.datanet, item, score: hit.score });
				context.push(ContextItem { datanet: hit.datanet, item, text: hit.text });
			}
		}
		let rendered = template.render_conversation(messages, &context)?;
		Ok(Grounded {
			messages: rendered,
			datanets,
			retrieved,
			training: request.training.clone(),
			template: (template.id().to_owned(), template.hash()),
		})
	}

	/// The attribution entries of an answer: its retrieved items, the items of its DataNets that
	/// contain verbatim spans of it, and its adapter's training DataNets, weighted by the policy
	/// and summing to exactly a million parts (empty when there is nothing to attribute).
	pub fn attribute(&self, grounded: &Grounded, output: &str) -> Vec<AttributionEntry> {
		let spans: Vec<_> =
			grounded.datanets.iter().filter_map(|d| self.spans.get(d)).flat_map(|index| index.find_spans(output)).collect();
		combine(&grounded.retrieved, &span_hits(&spans), &grounded.training, &self.config.policy)
	}
}

#[cfg(test)]
mod tests {
	use super::*;
	use crate::datanets::{ingest_dir, IndexWriter, IngestOptions};

	/// DataNets 1 and 2 of one document each; only DataNet 1's item has an on-chain id.
	fn two_datanets(root: &Path, embedder: &Embedder) -> PathBuf {
		let index_root = root.join("index");
		for (id, text) in [(1, "Bees dance to show where the flowers are."), (2, "Sourdough needs a fed starter.")] {
			let docs = root.join(format!("docs{id}"));
			std::fs::create_dir_all(&docs).unwrap();
			std::fs::write(docs.join("doc.txt"), text).unwrap();
			ingest_dir(&docs, &index_root, id, embedder, &IngestOptions::default()).unwrap();
		}
		set_chain_items(&index_root, 1, embedder, 10);
		index_root
	}

	fn set_chain_items(index_root: &Path, datanet: DataNetId, embedder: &Embedder, first: u32) {
		let mut writer = IndexWriter::open(index_root, datanet, embedder.model()).unwrap();
		let ids: Vec<_> = writer.items().enumerate().map(|(i, r)| (r.hash, first + i as u32)).collect();
		writer.set_chain_items(&ids).unwrap();
	}

	/// A reload reads the changed DataNets' indexes anew and shares the rest, the embedder
	/// included, with the knowledge it replaces.
	#[test]
	fn a_reload_reads_only_the_changed_datanets() {
		let dir = tempfile::tempdir().unwrap();
		let embedder = Embedder::load_default(None).unwrap();
		let index_root = two_datanets(dir.path(), &embedder);
		let before = Knowledge::open(KnowledgeConfig::new(index_root.clone())).unwrap();
		let nothing_served = before.spans[&2].token_count();

		set_chain_items(&index_root, 2, &embedder, 20);
		let unchanged = before.reload(&BTreeSet::new()).unwrap();
		assert_eq!(unchanged.spans[&2].token_count(), nothing_served, "a DataNet not named is not read again");
		let after = before.reload(&BTreeSet::from([2])).unwrap();
		assert!(after.spans[&2].token_count() > nothing_served, "DataNet 2's accepted item is served");
		assert!(Arc::ptr_eq(&before.embedder, &after.embedder));
		assert!(Arc::ptr_eq(&before.spans[&1], &after.spans[&1]));
		assert!(Arc::ptr_eq(&before.retriever.indexes()[0], &after.retriever.indexes()[0]));
		assert!(!Arc::ptr_eq(&before.spans[&2], &after.spans[&2]));
	}
}
