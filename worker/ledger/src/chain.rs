//! The chain client: subxt with static types generated from the committed metadata
//! (`worker/ledger/metadata/openledger.scale`; `scripts/e2e/chain.test.mjs` fails when it differs from
//! the running runtime's, `scripts/refresh-metadata.sh` refreshes it), over a WebSocket client
//! that reconnects with backoff.
//!
//! The worker reads what it needs to price and check requests into a [`ChainSnapshot`]: its own
//! registration, the base model, the adapters and prompts by content hash, the retrieval price
//! and the receipt lifetime. Payer credit and allowances change with every request, so they are
//! read when a request arrives.

use std::{
	collections::{BTreeSet, HashMap, HashSet},
	sync::Arc,
	time::Duration,
};

use openledger_primitives::{AdapterId, BaseModelId, ContentHash, DataNetId, ItemId, PromptId, ToolId};
use polkadot_sdk::{sp_core::sr25519, sp_runtime::AccountId32};
use subxt::{
	config::RpcConfigFor,
	rpcs::{
		client::{reconnecting_rpc_client::ExponentialBackoff, ReconnectingRpcClient, RpcClient},
		LegacyRpcMethods,
	},
	transactions::TransactionStatus,
	OnlineClient, SubstrateConfig,
};

use super::Balance;

/// Calls, storage, events and constants of the OpenLedger runtime, generated at build time.
/// A `SignedReceipt` is passed through as the shared `primitives` type, SCALE-encoded as is.
#[subxt::subxt(
	runtime_metadata_path = "metadata/openledger.scale",
	substitute_type(
		path = "openledger_primitives::SignedReceipt<A, B>",
		with = "::subxt::utils::Static<crate::SignedReceipt>"
	)
)]
pub mod runtime {}

// The macro does not tell cargo it read the metadata; this does, so a refreshed file rebuilds the
// client instead of leaving it stale.
const _: &[u8] = include_bytes!("../metadata/openledger.scale");

use runtime::runtime_types::{
	openledger_runtime::RuntimeHoldReason, pallet_attribution::pallet::HoldReason as CreditReason,
	pallet_datanets::types::ContributionStatus, pallet_workers::types::WorkerStatus,
};

pub type Config = SubstrateConfig;
pub type Client = OnlineClient<Config>;

#[derive(Debug, thiserror::Error)]
pub enum ChainError {
	#[error("chain RPC: {0}")]
	Rpc(String),
	#[error("{0}")]
	State(String),
	/// The node refused the transaction before inclusion (bad nonce, fees, invalid).
	#[error("the node refused the transaction: {0}")]
	Refused(String),
	/// The transaction was included and failed (`Pallet::Error`).
	#[error("the transaction failed: {0}")]
	Dispatch(String),
}

impl From<subxt::Error> for ChainError {
	fn from(e: subxt::Error) -> Self {
		ChainError::Rpc(e.to_string())
	}
}

macro_rules! rpc_err {
	($($t:ty),*) => {$(
		impl From<$t> for ChainError {
			fn from(e: $t) -> Self {
				ChainError::Rpc(e.to_string())
			}
		}
	)*};
}
rpc_err!(
	subxt::error::OnlineClientError,
	subxt::error::OnlineClientAtBlockError,
	subxt::error::StorageError,
	subxt::error::StorageValueError,
	subxt::error::StorageKeyError,
	subxt::error::ConstantError,
	subxt::rpcs::Error,
	subxt::error::ExtrinsicError,
	subxt::error::TransactionProgressError
);

impl From<subxt::error::TransactionEventsError> for ChainError {
	fn from(e: subxt::error::TransactionEventsError) -> Self {
		match e {
			subxt::error::TransactionEventsError::ExtrinsicFailed(dispatch) => {
				let message = match &dispatch {
					subxt::error::DispatchError::Module(m) => m.details_string(),
					other => other.to_string(),
				};
				ChainError::Dispatch(message)
			},
			other => ChainError::Rpc(other.to_string()),
		}
	}
}

impl ChainError {
	/// Whether trying again later may succeed (the connection, not the transaction, failed).
	pub fn is_transient(&self) -> bool {
		matches!(self, ChainError::Rpc(_))
	}
}

/// A transaction included in a block, with its events.
pub struct Included {
	pub block: u32,
	pub events: subxt::extrinsics::ExtrinsicEvents<Config>,
}

/// The worker's registration as the chain holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerInfo {
	pub session_key: sr25519::Public,
	pub compute_price_per_1k_tokens: Balance,
	pub serves: Vec<BaseModelId>,
	pub stake: Balance,
	/// `Active`; otherwise unbonding or slashed (and its receipts would be rejected).
	pub active: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterInfo {
	pub id: AdapterId,
	pub owner: AccountId32,
	pub base_model: BaseModelId,
	pub price_per_1k_tokens: Balance,
	/// (DataNet, share in ppm).
	pub provenance: Vec<(DataNetId, u32)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptInfo {
	pub id: PromptId,
	pub owner: AccountId32,
	pub price_per_call: Balance,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolInfo {
	pub owner: AccountId32,
	/// The MCP server's URL, as registered (bytes that may not be UTF-8).
	pub endpoint: Vec<u8>,
	/// The tool's name on that server.
	pub name: Vec<u8>,
	pub definition_hash: ContentHash,
	/// The price set (a rise is charged only after the registry's hold, so never less than what
	/// settlement charges).
	pub price_per_call: Balance,
}

/// A registration that an event named, to be read again ([`ChainClient::refresh`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RegistryEntry {
	Adapter(AdapterId),
	Prompt(PromptId),
	Tool(ToolId),
}

/// A registered base model, as the worker checks its own file against it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseModelInfo {
	pub weights_hash: ContentHash,
	/// The model family its registrant named (`llama`, `qwen2`, …).
	pub architecture: String,
	pub active: bool,
}

/// What the worker needs of chain state to accept, price and sign a request.
#[derive(Clone, Debug, Default)]
pub struct ChainSnapshot {
	/// The best block when this was read.
	pub block: u32,
	pub worker: Option<WorkerInfo>,
	pub base_models: HashMap<BaseModelId, BaseModelInfo>,
	/// Registered adapters by weights hash: the one the registry's hash index names.
	pub adapters: HashMap<ContentHash, AdapterInfo>,
	/// Registered prompts by template hash: the one the registry's hash index names.
	pub prompts: HashMap<ContentHash, PromptInfo>,
	/// Registered MCP tools by id.
	pub tools: HashMap<ToolId, ToolInfo>,
	pub retrieval_price: Balance,
	pub max_receipt_lifetime: u32,
	pub max_receipts_per_batch: u32,
	/// The least stake a worker needs for its receipts to be accepted.
	pub min_stake: Balance,
	/// How long after a receipt expires it still proves equivocation (the workers pallet's
	/// `UnbondingDelay`); 0 until the chain's constants are read.
	pub evidence_window: u32,
}

/// A payer's means to pay this worker right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PayerFunds {
	/// Credit held for paying fees.
	pub credit: Balance,
	/// The allowance the payer set for this worker (0 when none).
	pub allowance: Balance,
}

/// A connection to a node. Cheap to clone.
#[derive(Clone)]
pub struct ChainClient {
	api: Client,
	legacy: Arc<LegacyRpcMethods<RpcConfigFor<Config>>>,
	url: String,
}

fn h256(h: subxt::utils::H256) -> ContentHash {
	ContentHash::from(h.0)
}

fn to_subxt_h256(h: &ContentHash) -> subxt::utils::H256 {
	subxt::utils::H256(h.0)
}

fn account(a: &subxt::utils::AccountId32) -> AccountId32 {
	AccountId32::from(a.0)
}

fn worker_info(w: runtime::runtime_types::pallet_workers::types::Worker<Balance, u32>) -> WorkerInfo {
	WorkerInfo {
		session_key: sr25519::Public::from_raw(w.session_key),
		compute_price_per_1k_tokens: w.compute_price_per_1k_tokens,
		serves: w.serves.0,
		stake: w.stake,
		active: matches!(w.status, WorkerStatus::Active),
	}
}

use runtime::runtime_types::pallet_registry::types as registry_types;

fn adapter_info(id: AdapterId, a: registry_types::Adapter<subxt::utils::AccountId32, Balance, u32>) -> (ContentHash, AdapterInfo) {
	let info = AdapterInfo {
		id,
		owner: account(&a.owner),
		base_model: a.base_model,
		price_per_1k_tokens: a.price_per_1k_tokens,
		provenance: a.provenance.0,
	};
	(h256(a.weights_hash), info)
}

fn prompt_info(id: PromptId, p: registry_types::Prompt<subxt::utils::AccountId32, Balance, u32>) -> (ContentHash, PromptInfo) {
	(h256(p.template_hash), PromptInfo { id, owner: account(&p.owner), price_per_call: p.price_per_call })
}

fn tool_info(t: registry_types::Tool<subxt::utils::AccountId32, Balance, u32>) -> ToolInfo {
	ToolInfo {
		owner: account(&t.owner),
		endpoint: t.endpoint.0,
		name: t.name.0,
		definition_hash: h256(t.definition_hash),
		price_per_call: t.price_per_call,
	}
}

pub(crate) fn to_subxt_account(a: &AccountId32) -> subxt::utils::AccountId32 {
	subxt::utils::AccountId32(*<AccountId32 as AsRef<[u8; 32]>>::as_ref(a))
}

impl ChainClient {
	/// Connects to the node at `url` (`ws://` or `wss://`). The connection reconnects by itself
	/// with exponential backoff; calls in flight during an outage fail and are retried by the
	/// caller.
	pub async fn connect(url: &str) -> Result<Self, ChainError> {
		let inner = ReconnectingRpcClient::builder()
			.retry_policy(ExponentialBackoff::from_millis(100).max_delay(Duration::from_secs(5)))
			.request_timeout(Duration::from_secs(30))
			.build(url)
			.await
			.map_err(|e| ChainError::Rpc(format!("connecting to {url}: {e}")))?;
		let rpc = RpcClient::new(inner);
		let api = Client::from_rpc_client(rpc.clone()).await?;
		let legacy = Arc::new(LegacyRpcMethods::new(rpc));
		Ok(Self { api, legacy, url: url.to_owned() })
	}

	/// Connects, retrying every second until `patience` has passed (a node that is still
	/// starting).
	pub async fn connect_patiently(url: &str, patience: Duration) -> Result<Self, ChainError> {
		let deadline = tokio::time::Instant::now() + patience;
		loop {
			match Self::connect(url).await {
				Ok(client) => return Ok(client),
				Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
				Err(e) => {
					tracing::info!("waiting for the node at {url}: {e}");
					tokio::time::sleep(Duration::from_secs(1)).await;
				},
			}
		}
	}

	pub fn url(&self) -> &str {
		&self.url
	}

	pub fn api(&self) -> &Client {
		&self.api
	}

	pub fn genesis(&self) -> ContentHash {
		h256(self.api.genesis_hash())
	}

	/// The best block's number (receipts expire relative to it; the finalized block lags).
	pub async fn best_block(&self) -> Result<u32, ChainError> {
		let header = self.legacy.chain_get_header(None).await?.ok_or_else(|| ChainError::State("no best header".into()))?;
		u32::try_from(header.number).map_err(|_| ChainError::State("block number beyond u32".into()))
	}

	/// A client at the best block (state reads there see what was just included).
	async fn at_best(&self) -> Result<subxt::client::OnlineClientAtBlock<Config>, ChainError> {
		let hash = self.legacy.chain_get_block_hash(None).await?.ok_or_else(|| ChainError::State("no best block".into()))?;
		Ok(self.api.at_block(hash).await?)
	}

	/// Reads everything in [`ChainSnapshot`] at the best block.
	pub async fn snapshot(&self, worker: &AccountId32) -> Result<ChainSnapshot, ChainError> {
		let at = self.at_best().await?;
		let storage = at.storage();
		let mut snapshot = ChainSnapshot {
			block: u32::try_from(at.block_number()).unwrap_or(u32::MAX),
			..ChainSnapshot::default()
		};
		if let Some(w) = storage.try_fetch(runtime::storage().workers().workers(), (to_subxt_account(worker),)).await? {
			snapshot.worker = Some(worker_info(w.decode()?));
		}
		let mut models = storage.entry(runtime::storage().registry().base_models())?.iter(()).await?;
		while let Some(kv) = models.next().await {
			let kv = kv?;
			let (id,) = kv.key()?.decode()?;
			let model = kv.value().decode()?;
			let architecture = String::from_utf8_lossy(&model.architecture.0).into_owned();
			snapshot.base_models.insert(id, BaseModelInfo { weights_hash: h256(model.weights_hash), architecture, active: model.active });
		}
		// What its owner retired still pays for requests served before, but is served no more.
		let (mut retired_adapters, mut retired_prompts, mut retired_tools) = (HashSet::new(), HashSet::new(), HashSet::new());
		let mut marks = storage.entry(runtime::storage().registry().retiring())?.iter(()).await?;
		while let Some(kv) = marks.next().await {
			use runtime::runtime_types::pallet_registry::types::Entry;
			let (entry,) = kv?.key()?.decode()?;
			match entry {
				Entry::Adapter(id) => retired_adapters.insert(id),
				Entry::Prompt(id) => retired_prompts.insert(id),
				Entry::Tool(id) => retired_tools.insert(id),
			};
		}
		// A hash names the one entry the registry's index gives it (on a chain older than the
		// index, other entries may share the hash: they are not billed).
		let mut indexed_adapters = HashSet::new();
		let mut index = storage.entry(runtime::storage().registry().adapter_by_hash())?.iter(()).await?;
		while let Some(kv) = index.next().await {
			indexed_adapters.insert(kv?.value().decode()?);
		}
		let mut indexed_prompts = HashSet::new();
		let mut index = storage.entry(runtime::storage().registry().prompt_by_hash())?.iter(()).await?;
		while let Some(kv) = index.next().await {
			indexed_prompts.insert(kv?.value().decode()?);
		}
		let mut adapters = storage.entry(runtime::storage().registry().adapters())?.iter(()).await?;
		while let Some(kv) = adapters.next().await {
			let kv = kv?;
			let (id,) = kv.key()?.decode()?;
			if retired_adapters.contains(&id) || !indexed_adapters.contains(&id) {
				continue;
			}
			let (hash, info) = adapter_info(id, kv.value().decode()?);
			snapshot.adapters.insert(hash, info);
		}
		let mut prompts = storage.entry(runtime::storage().registry().prompts())?.iter(()).await?;
		while let Some(kv) = prompts.next().await {
			let kv = kv?;
			let (id,) = kv.key()?.decode()?;
			if retired_prompts.contains(&id) || !indexed_prompts.contains(&id) {
				continue;
			}
			let (hash, info) = prompt_info(id, kv.value().decode()?);
			snapshot.prompts.insert(hash, info);
		}
		let mut tools = storage.entry(runtime::storage().registry().tools())?.iter(()).await?;
		while let Some(kv) = tools.next().await {
			let kv = kv?;
			let (id,) = kv.key()?.decode()?;
			if retired_tools.contains(&id) {
				continue;
			}
			snapshot.tools.insert(id, tool_info(kv.value().decode()?));
		}
		snapshot.retrieval_price = storage.fetch(runtime::storage().attribution().retrieval_price(), ()).await?.decode()?;
		let constants = at.constants();
		snapshot.max_receipt_lifetime = constants.entry(runtime::constants().attribution().max_receipt_lifetime())?;
		snapshot.max_receipts_per_batch = constants.entry(runtime::constants().attribution().max_receipts_per_batch())?;
		snapshot.min_stake = constants.entry(runtime::constants().workers().min_stake())?;
		snapshot.evidence_window = constants.entry(runtime::constants().workers().unbonding_delay())?;
		Ok(snapshot)
	}

	/// `snapshot` with `entries` read again at the best block, each as it is there: changed,
	/// retiring (no longer served) or gone. What a registry event names costs a few reads, not
	/// a read of the whole registry.
	pub async fn refresh(&self, snapshot: &ChainSnapshot, entries: &BTreeSet<RegistryEntry>) -> Result<ChainSnapshot, ChainError> {
		use runtime::runtime_types::pallet_registry::types::Entry;
		let at = self.at_best().await?;
		let storage = at.storage();
		let registry = runtime::storage().registry();
		let mut next = snapshot.clone();
		next.block = u32::try_from(at.block_number()).unwrap_or(u32::MAX);
		for &entry in entries {
			let mark = match entry {
				RegistryEntry::Adapter(id) => Entry::Adapter(id),
				RegistryEntry::Prompt(id) => Entry::Prompt(id),
				RegistryEntry::Tool(id) => Entry::Tool(id),
			};
			let retiring = storage.try_fetch(registry.retiring(), (mark,)).await?.is_some();
			match entry {
				RegistryEntry::Adapter(id) => {
					next.adapters.retain(|_, a| a.id != id);
					let Some(a) = storage.try_fetch(registry.adapters(), (id,)).await?.filter(|_| !retiring) else { continue };
					let (hash, info) = adapter_info(id, a.decode()?);
					let indexed = storage.try_fetch(registry.adapter_by_hash(), (to_subxt_h256(&hash),)).await?;
					if indexed.map(|i| i.decode()).transpose()? == Some(id) {
						next.adapters.insert(hash, info);
					}
				},
				RegistryEntry::Prompt(id) => {
					next.prompts.retain(|_, p| p.id != id);
					let Some(p) = storage.try_fetch(registry.prompts(), (id,)).await?.filter(|_| !retiring) else { continue };
					let (hash, info) = prompt_info(id, p.decode()?);
					let indexed = storage.try_fetch(registry.prompt_by_hash(), (to_subxt_h256(&hash),)).await?;
					if indexed.map(|i| i.decode()).transpose()? == Some(id) {
						next.prompts.insert(hash, info);
					}
				},
				RegistryEntry::Tool(id) => {
					next.tools.remove(&id);
					if let Some(t) = storage.try_fetch(registry.tools(), (id,)).await?.filter(|_| !retiring) {
						next.tools.insert(id, tool_info(t.decode()?));
					}
				},
			}
		}
		Ok(next)
	}

	/// Every registered worker, at the best block.
	pub async fn workers(&self) -> Result<HashMap<AccountId32, WorkerInfo>, ChainError> {
		let at = self.at_best().await?;
		let mut workers = HashMap::new();
		let mut entries = at.storage().entry(runtime::storage().workers().workers())?.iter(()).await?;
		while let Some(kv) = entries.next().await {
			let kv = kv?;
			let (id,) = kv.key()?.decode()?;
			workers.insert(account(&id), worker_info(kv.value().decode()?));
		}
		Ok(workers)
	}

	/// The payer's credit and its allowance for `worker`, at the best block.
	pub async fn payer_funds(&self, payer: &AccountId32, worker: &AccountId32) -> Result<PayerFunds, ChainError> {
		let at = self.at_best().await?;
		let storage = at.storage();
		let payer = to_subxt_account(payer);
		let key = (payer.clone(), to_subxt_account(worker));
		let allowance = match storage.try_fetch(runtime::storage().attribution().allowances(), key.clone()).await? {
			Some(v) => v.decode()?,
			None => 0,
		};
		// A cut binds the payer's receipts only a receipt's lifetime from now, but it says what
		// the payer wants served from now on.
		let allowance = match storage.try_fetch(runtime::storage().attribution().allowance_cuts(), key).await? {
			Some(cut) => allowance.min(cut.decode()?.0),
			None => allowance,
		};
		let holds = storage.fetch(runtime::storage().balances().holds(), (payer,)).await?.decode()?;
		let credit = holds
			.0
			.iter()
			.filter(|h| matches!(h.id, RuntimeHoldReason::Attribution(CreditReason::Credit)))
			.map(|h| h.amount)
			.sum();
		Ok(PayerFunds { credit, allowance })
	}

	/// Whether the chain settled a receipt of `worker` for `request_hash` expiring at
	/// `expires_at`: its replay records, which hold until that block has passed.
	pub async fn settled(&self, worker: &AccountId32, expires_at: u32, request_hash: &ContentHash) -> Result<bool, ChainError> {
		let at = self.at_best().await?;
		let Some(set) = at
			.storage()
			.try_fetch(runtime::storage().attribution().settled(), (expires_at, to_subxt_account(worker)))
			.await?
		else {
			return Ok(false);
		};
		let hashes = set.decode()?.0;
		Ok(hashes.binary_search_by(|h| h.0.cmp(&request_hash.0)).is_ok())
	}

	/// The accepted items of `datanet` that are not leaving: (content hash, item id). A leaving
	/// item still pays for what it served, but is served no more.
	pub async fn accepted_items(&self, datanet: DataNetId) -> Result<Vec<(ContentHash, ItemId)>, ChainError> {
		let at = self.at_best().await?;
		let mut leaving = HashSet::new();
		let mut marks = at.storage().entry(runtime::storage().data_nets().leaving())?.iter((datanet,)).await?;
		while let Some(kv) = marks.next().await {
			let (_, item) = kv?.key()?.decode()?;
			leaving.insert(item);
		}
		let mut items = at.storage().entry(runtime::storage().data_nets().contributions())?.iter((datanet,)).await?;
		let mut out = Vec::new();
		while let Some(kv) = items.next().await {
			let kv = kv?;
			let (_, item) = kv.key()?.decode()?;
			if leaving.contains(&item) {
				continue;
			}
			let c = kv.value().decode()?;
			if matches!(c.status, ContributionStatus::Accepted) {
				out.push((h256(c.content_hash), item));
			}
		}
		Ok(out)
	}
}

impl ChainClient {
	/// Signs `call` with `signer`, submits it and waits until it is in a block; returns its
	/// events, or why it failed. The nonce counts the signer's transactions already in the pool,
	/// so callers must not sign with one key from two tasks at once.
	pub async fn submit<Call: subxt::transactions::Payload>(
		&self,
		call: &Call,
		signer: &subxt_signer::sr25519::Keypair,
	) -> Result<Included, ChainError> {
		let who = signer.public_key().to_account_id();
		let nonce = self.legacy.system_account_next_index(&who).await?;
		let params = subxt::config::SubstrateExtrinsicParamsBuilder::<Config>::new().nonce(nonce).build();
		let at = self.api.at_current_block().await?;
		let mut progress = at.tx().sign_and_submit_then_watch(call, signer, params).await?;
		while let Some(status) = progress.next().await {
			match status? {
				TransactionStatus::InBestBlock(in_block) | TransactionStatus::InFinalizedBlock(in_block) => {
					let events = in_block.wait_for_success().await?;
					let block = in_block.at().await?.block_number();
					return Ok(Included { block: u32::try_from(block).unwrap_or(u32::MAX), events });
				},
				TransactionStatus::Error { message } |
				TransactionStatus::Invalid { message } |
				TransactionStatus::Dropped { message } => return Err(ChainError::Refused(message)),
				_ => {},
			}
		}
		Err(ChainError::Rpc("the node stopped reporting on the transaction".into()))
	}
}
