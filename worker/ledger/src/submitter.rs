//! The submitter: one task per signing key (so nonces never race) that takes queued receipts
//! from the outbox, oldest first, submits them in batches through `attribution.submit_receipts`,
//! waits for inclusion and records each receipt's verdict from the block's events. A failed
//! submission (node down, connection lost, transaction dropped) is retried with backoff; the
//! receipts stay queued until a verdict is recorded, so nothing is lost, and a receipt settled
//! before (by this worker, before a crash, or by anyone) comes back `AlreadySettled`, which
//! counts as settled — nothing is paid twice.

use std::{collections::HashMap, sync::Arc, time::Duration};

use openledger_primitives::ContentHash;
use tokio::sync::{watch, Notify};

use super::{
	chain::{runtime, ChainClient, ChainError, Included},
	outbox::{Outbox, Outcome, Queued},
	SignedReceipt,
};
use runtime::runtime_types::{bounded_collections::bounded_vec::BoundedVec, pallet_attribution::types::RejectReason};

/// How the submitter batches and retries.
#[derive(Clone, Debug)]
pub struct SubmitterOptions {
	/// Receipts per `submit_receipts` call (at most the runtime's `MaxReceiptsPerBatch`).
	pub batch: usize,
	/// How long to wait for more receipts when the queue is empty.
	pub idle_poll: Duration,
	/// First and longest wait between failed submissions.
	pub backoff_min: Duration,
	pub backoff_max: Duration,
}

impl Default for SubmitterOptions {
	fn default() -> Self {
		Self {
			batch: 64,
			idle_poll: Duration::from_secs(2),
			backoff_min: Duration::from_millis(500),
			backoff_max: Duration::from_secs(30),
		}
	}
}

pub struct Submitter {
	chain: ChainClient,
	outbox: Arc<Outbox>,
	signer: subxt_signer::sr25519::Keypair,
	options: SubmitterOptions,
	/// Woken when a receipt is appended, so receipts do not wait for `idle_poll`.
	wakeup: Arc<Notify>,
	/// Told the ids of receipts the chain has judged.
	on_judged: Option<JudgedHook>,
}

/// Called with the ids of receipts whose verdict was just recorded.
pub type JudgedHook = Arc<dyn Fn(&[ContentHash]) + Send + Sync>;

/// What one round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Round {
	pub settled: usize,
	pub rejected: usize,
}

impl Submitter {
	pub fn new(
		chain: ChainClient,
		outbox: Arc<Outbox>,
		signer: subxt_signer::sr25519::Keypair,
		options: SubmitterOptions,
		wakeup: Arc<Notify>,
	) -> Self {
		Self { chain, outbox, signer, options, wakeup, on_judged: None }
	}

	/// Calls `hook` with the ids of every batch's judged receipts, once recorded.
	pub fn on_judged(mut self, hook: JudgedHook) -> Self {
		self.on_judged = Some(hook);
		self
	}

	/// Submits until `shutdown` turns true and the queue is empty or the chain unreachable.
	pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
		let mut backoff = self.options.backoff_min;
		loop {
			match self.round().await {
				Ok(None) => {
					if *shutdown.borrow() {
						tracing::info!("receipt submitter stopped: the outbox is empty");
						return;
					}
					tokio::select! {
						_ = self.wakeup.notified() => {},
						_ = tokio::time::sleep(self.options.idle_poll) => {},
						_ = shutdown.changed() => {},
					}
				},
				Ok(Some(round)) => {
					backoff = self.options.backoff_min;
					tracing::info!(settled = round.settled, rejected = round.rejected, "receipt batch included");
				},
				Err(e) => {
					if *shutdown.borrow() {
						tracing::warn!("receipt submitter stopped with receipts queued ({e}); they are sent on the next start");
						return;
					}
					tracing::warn!("submitting receipts failed, retrying in {backoff:?}: {e}");
					tokio::select! {
						_ = tokio::time::sleep(backoff) => {},
						_ = shutdown.changed() => {},
					}
					backoff = (backoff * 2).min(self.options.backoff_max);
				},
			}
		}
	}

	/// Submits one batch; `None` when the queue is empty.
	pub async fn round(&self) -> Result<Option<Round>, ChainError> {
		let (outbox, batch) = (self.outbox.clone(), self.options.batch.max(1));
		let queued = tokio::task::spawn_blocking(move || outbox.queued(batch))
			.await
			.map_err(|e| ChainError::State(format!("outbox task: {e}")))?
			.map_err(|e| ChainError::State(e.to_string()))?;
		if queued.is_empty() {
			return Ok(None);
		}
		let receipts: Vec<_> = queued.iter().map(|q| subxt::utils::Static(q.receipt.clone())).collect();
		let call = runtime::tx().attribution().submit_receipts(BoundedVec(receipts));
		let included = self.chain.submit(&call, &self.signer).await?;
		let outcomes = verdicts(&queued, &included)?;
		let round = Round {
			settled: outcomes.iter().filter(|(_, _, o)| matches!(o, Outcome::Settled { .. })).count(),
			rejected: outcomes.iter().filter(|(_, _, o)| matches!(o, Outcome::Rejected { .. })).count(),
		};
		let ids: Vec<ContentHash> = outcomes.iter().map(|(_, id, _)| *id).collect();
		let outbox = self.outbox.clone();
		tokio::task::spawn_blocking(move || outbox.record(&outcomes))
			.await
			.map_err(|e| ChainError::State(format!("outbox task: {e}")))?
			.map_err(|e| ChainError::State(e.to_string()))?;
		if let Some(hook) = &self.on_judged {
			hook(&ids);
		}
		Ok(Some(round))
	}
}

/// The batch's verdicts by receipt id, as the runtime's events give them.
fn events_verdicts(included: &Included) -> Result<HashMap<ContentHash, Result<(), RejectReason>>, ChainError> {
	let mut by_id = HashMap::new();
	for event in included.events.find::<runtime::attribution::events::ReceiptSettled>() {
		let event = event.map_err(|e| ChainError::State(e.to_string()))?;
		by_id.insert(ContentHash::from(event.receipt_id.0), Ok(()));
	}
	for event in included.events.find::<runtime::attribution::events::ReceiptRejected>() {
		let event = event.map_err(|e| ChainError::State(e.to_string()))?;
		by_id.insert(ContentHash::from(event.receipt_id.0), Err(event.reason));
	}
	Ok(by_id)
}

/// Each queued receipt's verdict from the batch's events. Every receipt of an included batch
/// gets an event; a missing one means the runtime and this worker disagree about the call.
fn verdicts(queued: &[Queued], included: &Included) -> Result<Vec<(u64, ContentHash, Outcome)>, ChainError> {
	let block = included.block;
	let mut by_id = events_verdicts(included)?;
	queued
		.iter()
		.map(|q| {
			let outcome = match by_id.remove(&q.id) {
				Some(Ok(())) => Outcome::Settled { block },
				// Settled before (an earlier submission whose verdict was lost, or a copy someone
				// else submitted): the payees were paid once, which is all this receipt is owed.
				Some(Err(RejectReason::AlreadySettled)) => Outcome::Settled { block },
				Some(Err(reason)) => {
					tracing::warn!(receipt = %hex::encode(q.id), "receipt rejected: {reason:?}");
					Outcome::Rejected { block, reason: format!("{reason:?}") }
				},
				None => {
					return Err(ChainError::State(format!("no verdict for receipt {} in its batch", hex::encode(q.id))))
				},
			};
			Ok((q.seq, q.id, outcome))
		})
		.collect()
}

/// Submits `receipts` once, in batches of `batch`, from any account — for resubmitting an
/// exported outbox or a third party settling someone else's receipts. Returns each receipt's
/// verdict, where an already-settled receipt is reported as rejected `AlreadySettled`, since this
/// caller wants to know.
pub async fn submit_once(
	chain: &ChainClient,
	signer: &subxt_signer::sr25519::Keypair,
	receipts: Vec<SignedReceipt>,
	batch: usize,
) -> Result<Vec<(ContentHash, Result<(), String>)>, ChainError> {
	let mut results = Vec::new();
	for chunk in receipts.chunks(batch.max(1)) {
		let call = runtime::tx()
			.attribution()
			.submit_receipts(BoundedVec(chunk.iter().cloned().map(subxt::utils::Static).collect()));
		let included = chain.submit(&call, signer).await?;
		let verdicts = events_verdicts(&included)?;
		results.extend(verdicts.into_iter().map(|(id, verdict)| (id, verdict.map_err(|reason| format!("{reason:?}")))));
	}
	Ok(results)
}
