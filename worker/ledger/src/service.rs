//! The ledger as the HTTP API uses it: started against the chain (the worker's registration,
//! keys and base model checked), it authorises requests (`authorise.rs`), charges them
//! (`charge.rs`) against the chain as its [`ChainView`] follows it, and keeps their receipts in the
//! outbox for the submitter.

use std::{
	collections::{HashMap, HashSet},
	path::PathBuf,
	sync::{
		atomic::{AtomicBool, Ordering},
		Arc,
	},
	time::Duration,
};

use openledger_primitives::{BaseModelId, ContentHash};
use polkadot_sdk::sp_runtime::AccountId32;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
	chain::{ChainClient, ChainError, ChainSnapshot},
	charge::{Commitments, Pins},
	keys::{hex_hash, Sr25519Key},
	outbox::{Outbox, OutboxError},
	submitter::{Submitter, SubmitterOptions},
	view::ChainView,
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
	/// The file's model family (`llama`, `qwen2`, …), which must be the registered architecture.
	pub base_model_architecture: String,
	pub outbox: PathBuf,
	/// API keys of payers who pay by allowance: `Authorization: Bearer <key>` → payer.
	pub api_keys: HashMap<String, AccountId32>,
	pub submitter: SubmitterOptions,
	/// Whether this process submits its receipts (else they wait in the outbox for
	/// `openledger-worker outbox resubmit`, from this or any account).
	pub submit: bool,
	/// Judged receipts are kept this many blocks past their expiry, then forgotten.
	pub outbox_keep_blocks: u32,
	/// The adapter and prompt ids the operator lets this worker bill.
	pub pins: Pins,
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
	/// 503: the chain no longer accepts this worker's receipts (the reason says why).
	#[error("this worker cannot be paid now: {0}")]
	NotInStanding(String),
	/// 503: the chain cannot be read now.
	#[error("the chain is unavailable: {0}")]
	Chain(#[from] ChainError),
	/// 500: the receipt could not be persisted, so the response is not delivered.
	#[error("the receipt could not be stored: {0}")]
	Outbox(#[from] OutboxError),
}

pub struct Ledger {
	pub(crate) view: Arc<ChainView>,
	pub(crate) genesis: ContentHash,
	pub(crate) account: AccountId32,
	pub(crate) session: Sr25519Key,
	pub(crate) base_model: BaseModelId,
	/// The served base model file's hash and family, which must stay the registered ones.
	base_model_hash: ContentHash,
	base_model_architecture: String,
	pub(crate) outbox: Arc<Outbox>,
	pub(crate) api_keys: HashMap<String, AccountId32>,
	/// What each payer's requests may still cost before the chain settles them.
	pub(crate) commitments: std::sync::Mutex<Commitments>,
	/// Whether this process submits its receipts (and so learns their verdicts).
	pub(crate) submits: bool,
	/// The request hashes of the vouchers being served now (see `VoucherClaim`).
	pub(crate) claims: std::sync::Mutex<HashSet<ContentHash>>,
	pub(crate) pins: Pins,
	outbox_keep_blocks: u32,
	/// Whether an outbox pruning is running (one at a time).
	pruning: Arc<AtomicBool>,
	/// Wakes the submitter when a receipt is issued.
	pub(crate) wakeup: Arc<Notify>,
}

/// How often (in blocks, about an hour) the outbox forgets old judged receipts.
const PRUNE_EVERY_BLOCKS: u32 = 600;

impl Ledger {
	/// Connects, checks the worker's registration against its keys and files, opens the outbox
	/// and starts the submitter and the snapshot refresher. Fails with a one-line reason when
	/// the worker cannot earn (not registered, wrong session key, base model mismatch).
	pub async fn start(config: LedgerConfig, shutdown: CancellationToken) -> anyhow::Result<(Arc<Self>, tokio::task::JoinHandle<()>)> {
		let chain = ChainClient::connect_patiently(&config.chain_url, Duration::from_secs(60)).await?;
		let genesis = chain.genesis();
		let account = config.account.account();
		let snapshot = chain.snapshot(&account).await?;
		let served = ServedBase { id: config.base_model, weights_hash: &config.base_model_hash, architecture: &config.base_model_architecture };
		check_standing(&snapshot, &config.account.account(), &config.session, &served).map_err(anyhow::Error::msg)?;
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
		let view = Arc::new(ChainView::new(chain.clone(), account.clone(), snapshot));
		let ledger = Arc::new(Self {
			view: view.clone(),
			genesis,
			account,
			session: config.session,
			base_model: config.base_model,
			base_model_hash: config.base_model_hash,
			base_model_architecture: config.base_model_architecture,
			outbox: outbox.clone(),
			api_keys: config.api_keys,
			commitments: Default::default(),
			submits: config.submit,
			claims: Default::default(),
			outbox_keep_blocks: config.outbox_keep_blocks,
			pins: config.pins,
			pruning: Default::default(),
			wakeup: wakeup.clone(),
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
		let mut next_prune = 0;
		let pruner = Arc::downgrade(&ledger);
		tokio::spawn(view.follow(shutdown, move |block| {
			if block >= next_prune {
				next_prune = block.saturating_add(PRUNE_EVERY_BLOCKS);
				if let Some(ledger) = pruner.upgrade() {
					ledger.prune_outbox(block);
				}
			}
		}));
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

	/// Whether the chain accepts this worker's receipts now (see [`check_standing`]): re-checked for
	/// every paid request, against the snapshot the chain view keeps current, so a worker whose
	/// stake, key or registration lapses stops taking requests it could not be paid for.
	pub fn standing(&self) -> Result<(), String> {
		let served = ServedBase { id: self.base_model, weights_hash: &self.base_model_hash, architecture: &self.base_model_architecture };
		check_standing(&self.view.snapshot(), &self.account, &self.session, &served)
	}

	/// The chain as this worker follows it: prices, registrations, the best block.
	pub fn view(&self) -> &ChainView {
		&self.view
	}

	pub fn outbox(&self) -> &Arc<Outbox> {
		&self.outbox
	}

	/// Forgets, off the async workers, the judged receipts that expired `outbox_keep_blocks` (at
	/// least the chain's evidence window) before block `now`, so the outbox of a worker that runs for months stays bounded.
	fn prune_outbox(&self, now: u32) {
		if self.pruning.swap(true, Ordering::AcqRel) {
			return;
		}
		let Some(before) = prune_cut(now, self.outbox_keep_blocks, self.view.snapshot().evidence_window) else {
			return;
		};
		let outbox = self.outbox.clone();
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
}

/// The expiry block before which judged receipts may be forgotten at block `now`: `keep_blocks`
/// back, and never less than the chain's `evidence_window` (a voucher's request record goes with
/// its receipt, and until the window has passed a second receipt for that request would prove
/// equivocation). None while the window is unknown (0: the chain's constants not read yet).
fn prune_cut(now: u32, keep_blocks: u32, evidence_window: u32) -> Option<u32> {
	(evidence_window > 0).then(|| now.saturating_sub(keep_blocks.max(evidence_window)))
}

/// The base model a worker serves: its id on chain, and its file's hash and family.
pub struct ServedBase<'a> {
	pub id: BaseModelId,
	pub weights_hash: &'a ContentHash,
	pub architecture: &'a str,
}

/// Whether the chain, as `snapshot` has it, accepts receipts from `account` signed by `session`
/// for the `served` base model: registered with that session key, active with at least the
/// minimum stake, serving that base model, which is registered, active, and has the file's
/// weights hash and family. The reason, when not, says how to fix it.
pub fn check_standing(snapshot: &ChainSnapshot, account: &AccountId32, session: &Sr25519Key, served: &ServedBase) -> Result<(), String> {
	let base_model = served.id;
	let Some(worker) = &snapshot.worker else {
		return Err(format!("account {account} is not registered as a worker; run `openledger-worker chain register` first"));
	};
	if worker.session_key != session.public() {
		return Err(format!(
			"the session key {} is not the one registered for {account}; rotate it with `openledger-worker chain rotate-key`",
			session.account()
		));
	}
	if !worker.active {
		return Err(format!("worker {account} is not active (unbonding or slashed)"));
	}
	if worker.stake < snapshot.min_stake {
		return Err(format!(
			"worker {account} has {} staked, below the minimum {}; add stake with `openledger-worker chain bond-extra`",
			worker.stake, snapshot.min_stake
		));
	}
	if !worker.serves.contains(&base_model) {
		return Err(format!("worker {account} is not registered to serve base model {base_model}"));
	}
	match snapshot.base_models.get(&base_model) {
		None => Err(format!("base model {base_model} is not registered on chain")),
		Some(model) if !model.active => Err(format!("base model {base_model} is retired")),
		Some(model) if &model.weights_hash != served.weights_hash => Err(format!(
			"the base model file's hash {} is not base model {base_model}'s registered weights hash {}",
			hex_hash(served.weights_hash),
			hex_hash(&model.weights_hash)
		)),
		Some(model) if !model.architecture.eq_ignore_ascii_case(served.architecture) => Err(format!(
			"the base model file is a `{}` model, but base model {base_model} is registered as `{}`",
			served.architecture, model.architecture
		)),
		Some(_) => Ok(()),
	}
}

#[cfg(test)]
mod tests {
	use super::*;
	use crate::chain::{BaseModelInfo, WorkerInfo};

	#[test]
	fn receipts_outlive_the_evidence_window_whatever_the_keep_setting() {
		// 30 days kept, 7 days of evidence: the setting decides.
		assert_eq!(prune_cut(1_000_000, 432_000, 100_800), Some(568_000));
		// An operator keeping a day still keeps what a report could use.
		assert_eq!(prune_cut(1_000_000, 14_400, 100_800), Some(899_200));
		assert_eq!(prune_cut(50, 14_400, 100_800), Some(0));
		// Nothing goes before the chain has said how long the window is.
		assert_eq!(prune_cut(1_000_000, 14_400, 0), None);
	}

	#[test]
	fn standing_lapses_with_the_stake_the_key_the_status_or_the_base_model() {
		let session = Sr25519Key::from_suri("//WorkerSession").unwrap();
		let account = Sr25519Key::from_suri("//Worker").unwrap().account();
		let model_hash = ContentHash::repeat_byte(5);
		let mut snapshot = ChainSnapshot { min_stake: 100, ..ChainSnapshot::default() };
		snapshot.base_models.insert(0, BaseModelInfo { weights_hash: model_hash, architecture: "llama".into(), active: true });
		let served = ServedBase { id: 0, weights_hash: &model_hash, architecture: "llama" };
		let check = |s: &ChainSnapshot| check_standing(s, &account, &session, &served);
		assert!(check(&snapshot).unwrap_err().contains("not registered as a worker"));
		snapshot.worker = Some(WorkerInfo {
			session_key: session.public(),
			compute_price_per_1k_tokens: 1,
			serves: vec![0],
			stake: 100,
			active: true,
		});
		assert_eq!(check(&snapshot), Ok(()));
		let lapsed = |change: fn(&mut ChainSnapshot), says: &str| {
			let mut s = snapshot.clone();
			change(&mut s);
			let reason = check(&s).unwrap_err();
			assert!(reason.contains(says), "{reason}");
		};
		lapsed(|s| s.worker.as_mut().unwrap().stake = 99, "below the minimum 100");
		lapsed(|s| s.worker.as_mut().unwrap().active = false, "not active");
		lapsed(|s| s.worker.as_mut().unwrap().session_key = Default::default(), "rotate it");
		lapsed(|s| s.worker.as_mut().unwrap().serves = vec![1], "not registered to serve base model 0");
		lapsed(|s| s.base_models.get_mut(&0).unwrap().active = false, "retired");
		lapsed(|s| s.base_models.get_mut(&0).unwrap().weights_hash = ContentHash::repeat_byte(6), "registered weights hash");
		lapsed(|s| s.base_models.get_mut(&0).unwrap().architecture = "qwen2".into(), "a `llama` model, but base model 0 is registered as `qwen2`");
	}
}
