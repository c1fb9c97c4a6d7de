//! `openledger-worker key|chain|voucher|outbox …`: the operator's and the payer's commands.
//!
//! Secrets never go on the command line (it is visible to every user of the machine): keys come
//! from a file (`--key-file`, mode 600) or an environment variable holding a secret URI.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use openledger_primitives::{BaseModelId, ContentHash, DataNetId};
use openledger_tasks::blocking;
use polkadot_sdk::sp_core::crypto::Ss58Codec;

use openledger_knowledge::datanets::index::{list_datanets, DataNetIndex, IndexWriter};
use openledger_ledger::{
	chain::{runtime, ChainClient},
	encode_voucher,
	keys::{hex_hash, parse_account, Sr25519Key},
	outbox::Outbox,
	sign_voucher,
	submitter::submit_once,
	Balance,
};

/// OPEN has 18 decimals.
pub const OPEN: Balance = 1_000_000_000_000_000_000;

/// Where a key comes from: a file, or an environment variable holding a secret URI.
#[derive(Args, Clone, Debug)]
pub struct KeySource {
	/// File holding the key's secret URI (mode 600).
	#[arg(long = "key-file")]
	pub file: Option<PathBuf>,
	/// Environment variable holding the key's secret URI (e.g. `//Alice` on a dev chain);
	/// default `OPENLEDGER_ACCOUNT_KEY` for `chain` commands (the worker's account, as `serve`
	/// reads it), `OPENLEDGER_KEY` otherwise.
	#[arg(long = "key-env")]
	pub env: Option<String>,
}

impl KeySource {
	/// The key, from the file, the named variable, or `default_env`.
	pub fn load(&self, default_env: &str) -> Result<Sr25519Key> {
		load_key(self.file.as_ref(), self.env.as_deref().unwrap_or(default_env))
	}
}

/// The worker's account key, as `serve` and the `chain` commands read it.
pub const ACCOUNT_ENV: &str = "OPENLEDGER_ACCOUNT_KEY";
/// The worker's session key.
pub const SESSION_ENV: &str = "OPENLEDGER_SESSION_KEY";
/// Any other key: a payer's, a submitter's.
pub const KEY_ENV: &str = "OPENLEDGER_KEY";

/// A key from `file` if given, else from the environment variable `env`.
pub fn load_key(file: Option<&PathBuf>, env: &str) -> Result<Sr25519Key> {
	if let Some(path) = file {
		return Ok(Sr25519Key::from_file(path)?);
	}
	match std::env::var(env) {
		Ok(suri) => Sr25519Key::from_suri(&suri).with_context(|| format!("the key in ${env}")),
		Err(_) => bail!("no key: pass a key file or set ${env} to a secret URI"),
	}
}

/// An amount: base units (`1000`), or OPEN with a suffix (`1.5OPEN`, `2 OPEN`).
pub fn parse_amount(text: &str) -> Result<Balance, String> {
	let text = text.trim();
	let Some(open) = text.strip_suffix("OPEN").map(str::trim) else {
		return text.parse::<Balance>().map_err(|_| format!("`{text}` is not an amount (base units, or e.g. `1.5OPEN`)"));
	};
	let (whole, fraction) = open.split_once('.').unwrap_or((open, ""));
	if fraction.len() > 18 || !whole.chars().chain(fraction.chars()).all(|c| c.is_ascii_digit()) || whole.is_empty() {
		return Err(format!("`{text}` is not an amount of OPEN (at most 18 decimals)"));
	}
	let whole: Balance = whole.parse().map_err(|_| format!("`{text}` is too large"))?;
	let fraction: Balance = format!("{fraction:0<18}").parse().map_err(|_| format!("`{text}` is not an amount"))?;
	whole.checked_mul(OPEN).and_then(|w| w.checked_add(fraction)).ok_or_else(|| format!("`{text}` is too large"))
}

#[derive(Subcommand)]
pub enum KeyCommand {
	/// Generate an sr25519 key; writes its phrase to a new file (mode 600), prints the account.
	Generate {
		#[arg(long)]
		out: PathBuf,
	},
	/// Print a key's account (SS58) and public key.
	Inspect(KeySource),
}

#[derive(Args)]
pub struct ChainArgs {
	/// The node's RPC endpoint.
	#[arg(long, default_value = "ws://127.0.0.1:9944")]
	pub chain: String,
}

#[derive(Subcommand)]
pub enum ChainCommand {
	/// Register this worker: session key, endpoint, base models served, price and stake.
	Register {
		#[command(flatten)]
		chain: ChainArgs,
		/// The worker's account key (pays the stake and fees).
		#[command(flatten)]
		account: KeySource,
		/// The session key that will sign receipts (file or `OPENLEDGER_SESSION_KEY`).
		#[arg(long)]
		session_key_file: Option<PathBuf>,
		/// Where clients reach the worker.
		#[arg(long)]
		endpoint: String,
		/// Base model ids served (comma-separated).
		#[arg(long, value_delimiter = ',', required = true)]
		serves: Vec<BaseModelId>,
		/// The worker's price per 1000 tokens.
		#[arg(long, value_parser = parse_amount)]
		price_per_1k: Balance,
		#[arg(long, value_parser = parse_amount)]
		stake: Balance,
	},
	/// Add stake.
	BondExtra {
		#[command(flatten)]
		chain: ChainArgs,
		#[command(flatten)]
		account: KeySource,
		#[arg(long, value_parser = parse_amount)]
		amount: Balance,
	},
	/// Register a new session key (file or `OPENLEDGER_SESSION_KEY`); receipts signed by the
	/// old one no longer settle.
	RotateKey {
		#[command(flatten)]
		chain: ChainArgs,
		#[command(flatten)]
		account: KeySource,
		#[arg(long)]
		session_key_file: Option<PathBuf>,
	},
	/// Start unbonding: the worker stops being active; the stake is released after the delay.
	Unbond {
		#[command(flatten)]
		chain: ChainArgs,
		#[command(flatten)]
		account: KeySource,
	},
	/// Release the stake once the unbonding delay has passed.
	WithdrawUnbonded {
		#[command(flatten)]
		chain: ChainArgs,
		#[command(flatten)]
		account: KeySource,
	},
	/// Print a worker's registration as JSON.
	Status {
		#[command(flatten)]
		chain: ChainArgs,
		/// The worker's account (SS58 or 0x hex).
		#[arg(long)]
		worker: String,
	},
	/// Record the on-chain ids of the accepted items in local DataNet indexes (matched by
	/// content hash). `serve --chain` does this at start.
	SyncItems {
		#[command(flatten)]
		chain: ChainArgs,
		/// Root of the DataNet indexes.
		#[arg(long)]
		datanets: PathBuf,
	},
}

#[derive(Subcommand)]
pub enum VoucherCommand {
	/// Sign a voucher for one request body; prints the `x-openledger-voucher` header value.
	Sign {
		#[command(flatten)]
		chain: ChainArgs,
		/// The payer's key.
		#[command(flatten)]
		payer: KeySource,
		/// The worker's account (SS58 or 0x hex).
		#[arg(long)]
		worker: String,
		/// The exact request body that will be sent.
		#[arg(long)]
		body_file: PathBuf,
		#[arg(long, value_parser = parse_amount)]
		max_fee: Balance,
		/// Blocks from now until the voucher expires; at most the chain's receipt lifetime, or
		/// workers refuse it (the chain would not settle its receipt).
		#[arg(long, default_value_t = 100)]
		expires_in: u32,
	},
}

#[derive(Subcommand)]
pub enum OutboxCommand {
	/// Receipt counts by state, as JSON.
	Stats {
		#[arg(long)]
		outbox: PathBuf,
	},
	/// Print every receipt as JSON lines (id, request hash, payer, tokens, hex SCALE).
	Export {
		#[arg(long)]
		outbox: PathBuf,
	},
	/// Submit every receipt in the outbox once more, signed by any account (a third party may
	/// settle a worker's receipts; nothing is paid twice). Prints what the chain said.
	Resubmit {
		#[command(flatten)]
		chain: ChainArgs,
		#[arg(long)]
		outbox: PathBuf,
		/// The submitting account's key.
		#[command(flatten)]
		signer: KeySource,
		#[arg(long, default_value_t = 64)]
		batch: usize,
	},
}

pub(crate) fn runtime_builder() -> Result<tokio::runtime::Runtime> {
	tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")
}

pub(crate) async fn connect(args: &ChainArgs) -> Result<ChainClient> {
	Ok(ChainClient::connect_patiently(&args.chain, Duration::from_secs(30)).await?)
}

pub fn run_key(command: KeyCommand) -> Result<()> {
	match command {
		KeyCommand::Generate { out } => {
			if out.exists() {
				bail!("{} exists; not overwriting a key", out.display());
			}
			let (key, phrase) = Sr25519Key::generate();
			write_secret(&out, &phrase)?;
			println!("{}", serde_json::json!({ "account": key.account().to_ss58check(), "public": hex_hash(&ContentHash::from(key.public().0)), "file": out }));
			Ok(())
		},
		KeyCommand::Inspect(source) => {
			let key = source.load(KEY_ENV)?;
			println!("{}", serde_json::json!({ "account": key.account().to_ss58check(), "public": hex_hash(&ContentHash::from(key.public().0)) }));
			Ok(())
		},
	}
}

/// Writes a secret to a new file readable by its owner only.
fn write_secret(path: &PathBuf, secret: &str) -> Result<()> {
	use std::io::Write;
	let mut options = std::fs::OpenOptions::new();
	options.write(true).create_new(true);
	#[cfg(unix)]
	std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
	let mut file = options.open(path).with_context(|| format!("creating {}", path.display()))?;
	file.write_all(secret.as_bytes())?;
	file.sync_all()?;
	Ok(())
}

fn session_key(file: Option<&PathBuf>) -> Result<Sr25519Key> {
	load_key(file, SESSION_ENV)
}

pub fn run_chain(command: ChainCommand) -> Result<()> {
	runtime_builder()?.block_on(async move {
		match command {
			ChainCommand::Register { chain, account, session_key_file, endpoint, serves, price_per_1k, stake } => {
				let (account, session) = (account.load(ACCOUNT_ENV)?, session_key(session_key_file.as_ref())?);
				let client = connect(&chain).await?;
				let call = runtime::tx().workers().register(
					session.public().0,
					endpoint.into_bytes(),
					serves,
					price_per_1k,
					stake,
				);
				let included = client.submit(&call, account.signer()).await?;
				println!("worker {} registered in block {} (session key {})", account.account(), included.block, session.account());
			},
			ChainCommand::BondExtra { chain, account, amount } => {
				let account = account.load(ACCOUNT_ENV)?;
				let included = connect(&chain).await?.submit(&runtime::tx().workers().bond_extra(amount), account.signer()).await?;
				println!("stake of {} raised by {amount} in block {}", account.account(), included.block);
			},
			ChainCommand::RotateKey { chain, account, session_key_file } => {
				let (account, session) = (account.load(ACCOUNT_ENV)?, session_key(session_key_file.as_ref())?);
				let call = runtime::tx().workers().rotate_key(session.public().0);
				let included = connect(&chain).await?.submit(&call, account.signer()).await?;
				println!("worker {} signs with {} from block {}", account.account(), session.account(), included.block);
			},
			ChainCommand::Unbond { chain, account } => {
				let account = account.load(ACCOUNT_ENV)?;
				let included = connect(&chain).await?.submit(&runtime::tx().workers().unbond(), account.signer()).await?;
				println!("worker {} unbonding from block {}", account.account(), included.block);
			},
			ChainCommand::WithdrawUnbonded { chain, account } => {
				let account = account.load(ACCOUNT_ENV)?;
				let included =
					connect(&chain).await?.submit(&runtime::tx().workers().withdraw_unbonded(), account.signer()).await?;
				println!("stake of {} released in block {}", account.account(), included.block);
			},
			ChainCommand::Status { chain, worker } => {
				let worker = parse_account(&worker)?;
				let snapshot = connect(&chain).await?.snapshot(&worker).await?;
				let status = snapshot.worker.map(|w| {
					serde_json::json!({
						"session_key": hex_hash(&ContentHash::from(w.session_key.0)),
						"compute_price_per_1k_tokens": w.compute_price_per_1k_tokens.to_string(),
						"serves": w.serves,
						"stake": w.stake.to_string(),
						"active": w.active,
					})
				});
				println!("{}", serde_json::json!({ "worker": worker.to_ss58check(), "block": snapshot.block, "registration": status }));
			},
			ChainCommand::SyncItems { chain, datanets } => {
				let client = connect(&chain).await?;
				for (datanet, recorded, accepted) in sync_items(&client, &datanets, |_| true).await? {
					println!("DataNet {datanet}: {recorded} local items have chain ids ({accepted} accepted on chain)");
				}
			},
		}
		Ok(())
	})
}

/// Records the ids of accepted items in the local DataNet indexes under `root` that `wanted`
/// picks: (DataNet, local items with an id, items accepted on chain).
pub async fn sync_items(
	client: &ChainClient,
	root: &std::path::Path,
	wanted: impl Fn(DataNetId) -> bool,
) -> Result<Vec<(DataNetId, usize, usize)>> {
	let mut out = Vec::new();
	for datanet in list_datanets(root)?.into_iter().filter(|&d| wanted(d)) {
		let accepted = client.accepted_items(datanet).await?;
		let root = root.to_path_buf();
		let count = accepted.len();
		let recorded = blocking(move || -> Result<usize> {
			let index = DataNetIndex::open(&root, datanet)?;
			let mut writer = IndexWriter::open(&root, datanet, index.model())?;
			let known: Vec<_> = accepted.into_iter().filter(|(hash, _)| writer.get(hash).is_some()).collect();
			writer.set_chain_items(&known)?;
			Ok(known.len())
		})
		.await?;
		out.push((datanet, recorded, count));
	}
	Ok(out)
}

pub fn run_voucher(command: VoucherCommand) -> Result<()> {
	let VoucherCommand::Sign { chain, payer, worker, body_file, max_fee, expires_in } = command;
	let payer = payer.load(KEY_ENV)?;
	let worker = parse_account(&worker)?;
	let body = std::fs::read(&body_file).with_context(|| format!("reading {}", body_file.display()))?;
	runtime_builder()?.block_on(async move {
		let client = connect(&chain).await?;
		let expires_at = client.best_block().await?.saturating_add(expires_in);
		let voucher = sign_voucher(&payer, worker, &body, max_fee, expires_at, &client.genesis());
		println!("{}", encode_voucher(&voucher));
		Ok(())
	})
}

pub fn run_outbox(command: OutboxCommand) -> Result<()> {
	match command {
		OutboxCommand::Stats { outbox } => {
			let outbox = Outbox::open_existing(&outbox)?;
			println!("{}", serde_json::to_string(&outbox.stats()?)?);
			Ok(())
		},
		OutboxCommand::Export { outbox } => {
			let outbox = Outbox::open_existing(&outbox)?;
			for signed in outbox.receipts()? {
				let r = &signed.receipt;
				println!(
					"{}",
					serde_json::json!({
						"id": hex_hash(&r.id()),
						"request_hash": hex_hash(&r.request_hash),
						"payer": r.payer.to_ss58check(),
						"prompt_tokens": r.prompt_tokens,
						"completion_tokens": r.completion_tokens,
						"outcome": outbox.outcome(&r.id())?.map(|o| format!("{o:?}")),
						"scale": format!("0x{}", hex::encode(codec::Encode::encode(&signed))),
					})
				);
			}
			Ok(())
		},
		OutboxCommand::Resubmit { chain, outbox, signer, batch } => {
			let signer = signer.load(KEY_ENV)?;
			let outbox = Arc::new(Outbox::open_existing(&outbox)?);
			let receipts = outbox.receipts()?;
			runtime_builder()?.block_on(async move {
				let client = connect(&chain).await?;
				if outbox.genesis()? != client.genesis() {
					bail!("the outbox belongs to another chain than {}", chain.chain);
				}
				let results = submit_once(&client, signer.signer(), receipts, batch).await?;
				let settled = results.iter().filter(|(_, r)| r.is_ok()).count();
				let mut reasons = std::collections::BTreeMap::<String, usize>::new();
				for (_, result) in &results {
					if let Err(reason) = result {
						*reasons.entry(reason.clone()).or_default() += 1;
					}
				}
				println!("{}", serde_json::json!({ "submitted": results.len(), "settled": settled, "rejected": reasons }));
				Ok(())
			})
		},
	}
}
