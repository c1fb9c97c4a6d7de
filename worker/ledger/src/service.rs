//! The ledger as the HTTP API uses it: authorise a request before any work (a voucher or an
//! allowance, else 402), price it against on-chain rates so the receipt can never exceed what
//! the payer authorised, and issue the signed receipt into the outbox before the response
//! completes. Holds the chain snapshot, refreshed when registrations or prices change.

use std::{
	collections::HashMap,
	path::PathBuf,
	sync::{
		atomic::{AtomicU32, AtomicU64, Ordering},
		Arc, RwLock,
	},
	time::{Duration, Instant},
};

use openledger_primitives::{content_hash, AttributionEntry, BaseModelId, ContentHash, MAX_ATTRIBUTION_ENTRIES};
use polkadot_sdk::sp_runtime::AccountId32;
use tokio::sync::{watch, Notify};

use super::{
	chain::{AdapterInfo, ChainClient, ChainError, ChainSnapshot, WorkerInfo},
	decode_voucher,
	keys::{hex_hash, Sr25519Key},
	outbox::{Outbox, OutboxError},
	sign_receipt,
	submitter::{Submitter, SubmitterOptions},
	voucher_request_hash, Balance, Served, SignedVoucher,
};

/// How the worker takes part in the ledger.
pub struct LedgerConfig {
	/// The node's RPC endpoint (`ws://127.0.0.1:9944`).
	pub chain_url: String,
	/// The worker's registered account; signs its extrinsics.
	pub account: Sr25519Key,
	/// The session key registered for the account; signs receipts.
	pub session: Sr25519Key,
	/// The base model's id on chain.
	pub base_model: BaseModelId,
	/// The base model file, whose blake2-256 must equal the registered weights hash.
	pub base_model_hash: ContentHash,
	pub outbox: PathBuf,
	/// API keys of payers who pay by allowance: `Authorization: Bearer <key>` → payer.
	pub api_keys: HashMap<String, AccountId32>,
	pub submitter: SubmitterOptions,
	/// Whether this process submits its receipts (else they wait in the outbox for
	/// `openledger-worker outbox resubmit`, from this or any account).
	pub submit: bool,
	/// Judged receipts are kept this many blocks past their expiry, then forgotten.
	pub outbox_keep_blocks: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
	/// 402: no valid authorisation, or not enough of it for this request.
	#[error("{0}")]
	PaymentRequired(String),
	/// 409: the voucher's request was served already.
	#[error("{0}")]
	AlreadyServed(String),
	/// 404: the adapter or prompt is not registered on chain; names the request field.
	#[error("{1}")]
	NotRegistered(&'static str, String),
	/// 503: the chain cannot be read now.
	#[error("the chain is unavailable: {0}")]
	Chain(#[from] ChainError),
	/// 500: the receipt could not be persisted, so the response is not delivered.
	#[error("the receipt could not be stored: {0}")]
	Outbox(#[from] OutboxError),
}

/// Who pays for a request and how much they authorised.
#[derive(Clone, Debug)]
pub struct Authorisation {
	pub payer: AccountId32,
	pub request_hash: ContentHash,
	pub voucher: Option<SignedVoucher>,
	/// The most this one request may cost: the voucher's `max_fee` (unbounded for an allowance).
	pub per_request: Balance,
	/// What this payer's requests at this worker may cost together until they settle: the credit
	/// (and, for an allowance, the allowance) on chain when the request came.
	pub shared: Balance,
	/// The receipt's `expires_at`.
	pub expires_at: u32,
}

/// A request priced against on-chain rates.
#[derive(Clone, Debug)]
pub struct Priced {
	pub adapter: Option<(u32, ContentHash)>,
	pub prompt: Option<(u32, ContentHash)>,
	/// The adapter's training provenance on chain.
	pub provenance: Vec<(u32, u32)>,
	/// The most tokens (prompt + completion) the budget pays for; `None` when tokens are free.
	pub max_total_tokens: Option<u64>,
	/// The fee's parts that do not depend on tokens (prompt, retrieval at the most items).
	pub fixed: Balance,
	/// Worker and adapter rate per 1000 tokens.
	pub rate_per_1k: Balance,
}

impl Priced {
	/// The most a receipt for `total_tokens` tokens can cost.
	pub fn max_fee(&self, total_tokens: usize) -> Balance {
		self.fixed.saturating_add(Balance::try_from(total_tokens).unwrap_or(Balance::MAX).saturating_mul(self.rate_per_1k) / 1000)
	}
}

/// What this worker's requests may still cost each payer before the chain has settled them. The
/// chain lowers credit and allowances only when a receipt settles, so a new request may only be
/// authorised for what the payer's requests in flight and awaiting settlement leave.
#[derive(Default)]
struct Commitments {
	by_payer: HashMap<AccountId32, Balance>,
	/// Issued receipts awaiting a verdict: receipt id → (payer, amount held for it).
	by_receipt: HashMap<ContentHash, (AccountId32, Balance)>,
}

impl Commitments {
	fn add(&mut self, payer: &AccountId32, amount: Balance) {
		let held = self.by_payer.entry(payer.clone()).or_default();
		*held = held.saturating_add(amount);
	}

	fn remove(&mut self, payer: &AccountId32, amount: Balance) {
		if let Some(held) = self.by_payer.get_mut(payer) {
			*held = held.saturating_sub(amount);
			if *held == 0 {
				self.by_payer.remove(payer);
			}
		}
	}
}

/// An amount held from a payer's budget for one request, from pricing until its receipt is
/// judged on chain; released at once if the request fails before a receipt exists.
pub struct Reservation {
	ledger: Arc<Ledger>,
	payer: AccountId32,
	amount: Balance,
	receipt: Option<ContentHash>,
}

impl Drop for Reservation {
	fn drop(&mut self) {
		let mut commitments = self.ledger.commitments.lock().expect("commitments lock");
		match self.receipt {
			// Held until the submitter records the receipt's verdict (a worker that does not
			// submit never learns it, and holds nothing past the answer).
			Some(id) if self.ledger.submits => {
				commitments.by_receipt.insert(id, (self.payer.clone(), self.amount));
			},
			_ => commitments.remove(&self.payer, self.amount),
		}
	}
}

pub struct Ledger {
	chain: ChainClient,
	genesis: ContentHash,
	account: AccountId32,
	session: Sr25519Key,
	base_model: BaseModelId,
	outbox: Arc<Outbox>,
	api_keys: HashMap<String, AccountId32>,
	snapshot: RwLock<Arc<ChainSnapshot>>,
	commitments: std::sync::Mutex<Commitments>,
	/// Whether this process submits its receipts (and so learns their verdicts).
	submits: bool,
	outbox_keep_blocks: u32,
	/// Whether an outbox pruning is running (one at a time).
	pruning: Arc<std::sync::atomic::AtomicBool>,
	/// The best block seen (receipts expire relative to it).
	best_block: AtomicU32,
	/// Bumped when a block's events change DataNet contributions (accepted, rejected, withdrawn,
	/// reaped from a closing DataNet).
	datanets_changed: watch::Sender<u64>,
	wakeup: Arc<Notify>,
	/// Every registered worker, when it was read and the value of `workers_changed` then (see
	/// [`Ledger::workers`]).
	workers: tokio::sync::Mutex<Option<(Instant, u64, Arc<HashMap<AccountId32, WorkerInfo>>)>>,
	/// Bumped when a block has an event of the workers pallet (a registration, a key rotation).
	workers_changed: AtomicU64,
}

/// How long the registered workers read for the p2p listing are used before being read again.
const WORKERS_TTL: Duration = Duration::from_secs(30);
const WORKERS_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How often (in blocks, about an hour) the outbox forgets old judged receipts.
const PRUNE_EVERY_BLOCKS: u32 = 600;

impl Ledger {
	/// Connects, checks the worker's registration against its keys and files, opens the outbox
	/// and starts the submitter and the snapshot refresher. Fails with a one-line reason when
	/// the worker cannot earn (not registered, wrong session key, base model mismatch).
	pub async fn start(config: LedgerConfig, shutdown: watch::Receiver<bool>) -> anyhow::Result<(Arc<Self>, tokio::task::JoinHandle<()>)> {
		let chain = ChainClient::connect_patiently(&config.chain_url, Duration::from_secs(60)).await?;
		let genesis = chain.genesis();
		let account = config.account.account();
		let snapshot = chain.snapshot(&account).await?;
		check_registration(&snapshot, &config)?;
		let outbox = Arc::new(Outbox::open(&config.outbox, genesis)?);
		let stats = outbox.stats()?;
		tracing::info!(
			genesis = %hex_hash(&genesis),
			worker = %account,
			queued = stats.queued,
			settled = stats.settled,
			"ledger connected to {}",
			chain.url()
		);
		let wakeup = Arc::new(Notify::new());
		let ledger = Arc::new(Self {
			chain: chain.clone(),
			genesis,
			account,
			session: config.session,
			base_model: config.base_model,
			outbox: outbox.clone(),
			api_keys: config.api_keys,
			best_block: AtomicU32::new(snapshot.block),
			commitments: Default::default(),
			submits: config.submit,
			outbox_keep_blocks: config.outbox_keep_blocks,
			pruning: Default::default(),
			datanets_changed: watch::channel(0).0,
			snapshot: RwLock::new(Arc::new(snapshot)),
			wakeup: wakeup.clone(),
			workers: Default::default(),
			workers_changed: AtomicU64::new(0),
		});
		let submitter = if config.submit {
			let judged = Arc::downgrade(&ledger);
			let on_judged = Arc::new(move |ids: &[ContentHash]| {
				if let Some(ledger) = judged.upgrade() {
					ledger.release(ids);
				}
			});
			let submitter =
				Submitter::new(chain, outbox, config.account.signer().clone(), config.submitter, wakeup).on_judged(on_judged);
			tokio::spawn(submitter.run(shutdown.clone()))
		} else {
			tracing::info!("receipts stay in the outbox: this worker does not submit them");
			tokio::spawn(async {})
		};
		tokio::spawn(ledger.clone().refresh(shutdown));
		Ok((ledger, submitter))
	}

	pub fn genesis(&self) -> ContentHash {
		self.genesis
	}

	pub fn account(&self) -> &AccountId32 {
		&self.account
	}

	/// The session key, which signs receipts and vouches for the worker's p2p announcements.
	pub fn session(&self) -> &Sr25519Key {
		&self.session
	}

	/// Every registered worker, read again after a block with a workers-pallet event, and at
	/// least every 30 s: what peers' announcements are checked against. A read that fails or
	/// takes over 5 s gives the last one, if any (and is retried on the next call).
	pub async fn workers(&self) -> Result<Arc<HashMap<AccountId32, WorkerInfo>>, ChainError> {
		let mut cached = self.workers.lock().await;
		let changes = self.workers_changed.load(Ordering::Relaxed);
		if let Some((read_at, read_after, workers)) = &*cached {
			if read_at.elapsed() < WORKERS_TTL && *read_after == changes {
				return Ok(workers.clone());
			}
		}
		let read = tokio::time::timeout(WORKERS_READ_TIMEOUT, self.chain.workers())
			.await
			.unwrap_or_else(|_| Err(ChainError::State("reading the registered workers timed out".into())));
		match (read, &*cached) {
			(Ok(workers), _) => {
				let workers = Arc::new(workers);
				*cached = Some((Instant::now(), changes, workers.clone()));
				Ok(workers)
			},
			(Err(e), Some((_, _, stale))) => {
				tracing::warn!("registered workers not read again, the last read is used: {e}");
				Ok(stale.clone())
			},
			(Err(e), None) => Err(e),
		}
	}

	pub fn outbox(&self) -> &Arc<Outbox> {
		&self.outbox
	}

	/// Holds `amount` of the payer's budget for a priced request (see [`Commitments`]), or 402
	/// when requests priced meanwhile took what it needs.
	pub fn reserve(self: &Arc<Self>, auth: &Authorisation, amount: Balance) -> Result<Reservation, LedgerError> {
		let mut commitments = self.commitments.lock().expect("commitments lock");
		let committed = commitments.by_payer.get(&auth.payer).copied().unwrap_or(0);
		if amount > auth.per_request || committed.saturating_add(amount) > auth.shared {
			return Err(LedgerError::PaymentRequired(format!(
				"payer {}'s requests not yet settled leave less than this one may cost ({amount})",
				auth.payer
			)));
		}
		commitments.add(&auth.payer, amount);
		tracing::debug!(payer = %auth.payer, amount, committed = committed + amount, shared = auth.shared, "budget reserved");
		Ok(Reservation { ledger: self.clone(), payer: auth.payer.clone(), amount, receipt: None })
	}

	/// Receipts the chain has judged: what was held for them is free again (the chain has
	/// charged the fee, or refused it).
	pub fn release(&self, receipts: &[ContentHash]) {
		let mut commitments = self.commitments.lock().expect("commitments lock");
		for id in receipts {
			if let Some((payer, amount)) = commitments.by_receipt.remove(id) {
				commitments.remove(&payer, amount);
			}
		}
	}

	/// What the payer's unsettled requests at this worker may still cost.
	fn committed(&self, payer: &AccountId32) -> Balance {
		self.commitments.lock().expect("commitments lock").by_payer.get(payer).copied().unwrap_or(0)
	}

	/// Changes whenever a block's events touch DataNet contributions: the served items' ids
	/// should be synced again.
	pub fn datanets_changed(&self) -> watch::Receiver<u64> {
		self.datanets_changed.subscribe()
	}

	pub fn chain(&self) -> &ChainClient {
		&self.chain
	}

	pub fn snapshot(&self) -> Arc<ChainSnapshot> {
		self.snapshot.read().expect("snapshot lock").clone()
	}

	/// Follows the best chain: notes each block's number, and re-reads the snapshot when a
	/// block's events touch registrations or prices (or cannot be read). Resubscribes after a
	/// lost connection.
	async fn refresh(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
		let mut next_prune = 0;
		loop {
			let mut blocks = match self.chain.api().stream_best_blocks().await {
				Ok(blocks) => blocks,
				Err(e) => {
					tracing::debug!("cannot follow the chain yet: {e}");
					tokio::select! {
						_ = tokio::time::sleep(Duration::from_secs(2)) => continue,
						_ = shutdown.changed() => return,
					}
				},
			};
			let mut stale = true;
			loop {
				let block = tokio::select! {
					block = blocks.next() => block,
					_ = shutdown.changed() => return,
				};
				let Some(Ok(block)) = block else { break };
				let number = u32::try_from(block.number()).unwrap_or(u32::MAX);
				let (registry, workers, datanets) = match block.at().await {
					Ok(at) => match at.events().fetch().await {
						Ok(events) => events.iter().fold((false, false, false), |(registry, workers, datanets), e| match e {
							Ok(e) => (
								registry || matches!(e.pallet_name(), "Registry" | "Workers") || e.event_name() == "FeeParamsSet",
								workers || e.pallet_name() == "Workers",
								datanets || e.pallet_name() == "DataNets",
							),
							Err(_) => (true, true, true),
						}),
						Err(_) => (true, true, true),
					},
					Err(_) => (true, true, true),
				};
				stale |= registry;
				if number >= next_prune {
					next_prune = number.saturating_add(PRUNE_EVERY_BLOCKS);
					self.prune_outbox(number);
				}
				if workers {
					self.workers_changed.fetch_add(1, Ordering::Relaxed);
				}
				if datanets {
					self.datanets_changed.send_modify(|n| *n += 1);
				}
				if stale {
					match self.chain.snapshot(&self.account).await {
						Ok(snapshot) => {
							*self.snapshot.write().expect("snapshot lock") = Arc::new(snapshot);
							stale = false;
						},
						Err(e) => tracing::debug!("chain snapshot not refreshed: {e}"),
					}
				}
				// Requests are priced and their receipts' expiry set from the best block, so it
				// moves only once the snapshot holds every price change up to it: a receipt then
				// expires before any rise it was not priced with is charged (a rise waits a
				// receipt's lifetime from its block).
				if !stale {
					self.best_block.fetch_max(number, Ordering::Relaxed);
				}
			}
			tracing::debug!("best-block subscription ended; resubscribing");
		}
	}

	/// Forgets, off the async workers, the judged receipts that expired `outbox_keep_blocks`
	/// before block `now`, so the outbox of a worker that runs for months stays bounded.
	fn prune_outbox(&self, now: u32) {
		if self.pruning.swap(true, Ordering::AcqRel) {
			return;
		}
		let (outbox, before) = (self.outbox.clone(), now.saturating_sub(self.outbox_keep_blocks));
		let pruning = self.pruning.clone();
		tokio::task::spawn_blocking(move || {
			match outbox.prune_expired(before) {
				Ok(0) => {},
				Ok(pruned) => tracing::info!("outbox: {pruned} judged receipts that expired before block {before} forgotten"),
				Err(e) => tracing::warn!("outbox not pruned: {e}"),
			}
			pruning.store(false, Ordering::Release);
		});
	}

	/// Who pays for the request with this body: a voucher in [`super::VOUCHER_HEADER`], or an
	/// API key whose payer set an allowance for this worker. Checked before any work.
	pub async fn authorise(
		&self,
		voucher_header: Option<&str>,
		bearer: Option<&str>,
		body: &[u8],
		request_id: &str,
	) -> Result<Authorisation, LedgerError> {
		let snapshot = self.snapshot();
		let best = self.best_block.load(Ordering::Relaxed).max(snapshot.block);
		// A receipt must reach a block before it expires; leave the submitter a few blocks.
		let latest_expiry = best.saturating_add(snapshot.max_receipt_lifetime);
		if let Some(header) = voucher_header {
			let signed = decode_voucher(header).ok_or_else(|| {
				LedgerError::PaymentRequired(format!("the {} header is not a hex SCALE-encoded signed voucher", super::VOUCHER_HEADER))
			})?;
			let voucher = &signed.voucher;
			if !voucher.verify(&signed.signature, &self.genesis) {
				return Err(LedgerError::PaymentRequired("the voucher's signature is not its payer's on this chain".into()));
			}
			if voucher.worker != self.account {
				return Err(LedgerError::PaymentRequired(format!("the voucher is for worker {}, not this one ({})", voucher.worker, self.account)));
			}
			if voucher.request_hash != voucher_request_hash(body) {
				return Err(LedgerError::PaymentRequired(
					"the voucher's request hash is not the blake2-256 of this request's body".into(),
				));
			}
			if voucher.expires_at < best.saturating_add(MIN_BLOCKS_TO_SETTLE) {
				return Err(LedgerError::PaymentRequired(format!(
					"the voucher expires at block {}, too soon to settle (best block {best})",
					voucher.expires_at
				)));
			}
			// The chain refuses a voucher that outlives its receipt, and a receipt may expire
			// at most the receipt lifetime ahead.
			if voucher.expires_at > latest_expiry {
				return Err(LedgerError::PaymentRequired(format!(
					"the voucher expires at block {}, after the latest receipt expiry the chain allows ({latest_expiry})",
					voucher.expires_at
				)));
			}
			if self.outbox.has_request(&voucher.request_hash)? {
				return Err(LedgerError::AlreadyServed(format!(
					"request {} was served already; a voucher pays for one request",
					hex_hash(&voucher.request_hash)
				)));
			}
			let funds = self.chain.payer_funds(&voucher.payer, &self.account).await?;
			if funds.credit.saturating_sub(self.committed(&voucher.payer)) == 0 || voucher.max_fee == 0 {
				return Err(LedgerError::PaymentRequired(format!(
					"payer {} has no credit on chain beyond what its unsettled requests may cost",
					voucher.payer
				)));
			}
			return Ok(Authorisation {
				payer: voucher.payer.clone(),
				request_hash: voucher.request_hash,
				per_request: voucher.max_fee,
				shared: funds.credit,
				expires_at: voucher.expires_at,
				voucher: Some(signed),
			});
		}
		let Some(payer) = bearer.and_then(|key| self.api_keys.get(key)) else {
			return Err(LedgerError::PaymentRequired(format!(
				"payment required: send a payer-signed voucher in the {} header, or use an API key whose payer set an allowance for this worker",
				super::VOUCHER_HEADER
			)));
		};
		let funds = self.chain.payer_funds(payer, &self.account).await?;
		let committed = self.committed(payer);
		let shared = funds.allowance.min(funds.credit);
		if shared.saturating_sub(committed) == 0 {
			return Err(LedgerError::PaymentRequired(format!(
				"payer {payer} has {} credit and {} allowance for this worker, {committed} of it held for requests not yet settled",
				funds.credit, funds.allowance
			)));
		}
		// Equal bodies are different requests here: the request id makes the hash unique.
		let mut hashed = body.to_vec();
		hashed.extend_from_slice(request_id.as_bytes());
		Ok(Authorisation {
			payer: payer.clone(),
			request_hash: content_hash(&hashed),
			voucher: None,
			per_request: Balance::MAX,
			shared,
			expires_at: latest_expiry,
		})
	}

	/// Prices the request against the current snapshot; see [`price_request`].
	pub fn price(
		&self,
		auth: &Authorisation,
		adapter_hash: Option<ContentHash>,
		template_hash: Option<ContentHash>,
		grounded: bool,
		prompt_tokens: usize,
	) -> Result<Priced, LedgerError> {
		let available = auth.per_request.min(auth.shared.saturating_sub(self.committed(&auth.payer)));
		price_request(&self.snapshot(), self.base_model, available, adapter_hash, template_hash, grounded, prompt_tokens)
	}

	/// Signs the receipt of a served request and commits it to the outbox (fsynced) before the
	/// response completes; returns the receipt id. Runs on the blocking pool.
	pub async fn issue(
		self: &Arc<Self>,
		auth: Authorisation,
		mut reservation: Reservation,
		priced: &Priced,
		output: String,
		prompt_tokens: usize,
		completion_tokens: usize,
		attribution: Vec<AttributionEntry>,
	) -> Result<ContentHash, LedgerError> {
		let served = Served {
			payer: auth.payer,
			request_hash: auth.request_hash,
			output,
			base_model: self.base_model,
			adapter: priced.adapter,
			prompt: priced.prompt,
			prompt_tokens: u32::try_from(prompt_tokens).unwrap_or(u32::MAX),
			completion_tokens: u32::try_from(completion_tokens).unwrap_or(u32::MAX),
			attribution,
			expires_at: auth.expires_at,
			voucher: auth.voucher,
		};
		let ledger = self.clone();
		let appended = tokio::task::spawn_blocking(move || {
			let signed = sign_receipt(&ledger.account, &ledger.session, &ledger.genesis, served);
			ledger.outbox.append(&signed)
		})
		.await
		.map_err(|e| LedgerError::Outbox(OutboxError::Db(format!("outbox task: {e}"))))?;
		let id = match appended {
			// The same voucher sent twice at once: both passed the check, one got the receipt.
			Err(OutboxError::DuplicateRequest(request)) => {
				return Err(LedgerError::AlreadyServed(format!("request {request} was served already; a voucher pays for one request")))
			},
			other => other?,
		};
		reservation.receipt = Some(id);
		drop(reservation);
		self.wakeup.notify_one();
		Ok(id)
	}
}

/// Prices a request: the adapter and prompt must be registered (by the hashes of the files the
/// worker serves), and `budget` must cover the fixed parts and the prompt. The retrieval part is
/// counted for the most items a receipt may name, so span matches found after generation can
/// never push the fee past the budget.
pub fn price_request(
	snapshot: &ChainSnapshot,
	base_model: BaseModelId,
	budget: Balance,
	adapter_hash: Option<ContentHash>,
	template_hash: Option<ContentHash>,
	grounded: bool,
	prompt_tokens: usize,
) -> Result<Priced, LedgerError> {
	let worker_rate = snapshot.worker.as_ref().map_or(0, |w| w.compute_price_per_1k_tokens);
	let adapter: Option<&AdapterInfo> = match adapter_hash {
		Some(hash) => Some(snapshot.adapters.get(&hash).filter(|a| a.base_model == base_model).ok_or_else(|| {
			LedgerError::NotRegistered(
				"model",
				format!("adapter {} is not registered on chain for base model {base_model}", hex_hash(&hash)),
			)
		})?),
		None => None,
	};
	let prompt = match template_hash {
		Some(hash) => Some(snapshot.prompts.get(&hash).ok_or_else(|| {
			LedgerError::NotRegistered("prompt_template", format!("prompt template {} is not registered on chain", hex_hash(&hash)))
		})?),
		None => None,
	};
	let items = if grounded { Balance::from(MAX_ATTRIBUTION_ENTRIES) } else { 0 };
	let fixed = prompt
		.map_or(0, |p| p.price_per_call)
		.saturating_add(snapshot.retrieval_price.saturating_mul(items));
	let rate = worker_rate.saturating_add(adapter.map_or(0, |a| a.price_per_1k_tokens));
	if fixed > budget {
		return Err(LedgerError::PaymentRequired(format!(
			"the authorised {budget} does not cover this request's fixed price {fixed}"
		)));
	}
	// fee ≤ ⌊t·w/1000⌋ + ⌊t·a/1000⌋ + fixed ≤ t·(w+a)/1000 + fixed ≤ budget.
	let max_total_tokens = (rate > 0).then(|| {
		let tokens = (budget - fixed).saturating_mul(1000) / rate;
		u64::try_from(tokens).unwrap_or(u64::MAX)
	});
	if let Some(max) = max_total_tokens {
		if max <= prompt_tokens as u64 {
			return Err(LedgerError::PaymentRequired(format!(
				"the authorised {budget} pays for {max} tokens; the prompt alone has {prompt_tokens}"
			)));
		}
	}
	Ok(Priced {
		adapter: adapter.map(|a| (a.id, adapter_hash.unwrap_or_default())),
		prompt: prompt.map(|p| (p.id, template_hash.unwrap_or_default())),
		provenance: adapter.map(|a| a.provenance.clone()).unwrap_or_default(),
		max_total_tokens,
		fixed,
		rate_per_1k: rate,
	})
}

/// A voucher must leave the submitter at least this many blocks to settle its receipt.
const MIN_BLOCKS_TO_SETTLE: u32 = 5;

/// The worker can earn only if the chain knows it with these keys and this base model.
fn check_registration(snapshot: &ChainSnapshot, config: &LedgerConfig) -> anyhow::Result<()> {
	let account = config.account.account();
	let Some(worker) = &snapshot.worker else {
		anyhow::bail!("account {account} is not registered as a worker; run `openledger-worker chain register` first");
	};
	if worker.session_key != config.session.public() {
		anyhow::bail!(
			"the session key {} is not the one registered for {account}; rotate it with `openledger-worker chain rotate-key`",
			config.session.account()
		);
	}
	if !worker.active {
		anyhow::bail!("worker {account} is not active (unbonding or slashed)");
	}
	if !worker.serves.contains(&config.base_model) {
		anyhow::bail!("worker {account} is not registered to serve base model {}", config.base_model);
	}
	match snapshot.base_models.get(&config.base_model) {
		None => anyhow::bail!("base model {} is not registered on chain", config.base_model),
		Some((_, false)) => anyhow::bail!("base model {} is retired", config.base_model),
		Some((hash, true)) if *hash != config.base_model_hash => anyhow::bail!(
			"the base model file's hash {} is not base model {}'s registered weights hash {}",
			hex_hash(&config.base_model_hash),
			config.base_model,
			hex_hash(hash)
		),
		Some(_) => Ok(()),
	}
}

#[cfg(test)]
mod tests {
	use super::*;
	use crate::chain::{PromptInfo, WorkerInfo};
	use openledger_primitives::{
		fees::{split_fee, FeeInputs, TrainingSource, WeightedItem},
		PPM,
	};
	use polkadot_sdk::sp_runtime::Permill;
	use proptest::prelude::*;

	fn snapshot(worker_rate: Balance, adapter_rate: Balance, prompt_price: Balance, retrieval: Balance) -> ChainSnapshot {
		let mut s = ChainSnapshot { retrieval_price: retrieval, max_receipt_lifetime: 100, ..ChainSnapshot::default() };
		s.worker = Some(WorkerInfo {
			session_key: Default::default(),
			compute_price_per_1k_tokens: worker_rate,
			serves: vec![0],
			stake: 1,
			active: true,
		});
		s.adapters.insert(
			ContentHash::repeat_byte(1),
			AdapterInfo {
				id: 4,
				owner: AccountId32::new([2; 32]),
				base_model: 0,
				price_per_1k_tokens: adapter_rate,
				provenance: vec![(0, 600_000)],
			},
		);
		s.prompts.insert(
			ContentHash::repeat_byte(2),
			PromptInfo { id: 9, owner: AccountId32::new([3; 32]), price_per_call: prompt_price },
		);
		s
	}

	#[test]
	fn unregistered_adapters_and_prompts_are_not_served() {
		let s = snapshot(10, 10, 10, 1);
		let unknown = Some(ContentHash::repeat_byte(7));
		assert!(matches!(price_request(&s, 0, 1_000_000, unknown, None, false, 5), Err(LedgerError::NotRegistered("model", _))));
		assert!(matches!(
			price_request(&s, 0, 1_000_000, None, unknown, false, 5),
			Err(LedgerError::NotRegistered("prompt_template", _))
		));
		// Registered, but for another base model.
		assert!(matches!(
			price_request(&s, 1, 1_000_000, Some(ContentHash::repeat_byte(1)), None, false, 5),
			Err(LedgerError::NotRegistered("model", _))
		));
		let priced = price_request(&s, 0, 1_000_000, Some(ContentHash::repeat_byte(1)), Some(ContentHash::repeat_byte(2)), false, 5).unwrap();
		assert_eq!(priced.adapter, Some((4, ContentHash::repeat_byte(1))));
		assert_eq!(priced.prompt, Some((9, ContentHash::repeat_byte(2))));
		assert_eq!(priced.provenance, vec![(0, 600_000)]);
	}

	#[test]
	fn a_budget_below_the_fixed_price_or_the_prompt_is_payment_required() {
		let s = snapshot(1_000, 0, 500, 0);
		let template = Some(ContentHash::repeat_byte(2));
		assert!(matches!(price_request(&s, 0, 499, None, template, false, 1), Err(LedgerError::PaymentRequired(_))));
		// 600 - 500 = 100 pays for 100 tokens at 1000 per 1k; a 100-token prompt leaves none.
		assert!(matches!(price_request(&s, 0, 600, None, template, false, 100), Err(LedgerError::PaymentRequired(_))));
		assert_eq!(price_request(&s, 0, 600, None, template, false, 99).unwrap().max_total_tokens, Some(100));
	}

	proptest! {
		/// Whatever the prices, budget and attribution, a request that uses no more tokens than
		/// priced is charged at most its budget by the runtime's own fee function.
		#[test]
		fn the_fee_never_exceeds_the_budget(
			worker_rate in 0u128..10u128.pow(20),
			adapter_rate in 0u128..10u128.pow(20),
			prompt_price in 0u128..10u128.pow(18),
			retrieval in 0u128..10u128.pow(16),
			budget in 0u128..10u128.pow(22),
			prompt_tokens in 0usize..4096,
			items in 0u32..=MAX_ATTRIBUTION_ENTRIES,
			use_adapter: bool,
			use_prompt: bool,
		) {
			let s = snapshot(worker_rate, adapter_rate, prompt_price, retrieval);
			let adapter = use_adapter.then(|| ContentHash::repeat_byte(1));
			let template = use_prompt.then(|| ContentHash::repeat_byte(2));
			let Ok(priced) = price_request(&s, 0, budget, adapter, template, true, prompt_tokens) else { return Ok(()) };
			let tokens = priced.max_total_tokens.unwrap_or(1 << 20);
			prop_assert!(tokens > prompt_tokens as u64);
			let weighted: Vec<WeightedItem> =
				(0..items).map(|item| WeightedItem { datanet: 0, item, weight_ppm: PPM / items.max(1) }).collect();
			let split = split_fee(&FeeInputs {
				tokens,
				worker_rate_per_1k: worker_rate,
				adapter_rate_per_1k: if use_adapter { adapter_rate } else { 0 },
				prompt_price: if use_prompt { prompt_price } else { 0 },
				retrieval_price: retrieval,
				items: &weighted,
				training: &[TrainingSource { datanet: 0, share_ppm: 600_000, accepted_items: 3 }],
				protocol_share: Permill::from_percent(5),
				data_share: Permill::from_percent(30),
			})
			.unwrap();
			prop_assert!(split.fee <= budget, "fee {} > budget {budget}", split.fee);
		}
	}
}
