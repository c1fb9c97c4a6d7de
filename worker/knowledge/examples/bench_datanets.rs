//! DataNet benchmark: embedding throughput of all-MiniLM-L6-v2 (the worker's BERT encoder, CPU) and exact top-k
//! query latency over DataNet indexes of 10k and 100k items. Prints a Markdown table.
//!
//! ```text
//! cargo run --release -p openledger-worker --example bench_datanets -- [--texts N] [--sizes 10000,100000]
//! ```
//!
//! Embedding throughput is measured on `--texts` deterministic sentences of 10–40 words (the
//! same list `scripts/bench/st_embed.py` gives sentence-transformers, printed by `--print-texts`).
//! The large indexes hold synthetic items with random unit vectors: a scan's cost depends on the
//! number of rows, not on their values, and embedding 100k items first would take most of an
//! hour here. Each query is a real embedded question, timed end to end (embed + search) and
//! search alone.

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use openledger_primitives::item_hash;
use openledger_knowledge::datanets::{DataNetIndex, Embedder, IndexWriter, ItemRecord, Retriever};
use rand::{rngs::StdRng, Rng, SeedableRng};

#[derive(Parser)]
struct Args {
	/// Sentences embedded for the throughput row.
	#[arg(long, default_value_t = 512)]
	texts: usize,
	/// Texts per forward pass.
	#[arg(long, default_value_t = 32)]
	batch: usize,
	/// Index sizes for the query rows.
	#[arg(long, value_delimiter = ',', default_value = "10000,100000")]
	sizes: Vec<usize>,
	/// Queries timed per size.
	#[arg(long, default_value_t = 200)]
	queries: usize,
	/// Items retrieved per query.
	#[arg(long, default_value_t = 4)]
	k: usize,
	/// Print the throughput sentences, one per line, and exit.
	#[arg(long)]
	print_texts: bool,
	/// sentence-transformers' texts/s from `scripts/bench/st_embed.py`, for the ratio row.
	#[arg(long)]
	st_texts_per_sec: Option<f64>,
}

const WORDS: [&str; 48] = [
	"river", "contributor", "dataset", "validator", "model", "adapter", "token", "reward", "quietly", "measured",
	"the", "a", "of", "with", "under", "every", "season", "farmers", "record", "rainfall", "bridge", "engineers",
	"inspect", "cables", "after", "storms", "library", "keeps", "rare", "maps", "students", "compare", "notes",
	"before", "exams", "kitchen", "recipes", "use", "fresh", "herbs", "market", "prices", "rise", "when",
	"harvests", "fail", "and", "sometimes",
];

/// Deterministic sentences of 10–40 words.
fn texts(n: usize) -> Vec<String> {
	let mut rng = StdRng::seed_from_u64(7);
	(0..n)
		.map(|_| {
			let len = rng.random_range(10..=40);
			let mut s: Vec<&str> = (0..len).map(|_| WORDS[rng.random_range(0..WORDS.len())]).collect();
			s[0] = "Observation";
			format!("{}.", s.join(" "))
		})
		.collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
	sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
	format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// An index of `n` synthetic items with random unit vectors, written the way ingest writes.
fn synthetic_index(root: &std::path::Path, datanet: u32, n: usize, embedder: &Embedder) -> Result<DataNetIndex> {
	let mut writer = IndexWriter::open(root, datanet, embedder.model())?;
	let mut rng = StdRng::seed_from_u64(u64::from(datanet));
	let dim = embedder.dim();
	for start in (0..n).step_by(10_000) {
		let batch: Vec<ItemRecord> = (start..n.min(start + 10_000))
			.map(|i| {
				let text = format!("Synthetic item {i} of DataNet {datanet}.");
				let mut v: Vec<f32> = (0..dim).map(|_| rng.random::<f32>() - 0.5).collect();
				let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
				v.iter_mut().for_each(|x| *x /= norm);
				ItemRecord { hash: item_hash(&text), source: "synthetic".into(), ordinal: i as u32, text, chain_item: Some(i as u32), embedding: v }
			})
			.collect();
		writer.commit(batch, &[])?;
	}
	writer.compact()?;
	Ok(DataNetIndex::open(root, datanet)?)
}

fn main() -> Result<()> {
	// As the worker does: it fixes the size of the thread pool the encoder runs on.
	openledger_engine::model::pin_cpu_threads();
	let args = Args::parse();
	if args.print_texts {
		for t in texts(args.texts) {
			println!("{t}");
		}
		return Ok(());
	}
	tracing_subscriber::fmt().with_writer(std::io::stderr).init();
	let embedder = Embedder::load_default(None)?.with_batch_size(args.batch);
	let mut rows: Vec<(String, String)> = Vec::new();

	// Embedding throughput: one warm-up pass, then the median of three.
	let sentences = texts(args.texts);
	let refs: Vec<&str> = sentences.iter().map(String::as_str).collect();
	embedder.embed(&refs[..args.batch.min(refs.len())])?;
	let mut runs = Vec::new();
	for _ in 0..3 {
		let started = Instant::now();
		embedder.embed(&refs)?;
		runs.push(started.elapsed());
	}
	runs.sort();
	let tps = args.texts as f64 / runs[1].as_secs_f64();
	eprintln!("embedding: {tps:.1} texts/s");
	rows.push((format!("embedding throughput ({} texts of 10–40 words, batch {})", args.texts, args.batch), format!("{tps:.1} texts/s")));
	if let Some(st) = args.st_texts_per_sec {
		rows.push(("sentence-transformers, same texts, same machine".into(), format!("{st:.1} texts/s")));
		let ratio = tps / st;
		rows.push(("worker / sentence-transformers (goal ≥ 1.0×)".into(), format!("{ratio:.2}× {}", if ratio >= 1.0 { "met" } else { "NOT met" })));
	}

	let questions = texts(args.queries);
	let tmp = tempfile::tempdir()?;
	for (i, &size) in args.sizes.iter().enumerate() {
		eprintln!("building a synthetic index of {size} items");
		let index = synthetic_index(tmp.path(), i as u32, size, &embedder)?;
		let retriever = Retriever::new(vec![index])?.with_threads(std::thread::available_parallelism().map_or(1, |n| n.get()));
		let (mut search, mut total) = (Vec::new(), Vec::new());
		for q in &questions {
			let started = Instant::now();
			let vector = embedder.embed_one(q)?;
			let embedded = Instant::now();
			let hits = retriever.search(&vector, args.k, -1.0);
			assert_eq!(hits.len(), args.k.min(size));
			search.push(embedded.elapsed());
			total.push(started.elapsed());
		}
		search.sort();
		total.sort();
		rows.push((
			format!("query, {size} items: search only p50 / p99"),
			format!("{} / {}", ms(percentile(&search, 0.5)), ms(percentile(&search, 0.99))),
		));
		rows.push((
			format!("query, {size} items: embed + search p50 / p99"),
			format!("{} / {}", ms(percentile(&total, 0.5)), ms(percentile(&total, 0.99))),
		));
	}

	println!("| metric | value |");
	println!("|---|---|");
	for (metric, value) in rows {
		println!("| {metric} | {value} |");
	}
	Ok(())
}
