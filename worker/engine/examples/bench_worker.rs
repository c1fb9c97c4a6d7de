//! The worker benchmark: drives the engine and the adapter cache directly (no HTTP) on the real
//! SmolLM2-135M-Instruct Q4_1 GGUF on the CPU, and prints a Markdown table `metric | value |
//! goal | met?`.
//!
//! Sections (all by default, pick with `--sections a,b`):
//! - a: single-stream greedy decode and prefill tokens/s (median of `--runs`);
//! - b: aggregate decode tokens/s of `--concurrency` requests on distinct adapters, on one
//!   adapter and on the base, against one stream;
//! - c: adapter cold-load latency (cache `acquire` of a never-loaded adapter), from the page cache
//!   and with the file's pages dropped first;
//! - d: `--zipf-adapters` adapters, Zipf traffic, `--budget` resident, closed loop of
//!   `--concurrency` clients, against the same workload on one adapter;
//! - e: constrained decoding (a JSON schema) against free decoding, one stream and
//!   `--concurrency` streams, and grammar compile times.
//!
//! ```sh
//! cargo run --release -p openledger-worker --example bench_worker -- --quick
//! scripts/bench-worker.sh   # the full run, with llama.cpp alongside
//! ```
//!
//! Adapters are generated (deterministically) under `--bench-dir`, reused when already there, and
//! removed at the end unless `--keep-adapters`.

use std::{
	path::{Path, PathBuf},
	sync::{
		atomic::{AtomicUsize, Ordering},
		Arc,
	},
	time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use candle_core::Device;
use clap::Parser;
use openledger_engine::{
	adapters::{
		bench_adapter_name, ensure_random_adapters, load_adapter, AdapterCache, AdapterLease, AdapterLimits, AdapterStore, FloatDtype,
		ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE,
	},
	base::{check_cpu, find_default_model, BaseModel},
	engine::{EngineHandle, EngineOptions, FinishReason, GenerationEvent, GenerationRequest, SamplingParams},
	grammar::{Constraint, Grammar},
	model::LlamaConfig,
	tokenizer::ChatMessage,
};
use rand::{rngs::StdRng, Rng, SeedableRng};
use tokio::sync::mpsc;

#[derive(Parser, Debug)]
#[command(about = "OpenLedger worker benchmark (engine and adapter cache, CPU)")]
struct Args {
	/// Small sizes for a smoke run (a minute or two): 3 runs of 32 tokens, 16 cold loads, 100
	/// Zipf adapters of rank 4, 48 requests, budget 16.
	#[arg(long)]
	quick: bool,
	/// Sections to run: any of a, b, c, d, e.
	#[arg(long, value_delimiter = ',', default_value = "a,b,c,d,e")]
	sections: Vec<String>,
	/// GGUF base model (default: SmolLM2 from $OPENLEDGER_MODELS).
	#[arg(long)]
	model: Option<PathBuf>,
	/// Timed single-stream runs in a (median reported) [default: 5, quick 3].
	#[arg(long)]
	runs: Option<usize>,
	/// Timed runs of each concurrent mode in b (median reported) [default: 3, quick 2].
	#[arg(long)]
	batch_runs: Option<usize>,
	/// New tokens per request in a and b [default: 128, quick 32].
	#[arg(long)]
	new_tokens: Option<usize>,
	/// Concurrent requests in b and clients in d.
	#[arg(long, default_value_t = 8)]
	concurrency: usize,
	/// LoRA rank of the adapters in b and c (all seven projections).
	#[arg(long, default_value_t = 16)]
	rank: usize,
	/// Float type of the generated adapters (b, c, d), kept in memory as stored; bf16 is what
	/// PEFT saves for adapters trained in bf16, the usual mixed precision for LLMs.
	#[arg(long, value_enum, default_value = "bf16")]
	adapter_dtype: FloatDtype,
	/// Never-loaded adapters acquired in c [default: 64, quick 16].
	#[arg(long)]
	cold_adapters: Option<usize>,
	/// Adapters in the Zipf run [default: 1000, quick 100].
	#[arg(long)]
	zipf_adapters: Option<usize>,
	/// LoRA rank of the Zipf adapters (all seven projections) [default: 8, quick 4].
	#[arg(long)]
	zipf_rank: Option<usize>,
	/// Zipf exponent.
	#[arg(long, default_value_t = 1.0)]
	zipf_s: f64,
	/// Requests in the Zipf run [default: 200, quick 48].
	#[arg(long)]
	zipf_requests: Option<usize>,
	/// New tokens per Zipf request.
	#[arg(long, default_value_t = 32)]
	zipf_tokens: usize,
	/// Most adapters resident at once in d (`AdapterLimits::max_resident`) [default: 64, quick 16].
	#[arg(long)]
	budget: Option<usize>,
	/// Seed of the Zipf request sequence.
	#[arg(long, default_value_t = 42)]
	seed: u64,
	/// Where generated adapters go.
	#[arg(long, default_value = "/var/tmp/openledger-bench")]
	bench_dir: PathBuf,
	/// Keep the generated adapters for the next run.
	#[arg(long)]
	keep_adapters: bool,
	/// llama.cpp's single-stream decode tokens/s on the same prompt, for the ratio row.
	#[arg(long)]
	llama_cpp_tps: Option<f64>,
	/// llama.cpp's prefill tokens/s on the same long prompt.
	#[arg(long)]
	llama_cpp_prefill_tps: Option<f64>,
	/// llama.cpp's single-stream decode tokens/s held to the story schema by its own grammar.
	#[arg(long)]
	llama_cpp_json_tps: Option<f64>,
	/// Print the prompt token ids (JSON) for the llama.cpp script and exit.
	#[arg(long)]
	print_prompts: bool,
}

struct Sizes {
	runs: usize,
	batch_runs: usize,
	new_tokens: usize,
	cold_adapters: usize,
	zipf_adapters: usize,
	zipf_rank: usize,
	zipf_requests: usize,
	budget: usize,
}

impl Args {
	fn sizes(&self) -> Sizes {
		let q = self.quick;
		Sizes {
			runs: self.runs.unwrap_or(if q { 3 } else { 5 }),
			batch_runs: self.batch_runs.unwrap_or(if q { 2 } else { 3 }),
			new_tokens: self.new_tokens.unwrap_or(if q { 32 } else { 128 }),
			cold_adapters: self.cold_adapters.unwrap_or(if q { 16 } else { 64 }),
			zipf_adapters: self.zipf_adapters.unwrap_or(if q { 100 } else { 1000 }),
			zipf_rank: self.zipf_rank.unwrap_or(if q { 4 } else { 8 }),
			zipf_requests: self.zipf_requests.unwrap_or(if q { 48 } else { 200 }),
			budget: self.budget.unwrap_or(if q { 16 } else { 64 }),
		}
	}
}

/// The single-stream prompt (a and llama.cpp): asks for a long story so greedy decoding does not
/// end its turn within 128 tokens.
/// Section e's schema: the story goes into one long string, where the grammar allows most
/// tokens at each step (the case where a mask costs the most), and is long enough that neither
/// engine ends before the token limit.
fn story_schema() -> serde_json::Value {
	serde_json::json!({
		"type": "object",
		"properties": {"title": {"type": "string", "maxLength": 60}, "story": {"type": "string", "minLength": 600}},
		"required": ["title", "story"],
	})
}

const STORY: &str = "Write a long story about a dragon who learns to fly, with many details.";
/// The JSON schemas of the structured-output tests, compiled in e.
const BENCH_SCHEMAS: [&str; 4] = [
	r#"{"type":"object","properties":{"name":{"type":"string","maxLength":30},"age":{"type":"integer","minimum":0,"maximum":120},"city":{"type":"string","maxLength":30}},"required":["name","age","city"],"additionalProperties":false}"#,
	r#"{"type":"object","properties":{"product":{"type":"string","maxLength":30},"price":{"type":"number","minimum":0,"maximum":10000},"currency":{"enum":["EUR","USD","GBP"]},"in_stock":{"type":"boolean"}},"required":["product","price","currency","in_stock"],"additionalProperties":false}"#,
	r#"{"type":"object","properties":{"title":{"type":"string","maxLength":40},"day":{"type":"string","pattern":"^2026-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9])$"},"guests":{"type":"array","items":{"type":"string","maxLength":15},"maxItems":3},"venue":{"type":"object","properties":{"name":{"type":"string","maxLength":20},"indoor":{"type":"boolean"}},"required":["name","indoor"],"additionalProperties":false}},"required":["title","day","guests","venue"],"additionalProperties":false}"#,
	r#"{"type":"object","properties":{"city":{"type":"string","maxLength":30},"temperature_c":{"type":"number","minimum":-60,"maximum":60},"conditions":{"enum":["sunny","cloudy","rain","snow"]}},"required":["city","temperature_c","conditions"],"additionalProperties":false}"#,
];

/// Prompts of the concurrent requests (b, d), one per request, cycled.
const STORIES: [&str; 8] = [
	"Write a long story about a dragon who learns to fly, with many details.",
	"Write a long story about a lighthouse keeper and a storm, with many details.",
	"Write a long story about a robot who wants to become a gardener, with many details.",
	"Write a long story about two friends crossing a desert, with many details.",
	"Write a long story about a cat who runs a bakery, with many details.",
	"Write a long story about a sailor lost at sea, with many details.",
	"Write a long story about a girl who finds a secret door in a library, with many details.",
	"Write a long story about a village that moves to the moon, with many details.",
];
/// The body of the long prefill prompt, repeated to about 256 tokens.
const PARAGRAPH: &str = "The history of the river valley is a story of farmers, traders and builders. \
	Over many centuries they cleared the forests, drained the marshes and built towns along the water. ";

fn chat(base: &BaseModel, text: &str) -> Result<Vec<u32>> {
	let rendered = base.codec.render_chat(&[ChatMessage::new("user", text)], true)?;
	base.codec.encode(&rendered)
}

/// A chat prompt of about `target` tokens: the paragraph repeated, then a question.
fn long_prompt(base: &BaseModel, target: usize) -> Result<Vec<u32>> {
	let mut body = String::new();
	loop {
		let tokens = chat(base, &format!("{body}Summarize the text above."))?;
		if tokens.len() >= target {
			return Ok(tokens);
		}
		body.push_str(PARAGRAPH);
	}
}

// ---------------------------------------------------------------------------------------------
// Requests and their timing.

/// When each event of one request arrived.
struct Trace {
	submitted: Instant,
	/// Arrival of each `Text` event (about one per token).
	texts: Vec<Instant>,
	done: Instant,
	completion_tokens: usize,
	finish: FinishReason,
}

impl Trace {
	fn first(&self) -> Instant {
		self.texts.first().copied().unwrap_or(self.done)
	}
	/// Decode tokens/s: tokens after the first over the time from the first to the last.
	fn decode_tps(&self) -> f64 {
		(self.completion_tokens.saturating_sub(1)) as f64 / (self.done - self.first()).as_secs_f64()
	}
}

fn request(
	prompt: Vec<u32>,
	max_tokens: usize,
	adapter: Option<AdapterLease>,
) -> (GenerationRequest, mpsc::UnboundedReceiver<GenerationEvent>) {
	constrained_request(prompt, max_tokens, adapter, None)
}

fn constrained_request(
	prompt: Vec<u32>,
	max_tokens: usize,
	adapter: Option<AdapterLease>,
	constraint: Option<Constraint>,
) -> (GenerationRequest, mpsc::UnboundedReceiver<GenerationEvent>) {
	let (events, rx) = mpsc::unbounded_channel();
	let request = GenerationRequest {
		prompt_tokens: prompt,
		max_tokens,
		sampling: SamplingParams::default(),
		stop: Vec::new(),
		adapter,
		constraint,
		choices: 1,
		logprobs: None,
		events,
		permit: None,
	};
	(request, rx)
}

async fn collect(submitted: Instant, mut rx: mpsc::UnboundedReceiver<GenerationEvent>) -> Result<Trace> {
	let mut texts = Vec::new();
	while let Some(event) = rx.recv().await {
		let now = Instant::now();
		match event {
			GenerationEvent::Text { .. } => texts.push(now),
			GenerationEvent::Done { finish_reason, usage, .. } =>
				return Ok(Trace {
					submitted,
					texts,
					done: now,
					completion_tokens: usage.completion_tokens,
					finish: finish_reason,
				}),
			GenerationEvent::Failed(e) => bail!("generation failed: {e}"),
		}
	}
	bail!("the engine dropped a request without finishing it")
}

async fn generate(engine: &EngineHandle, prompt: Vec<u32>, max_tokens: usize, adapter: Option<AdapterLease>) -> Result<Trace> {
	let (req, rx) = request(prompt, max_tokens, adapter);
	let submitted = Instant::now();
	engine.submit(req)?;
	collect(submitted, rx).await
}

/// Submits all requests back to back (so the engine admits them into one step) and waits for all.
async fn generate_together(
	engine: &EngineHandle,
	jobs: Vec<(Vec<u32>, Option<AdapterLease>)>,
	max_tokens: usize,
) -> Result<Vec<Trace>> {
	let mut pending = Vec::with_capacity(jobs.len());
	for (prompt, adapter) in jobs {
		let (req, rx) = request(prompt, max_tokens, adapter);
		let submitted = Instant::now();
		engine.submit(req)?;
		pending.push(tokio::spawn(collect(submitted, rx)));
	}
	let mut traces = Vec::with_capacity(pending.len());
	for p in pending {
		traces.push(p.await??);
	}
	Ok(traces)
}

/// Aggregate decode tokens/s while every request was decoding: from the last first token to the
/// first finish, tokens (text events) of all requests in that window over its length.
fn aggregate_decode_tps(traces: &[Trace]) -> f64 {
	let t0 = traces.iter().map(Trace::first).max().expect("some traces");
	let t1 = traces.iter().map(|t| t.done).min().expect("some traces");
	let in_window: usize = traces.iter().map(|t| t.texts.iter().filter(|&&e| e > t0 && e <= t1).count()).sum();
	// The finishing token's text comes with `Done`, not as its own event: count it.
	let finishing = traces.iter().filter(|t| t.done == t1).count();
	(in_window + finishing) as f64 / (t1 - t0).as_secs_f64()
}

// ---------------------------------------------------------------------------------------------
// Statistics and the table.

fn median(values: &[f64]) -> f64 {
	percentile(values, 50.0)
}

/// Nearest-rank percentile.
fn percentile(values: &[f64], p: f64) -> f64 {
	let mut v = values.to_vec();
	v.sort_by(f64::total_cmp);
	if v.is_empty() {
		return f64::NAN;
	}
	let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
	v[rank.min(v.len()) - 1]
}

fn spread(values: &[f64]) -> String {
	let mut v = values.to_vec();
	v.sort_by(f64::total_cmp);
	format!("{:.1}–{:.1}", v[0], v[v.len() - 1])
}

struct Row {
	metric: String,
	value: String,
	goal: String,
	met: Option<bool>,
}

#[derive(Default)]
struct Table {
	rows: Vec<Row>,
}

impl Table {
	fn info(&mut self, metric: impl Into<String>, value: impl Into<String>) {
		let row = Row { metric: metric.into(), value: value.into(), goal: "—".into(), met: None };
		eprintln!("  {}: {}", row.metric, row.value);
		self.rows.push(row);
	}
	fn goal(&mut self, metric: impl Into<String>, value: impl Into<String>, goal: impl Into<String>, met: bool) {
		let row = Row { metric: metric.into(), value: value.into(), goal: goal.into(), met: Some(met) };
		eprintln!("  {}: {} (goal {}: {})", row.metric, row.value, row.goal, if met { "met" } else { "NOT met" });
		self.rows.push(row);
	}
	fn print(&self) {
		println!("| metric | value | goal | met? |");
		println!("|---|---:|---|---|");
		for r in &self.rows {
			let met = match r.met {
				Some(true) => "yes",
				Some(false) => "**no**",
				None => "",
			};
			println!("| {} | {} | {} | {} |", r.metric, r.value, r.goal, met);
		}
	}
}

// ---------------------------------------------------------------------------------------------
// Adapters on disk.

async fn open_cache(dir: &Path, config: &LlamaConfig, limits: AdapterLimits) -> Result<AdapterCache> {
	let started = Instant::now();
	let cache = AdapterCache::new(AdapterStore::open(dir)?, config.clone(), limits, Device::Cpu);
	let names = cache.scan().await?;
	eprintln!("  registered {} adapters in {:.1} s", names.len(), started.elapsed().as_secs_f64());
	Ok(cache)
}

/// Drops the page-cache pages of both adapter files (`dd iflag=nocache` is posix_fadvise
/// DONTNEED), so the next read comes from the disk.
fn drop_page_cache(dir: &Path) -> Result<()> {
	for file in [ADAPTER_WEIGHTS_FILE, ADAPTER_CONFIG_FILE] {
		let status = std::process::Command::new("dd")
			.arg(format!("if={}", dir.join(file).display()))
			.args(["iflag=nocache", "count=0", "status=none"])
			.status()
			.context("running dd")?;
		ensure!(status.success(), "dd iflag=nocache failed on {}", dir.join(file).display());
	}
	Ok(())
}

fn mib(bytes: u64) -> String {
	format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

// ---------------------------------------------------------------------------------------------

struct Bench {
	args: Args,
	model_path: PathBuf,
	sizes: Sizes,
	base: BaseModel,
	engine: EngineHandle,
	table: Table,
	/// Single-stream decode tokens/s (a), for b's comparison.
	single_tps: Option<f64>,
}

impl Bench {
	fn section(title: &str) {
		eprintln!("\n== {title}");
	}

	fn r16_dir(&self) -> PathBuf {
		self.args.bench_dir.join(format!("r{}-all-{:?}", self.args.rank, self.args.adapter_dtype))
	}

	/// a: single stream, greedy, `new_tokens` new tokens; prefill of a ~256-token prompt.
	async fn single_stream(&mut self) -> Result<()> {
		Self::section("a. single stream");
		let (runs, new_tokens) = (self.sizes.runs, self.sizes.new_tokens);
		let prompt = chat(&self.base, STORY)?;
		// Warm-up: first-touch of weights and buffers.
		generate(&self.engine, prompt.clone(), 16, None).await?;
		let mut decode = Vec::new();
		let mut short_prefill = Vec::new();
		for _ in 0..runs {
			let t = generate(&self.engine, prompt.clone(), new_tokens, None).await?;
			if t.completion_tokens != new_tokens {
				eprintln!("  warning: stopped after {} tokens ({:?})", t.completion_tokens, t.finish);
			}
			decode.push(t.decode_tps());
			short_prefill.push(prompt.len() as f64 / (t.first() - t.submitted).as_secs_f64());
		}
		let long = long_prompt(&self.base, 256)?;
		let mut prefill = Vec::new();
		for _ in 0..runs {
			let t = generate(&self.engine, long.clone(), 1, None).await?;
			prefill.push(long.len() as f64 / (t.done - t.submitted).as_secs_f64());
		}
		let tps = median(&decode);
		self.single_tps = Some(tps);
		self.table.info(
			format!("a. single-stream greedy decode, {new_tokens} new tokens (median of {runs}; range)"),
			format!("{tps:.1} tok/s ({})", spread(&decode)),
		);
		if let Some(llama) = self.args.llama_cpp_tps {
			let ratio = tps / llama;
			self.table.goal(
				"a. … vs llama.cpp (llama-cpp-python 0.3.36, 2 threads, same prompt)",
				format!("{ratio:.2}× ({tps:.1} / {llama:.1} tok/s)"),
				"≥ 1.0×",
				ratio >= 1.0,
			);
		}
		self.table.info(
			format!("a. prefill, {}-token prompt (median of {runs})", long.len()),
			format!("{:.0} tok/s", median(&prefill)),
		);
		if let Some(llama) = self.args.llama_cpp_prefill_tps {
			self.table.info(
				"a. … llama.cpp prefill, same prompt",
				format!("{llama:.0} tok/s ({:.2}×)", median(&prefill) / llama),
			);
		}
		self.table.info(
			format!("a. prefill, {}-token story prompt (time to first token)", prompt.len()),
			format!("{:.0} tok/s ({:.0} ms)", median(&short_prefill), 1e3 * prompt.len() as f64 / median(&short_prefill)),
		);
		self.memory()?;
		// The long prompt again on an engine with the prefix cache (the default): all its
		// whole blocks but the last token's are reused.
		let cached = EngineHandle::spawn(self.base.model.clone(), self.base.codec.clone(), EngineOptions::default());
		generate(&cached, long.clone(), 1, None).await?;
		let mut again = Vec::new();
		for _ in 0..runs {
			let t = generate(&cached, long.clone(), 1, None).await?;
			again.push((t.done - t.submitted).as_secs_f64());
		}
		self.table.info(
			format!("a. the {}-token prompt asked again, prefix cache on: time to its one token (median of {runs})", long.len()),
			format!("{:.0} ms (whole: {:.0} ms)", 1e3 * median(&again), 1e3 * long.len() as f64 / median(&prefill)),
		);
		Ok(())
	}

	/// The process's peak resident set after loading the model and running section a on one
	/// engine, against the GGUF file, the KV cache that engine allocated, and 10 %.
	fn memory(&mut self) -> Result<()> {
		let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
		let kib = |field: &str| -> Result<u64> {
			let line = status.lines().find(|l| l.starts_with(field)).with_context(|| format!("no {field} in /proc/self/status"))?;
			Ok(line.split_whitespace().nth(1).context("a number")?.parse::<u64>()? << 10)
		};
		let (peak, now) = (kib("VmHWM:")?, kib("VmRSS:")?);
		let file = std::fs::metadata(&self.model_path)?.len();
		let kv = self.engine.stats().kv_cache_bytes;
		let bound = (file + kv) as f64 * 1.1;
		self.table.goal(
			"a. peak resident set after loading and section a (VmHWM; now VmRSS)",
			format!("{} (now {}); file {} + KV cache {} + 10 % = {}", mib(peak), mib(now), mib(file), mib(kv), mib(bound as u64)),
			"≤ file + KV cache + 10 %",
			peak as f64 <= bound,
		);
		Ok(())
	}

	/// b: `concurrency` requests at once on distinct adapters, one adapter, and the base.
	async fn concurrent(&mut self) -> Result<()> {
		Self::section("b. concurrent requests");
		let (runs, new_tokens, n, rank) =
			(self.sizes.batch_runs, self.sizes.new_tokens, self.args.concurrency, self.args.rank);
		let dir = self.r16_dir();
		let file_bytes = ensure_random_adapters(&dir, &self.base.config, self.args.adapter_dtype, rank, n, 1000)?;
		let limits = AdapterLimits { max_resident: n + 1, max_resident_bytes: 8 << 30, ..Default::default() };
		let cache = open_cache(&dir, &self.base.config, limits).await?;
		let mut leases = Vec::with_capacity(n);
		for i in 0..n {
			leases.push(cache.acquire(&bench_adapter_name(i)).await?);
		}
		let prompts: Vec<Vec<u32>> = (0..n).map(|i| chat(&self.base, STORIES[i % STORIES.len()])).collect::<Result<_>>()?;
		// One stream with an adapter: the adapter's own cost per token.
		let story = chat(&self.base, STORY)?;
		generate(&self.engine, story.clone(), 16, Some(leases[0].clone())).await?;
		let mut single_adapter = Vec::new();
		for _ in 0..self.sizes.runs {
			single_adapter.push(generate(&self.engine, story.clone(), new_tokens, Some(leases[0].clone())).await?.decode_tps());
		}
		self.table.info(
			format!("b. single stream with one adapter (rank {rank}, all 7 projections), decode (median of {})", self.sizes.runs),
			format!("{:.1} tok/s ({})", median(&single_adapter), spread(&single_adapter)),
		);
		let modes: [(&str, Box<dyn Fn(usize) -> Option<AdapterLease>>); 3] = [
			("distinct adapters", Box::new(|i| Some(leases[i].clone()))),
			("one adapter", Box::new(|_| Some(leases[0].clone()))),
			("base, no adapter", Box::new(|_| None)),
		];
		let mut results = Vec::new();
		for (label, adapter_of) in &modes {
			let jobs = || (0..n).map(|i| (prompts[i].clone(), adapter_of(i))).collect::<Vec<_>>();
			generate_together(&self.engine, jobs(), 8).await?; // warm-up
			let mut tps = Vec::new();
			for _ in 0..runs {
				let steps = self.engine.stats().steps_total;
				let traces = generate_together(&self.engine, jobs(), new_tokens).await?;
				let steps = self.engine.stats().steps_total - steps;
				let short = traces.iter().filter(|t| t.completion_tokens < new_tokens).count();
				if short > 0 || steps as usize > new_tokens + 1 {
					eprintln!("  note ({label}): {short} requests ended early; {steps} engine steps for {new_tokens} tokens");
				}
				tps.push(aggregate_decode_tps(&traces));
			}
			eprintln!("  {label}: {:.1} tok/s (runs {})", median(&tps), spread(&tps));
			results.push((label, median(&tps), tps));
		}
		for (label, tps, all) in &results {
			self.table.info(
				format!("b. {n} concurrent, {label}: aggregate decode (median of {runs}; range)"),
				format!("{tps:.1} tok/s ({})", spread(all)),
			);
		}
		let (distinct, one, base) = (results[0].1, results[1].1, results[2].1);
		let ratio = distinct / one;
		self.table.goal(
			format!("b. {n} distinct / {n} on one adapter (rank {rank}, q,k,v,o,gate,up,down)"),
			format!("{ratio:.2}×"),
			"≥ 0.9×",
			ratio >= 0.9,
		);
		self.table.info(format!("b. {n} on one adapter / {n} on the base"), format!("{:.2}×", one / base));
		if let Some(single) = self.single_tps {
			self.table.info(format!("b. {n} on the base / one stream (batching gain)"), format!("{:.2}×", base / single));
			self.table.info(format!("b. {n} distinct adapters / one stream on the base"), format!("{:.2}×", distinct / single));
		}
		self.table.info(format!("b. adapter file (rank {rank}, all 7 projections, {:?})", self.args.adapter_dtype), mib(file_bytes));
		Ok(())
	}

	/// e: a JSON schema's grammar against free decoding on the same prompts, one stream and
	/// `concurrency` at once; and how long the schemas of the tests take to compile.
	async fn constrained(&mut self) -> Result<()> {
		Self::section("e. constrained decoding");
		let (runs, new_tokens, n) = (self.sizes.runs, self.sizes.new_tokens, self.args.concurrency);
		let started = Instant::now();
		let grammars = self.engine.grammars().map_err(anyhow::Error::msg)?;
		self.table.info("e. grammar compiler for the vocabulary (once per model)", format!("{:.0} ms", started.elapsed().as_secs_f64() * 1e3));
		let mut compile_ms = Vec::new();
		for schema in BENCH_SCHEMAS {
			let grammar = Grammar::JsonSchema(serde_json::from_str(schema)?);
			for _ in 0..runs {
				let t = Instant::now();
				grammars.compile(&grammar)?;
				compile_ms.push(t.elapsed().as_secs_f64() * 1e3);
			}
		}
		self.table.info(
			format!("e. grammar compile, the {} test schemas × {runs} (p50, max)", BENCH_SCHEMAS.len()),
			format!("{:.2} ms, {:.2} ms", median(&compile_ms), percentile(&compile_ms, 100.0)),
		);
		let story = Grammar::JsonSchema(story_schema());
		let prompt = chat(&self.base, STORY)?;
		let constraint = || grammars.compile(&story).map(Some);
		let one = |constraint: Option<Constraint>| {
			let (req, rx) = constrained_request(prompt.clone(), new_tokens, None, constraint);
			let submitted = Instant::now();
			let engine = self.engine.clone();
			async move {
				engine.submit(req)?;
				collect(submitted, rx).await
			}
		};
		one(constraint()?).await?; // warm-up
		let (mut free, mut held) = (Vec::new(), Vec::new());
		for _ in 0..runs {
			free.push(one(None).await?.decode_tps());
			held.push(one(constraint()?).await?.decode_tps());
		}
		let ratio = median(&held) / median(&free);
		self.table.info(format!("e. single stream, free decode, {new_tokens} tokens (median of {runs})"), format!("{:.1} tok/s", median(&free)));
		self.table.goal(
			"e. single stream, JSON-schema constrained / free",
			format!("{ratio:.2}× ({:.1} tok/s)", median(&held)),
			"≥ 0.9×",
			ratio >= 0.9,
		);
		if let Some(llama) = self.args.llama_cpp_json_tps {
			let ratio = median(&held) / llama;
			self.table.goal(
				"e. … vs llama.cpp's JSON-schema grammar, same schema and prompt, single stream",
				format!("{ratio:.2}× ({:.1} / {llama:.1} tok/s)", median(&held)),
				"≥ 1.0×",
				ratio >= 1.0,
			);
		}
		let prompts: Vec<Vec<u32>> = (0..n).map(|i| chat(&self.base, STORIES[i % STORIES.len()])).collect::<Result<_>>()?;
		let together = |constrain: bool| {
			let mut pending = Vec::with_capacity(n);
			for prompt in &prompts {
				let constraint = if constrain { constraint() } else { Ok(None) };
				pending.push(constraint.map(|c| constrained_request(prompt.clone(), new_tokens, None, c)));
			}
			let engine = self.engine.clone();
			async move {
				let mut waiting = Vec::with_capacity(n);
				for p in pending {
					let (req, rx) = p?;
					let submitted = Instant::now();
					engine.submit(req)?;
					waiting.push(tokio::spawn(collect(submitted, rx)));
				}
				let mut traces = Vec::with_capacity(n);
				for w in waiting {
					traces.push(w.await??);
				}
				anyhow::Ok(aggregate_decode_tps(&traces))
			}
		};
		let (mut free, mut held) = (Vec::new(), Vec::new());
		for _ in 0..self.sizes.batch_runs {
			free.push(together(false).await?);
			held.push(together(true).await?);
		}
		let ratio = median(&held) / median(&free);
		self.table.info(format!("e. {n} concurrent, free decode: aggregate (median of {})", self.sizes.batch_runs), format!("{:.1} tok/s", median(&free)));
		self.table.goal(
			format!("e. {n} concurrent, JSON-schema constrained / free"),
			format!("{ratio:.2}× ({:.1} tok/s)", median(&held)),
			"≥ 0.9×",
			ratio >= 0.9,
		);
		Ok(())
	}

	/// c: cold loads through the cache: page cache warm, then with the file's pages dropped.
	async fn cold_load(&mut self) -> Result<()> {
		Self::section("c. adapter cold load");
		let (count, rank) = (self.sizes.cold_adapters, self.args.rank);
		let dir = self.r16_dir();
		let file_bytes = ensure_random_adapters(&dir, &self.base.config, self.args.adapter_dtype, rank, count.max(self.args.concurrency), 1000)?;
		let limits = AdapterLimits { max_resident: count + 1, max_resident_bytes: 16 << 30, ..Default::default() };
		let mut rows = Vec::new();
		for disk_cold in [false, true] {
			let cache = open_cache(&dir, &self.base.config, limits.clone()).await?;
			let mut ms = Vec::with_capacity(count);
			for i in 0..count {
				let name = bench_adapter_name(i);
				if disk_cold {
					drop_page_cache(&dir.join(&name))?;
				}
				let started = Instant::now();
				let lease = cache.acquire(&name).await?;
				ms.push(started.elapsed().as_secs_f64() * 1e3);
				drop(lease);
			}
			let stats = cache.stats();
			ensure!(stats.misses as usize == count && stats.loads as usize == count, "every acquire should load: {stats:?}");
			let label = if disk_cold { "pages dropped first (disk)" } else { "file in the page cache" };
			eprintln!("  {label}: p50 {:.1} ms, p99 {:.1} ms", percentile(&ms, 50.0), percentile(&ms, 99.0));
			rows.push((label, ms));
		}
		for (label, ms) in &rows {
			let (p50, p99) = (percentile(ms, 50.0), percentile(ms, 99.0));
			self.table.goal(
				format!("c. cold load p50 / p99, rank {rank} all 7 projections, {count} adapters, {label}"),
				format!("{p50:.1} / {p99:.1} ms"),
				"p50 ≤ 10 ms",
				p50 <= 10.0,
			);
		}
		self.table.info(format!("c. adapter file size (rank {rank}, all 7 projections, {:?})", self.args.adapter_dtype), mib(file_bytes));

		// Where the time of one load goes (page cache warm), median over a few adapters.
		let (mut read, mut hash, mut load) = (Vec::new(), Vec::new(), Vec::new());
		let limits = AdapterLimits { max_resident_bytes: 16 << 30, ..Default::default() };
		for i in 0..count.min(16) {
			let adir = dir.join(bench_adapter_name(i));
			let started = Instant::now();
			let bytes = std::fs::read(adir.join(ADAPTER_WEIGHTS_FILE))?;
			read.push(started.elapsed().as_secs_f64() * 1e3);
			let started = Instant::now();
			std::hint::black_box(openledger_primitives::content_hash(&bytes));
			hash.push(started.elapsed().as_secs_f64() * 1e3);
			let started = Instant::now();
			std::hint::black_box(load_adapter(&adir, &self.base.config, &limits, &Device::Cpu)?);
			load.push(started.elapsed().as_secs_f64() * 1e3);
		}
		self.table.info(
			"c. one load's parts (median): read file / blake2-256 of it / whole `load_adapter`",
			format!("{:.1} / {:.1} / {:.1} ms", median(&read), median(&hash), median(&load)),
		);
		Ok(())
	}

	/// d: many adapters, Zipf traffic, a resident budget, a closed loop of clients; then the same
	/// workload on one adapter.
	async fn zipf(&mut self) -> Result<()> {
		Self::section("d. Zipf traffic over many adapters");
		let s = &self.sizes;
		let (count, rank, requests, budget, tokens, clients) =
			(s.zipf_adapters, s.zipf_rank, s.zipf_requests, s.budget, self.args.zipf_tokens, self.args.concurrency);
		let dir = self.args.bench_dir.join(format!("zipf-r{rank}-all-{:?}", self.args.adapter_dtype));
		let file_bytes = ensure_random_adapters(&dir, &self.base.config, self.args.adapter_dtype, rank, count, 100_000)?;
		let limits = AdapterLimits { max_resident: budget, ..Default::default() };
		ensure!(
			(budget as u64) * file_bytes <= limits.max_resident_bytes as u64,
			"{budget} adapters of {} exceed the cache's byte budget",
			mib(file_bytes)
		);

		// The request sequence: Zipf(s) over adapter ranks, seeded.
		let weights: Vec<f64> = (1..=count).map(|k| 1.0 / (k as f64).powf(self.args.zipf_s)).collect();
		let total: f64 = weights.iter().sum();
		let cdf: Vec<f64> = weights.iter().scan(0.0, |acc, w| {
			*acc += w / total;
			Some(*acc)
		}).collect();
		let mut rng = StdRng::seed_from_u64(self.args.seed);
		let sequence: Vec<usize> = (0..requests)
			.map(|_| {
				let u: f64 = rng.random();
				cdf.partition_point(|&c| c < u).min(count - 1)
			})
			.collect();
		let distinct = {
			let mut v = sequence.clone();
			v.sort_unstable();
			v.dedup();
			v.len()
		};
		let prompts: Vec<Vec<u32>> = STORIES.iter().map(|p| chat(&self.base, p)).collect::<Result<_>>()?;

		let mut results = Vec::new();
		for one_adapter in [false, true] {
			let cache = open_cache(&dir, &self.base.config, limits.clone()).await?;
			let seq: Vec<usize> = if one_adapter { vec![0; requests] } else { sequence.clone() };
			let run = ClosedLoop { engine: &self.engine, cache: &cache, prompts: &prompts, sequence: &seq, tokens };
			let outcome = run.run(clients).await?;
			let stats = cache.stats();
			let label = if one_adapter { "one adapter" } else { "Zipf" };
			eprintln!(
				"  {label}: {:.1} tok/s ({} tokens in {:.1} s), hits {} misses {} loads {} evictions {}",
				outcome.tokens as f64 / outcome.wall.as_secs_f64(),
				outcome.tokens,
				outcome.wall.as_secs_f64(),
				stats.hits,
				stats.misses,
				stats.loads,
				stats.evictions
			);
			results.push((outcome, stats));
		}
		let (zipf, zipf_stats) = &results[0];
		let (one, _) = &results[1];
		let tps = |o: &Outcome| o.tokens as f64 / o.wall.as_secs_f64();
		let ratio = tps(zipf) / tps(one);
		let workload = format!(
			"{count} adapters (rank {rank}, all 7 projections, {}), Zipf s={}, {budget} resident, {clients} clients, {requests} requests × {tokens} tokens",
			mib(file_bytes),
			self.args.zipf_s
		);
		self.table.info(format!("d. workload: {workload}"), format!("{distinct} distinct adapters requested"));
		self.table.info("d. Zipf: aggregate throughput (completion tokens / wall time)", format!("{:.1} tok/s", tps(zipf)));
		self.table.info("d. same workload on one adapter", format!("{:.1} tok/s", tps(one)));
		self.table.goal("d. Zipf / one adapter", format!("{ratio:.2}×"), "≥ 0.8×", ratio >= 0.8);
		let lookups = zipf_stats.hits + zipf_stats.misses;
		self.table.info(
			"d. cache hit rate (CacheStats hits / acquires)",
			format!(
				"{:.1} % ({} hits, {} misses, {} loads, {} evictions)",
				100.0 * zipf_stats.hits as f64 / lookups.max(1) as f64,
				zipf_stats.hits,
				zipf_stats.misses,
				zipf_stats.loads,
				zipf_stats.evictions
			),
		);
		self.table.info(
			"d. acquire latency on a miss p50 / p99 (load under decode load)",
			format!("{:.1} / {:.1} ms", percentile(&zipf.miss_ms, 50.0), percentile(&zipf.miss_ms, 99.0)),
		);
		self.table.info(
			"d. request latency p50 / p99, Zipf vs one adapter",
			format!(
				"{:.2} / {:.2} s vs {:.2} / {:.2} s",
				percentile(&zipf.latency_s, 50.0),
				percentile(&zipf.latency_s, 99.0),
				percentile(&one.latency_s, 50.0),
				percentile(&one.latency_s, 99.0)
			),
		);
		if !self.args.keep_adapters {
			std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
			eprintln!("  removed {}", dir.display());
		}
		Ok(())
	}
}

struct Outcome {
	tokens: usize,
	wall: Duration,
	/// `acquire` time of the requests whose adapter was not resident.
	miss_ms: Vec<f64>,
	/// Submit-to-done time of each request, including its `acquire`.
	latency_s: Vec<f64>,
}

struct ClosedLoop<'a> {
	engine: &'a EngineHandle,
	cache: &'a AdapterCache,
	prompts: &'a [Vec<u32>],
	sequence: &'a [usize],
	tokens: usize,
}

impl ClosedLoop<'_> {
	/// `clients` tasks, each taking the next request of the sequence as soon as its last is done.
	async fn run(&self, clients: usize) -> Result<Outcome> {
		let next = Arc::new(AtomicUsize::new(0));
		let started = Instant::now();
		let mut tasks = Vec::new();
		for _ in 0..clients {
			let next = next.clone();
			let (engine, cache) = (self.engine.clone(), self.cache.clone());
			let (prompts, sequence, tokens) = (self.prompts.to_vec(), self.sequence.to_vec(), self.tokens);
			tasks.push(tokio::spawn(async move {
				let (mut generated, mut miss_ms, mut latency_s) = (0, Vec::new(), Vec::new());
				loop {
					let j = next.fetch_add(1, Ordering::Relaxed);
					let Some(&adapter) = sequence.get(j) else { break };
					let begun = Instant::now();
					let misses = cache.stats().misses;
					let lease = cache.acquire(&bench_adapter_name(adapter)).await?;
					// Another client's miss may land in between; this is only for the latency list.
					if cache.stats().misses > misses {
						miss_ms.push(begun.elapsed().as_secs_f64() * 1e3);
					}
					let trace = generate(&engine, prompts[j % prompts.len()].clone(), tokens, Some(lease)).await?;
					generated += trace.completion_tokens;
					latency_s.push(begun.elapsed().as_secs_f64());
				}
				anyhow::Ok((generated, miss_ms, latency_s))
			}));
		}
		let mut outcome = Outcome { tokens: 0, wall: Duration::ZERO, miss_ms: Vec::new(), latency_s: Vec::new() };
		for task in tasks {
			let (generated, miss_ms, latency_s) = task.await??;
			outcome.tokens += generated;
			outcome.miss_ms.extend(miss_ms);
			outcome.latency_s.extend(latency_s);
		}
		outcome.wall = started.elapsed();
		Ok(outcome)
	}
}

fn machine() -> String {
	let cpu = std::fs::read_to_string("/proc/cpuinfo")
		.ok()
		.and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
		.unwrap_or_else(|| "unknown CPU".into());
	let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
	format!("{cpu}, {cores} cores")
}

fn main() -> Result<()> {
	openledger_engine::model::pin_cpu_threads();
	tokio::runtime::Runtime::new()?.block_on(run())
}

async fn run() -> Result<()> {
	tracing_subscriber::fmt()
		.with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
		.with_writer(std::io::stderr)
		.init();
	let args = Args::parse();
	check_cpu()?;
	let path = match &args.model {
		Some(p) => p.clone(),
		None => find_default_model()?,
	};
	let base = BaseModel::load(&path, None, &Device::Cpu)?;
	if args.print_prompts {
		let prompts = serde_json::json!({
			"decode": chat(&base, STORY)?,
			"prefill": long_prompt(&base, 256)?,
			"story_schema": story_schema(),
		});
		println!("{prompts}");
		return Ok(());
	}
	for s in &args.sections {
		ensure!(["a", "b", "c", "d", "e"].contains(&s.as_str()), "unknown section `{s}` (use a, b, c, d, e)");
	}
	let sizes = args.sizes();
	eprintln!("machine: {}; model {}", machine(), path.display());
	// Every prompt computed whole, so repeated prompts measure the kernels, not the prefix cache
	// (section a measures the cache on an engine of its own).
	let engine = EngineHandle::spawn(base.model.clone(), base.codec.clone(), EngineOptions { prefix_cache: false, ..EngineOptions::default() });
	let mut bench = Bench { args, model_path: path.clone(), sizes, base, engine, table: Table::default(), single_tps: None };
	let started = Instant::now();
	let run = |s: &str| bench.args.sections.iter().any(|x| x == s);
	let (a, b, c, d, e) = (run("a"), run("b"), run("c"), run("d"), run("e"));
	if a {
		bench.single_stream().await?;
	}
	if b {
		bench.concurrent().await?;
	}
	if c {
		bench.cold_load().await?;
	}
	if d {
		bench.zipf().await?;
	}
	if e {
		bench.constrained().await?;
	}
	if !bench.args.keep_adapters {
		let dir = bench.r16_dir();
		if dir.exists() {
			std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
			eprintln!("removed {}", dir.display());
		}
	}
	eprintln!("\nbenchmark took {:.0} s\n", started.elapsed().as_secs_f64());
	let model = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
	println!("Machine: {}. Model: {model}, CPU, greedy.\n", machine());
	bench.table.print();
	bench.engine.shutdown();
	Ok(())
}
