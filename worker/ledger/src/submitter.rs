//! The submitter: one task per signing key (so nonces never race) that takes queued receipts
//! from the outbox, oldest first, submits them in batches through `attribution.submit_receipts`,
//! waits for inclusion and records each receipt's verdict from the block's events. A failed
//! submission (node down, connection lost, transaction dropped) is retried with backoff; the
//! receipts stay queued until a verdict is recorded, so nothing is lost, and a receipt settled
//! before (by this worker, before a crash, or by anyone) comes back `AlreadySettled`, which
//! counts as settled — nothing is paid twice. A call that fails on chain (a receipt the runtime
//! cannot take broke the whole call) is split in halves until the receipt that fails alone is
//! found; that one is set aside, so no receipt can hold up the others.

use std::{collections::HashMap, future::Future, sync::Arc, time::Duration};

use openledger_primitives::ContentHash;
use openledger_tasks::blocking;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

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
	pub set_aside: usize,
}

impl Round {
	fn count(&mut self, outcomes: &[(u64, ContentHash, Outcome)]) {
		for (_, _, outcome) in outcomes {
			match outcome {
				Outcome::Settled { .. } => self.settled += 1,
				Outcome::Rejected { .. } => self.rejected += 1,
				Outcome::SetAside { .. } => self.set_aside += 1,
			}
		}
	}
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

	/// Submits until `shutdown` is cancelled and the queue is empty or the chain unreachable.
	pub async fn run(self, shutdown: CancellationToken) {
		let mut backoff = self.options.backoff_min;
		loop {
			match self.round().await {
				Ok(None) => {
					if shutdown.is_cancelled() {
						tracing::info!("receipt submitter stopped: the outbox is empty");
						return;
					}
					tokio::select! {
						_ = self.wakeup.notified() => {},
						_ = tokio::time::sleep(self.options.idle_poll) => {},
						_ = shutdown.cancelled() => {},
					}
				},
				Ok(Some(round)) => {
					backoff = self.options.backoff_min;
					tracing::info!(
						settled = round.settled,
						rejected = round.rejected,
						set_aside = round.set_aside,
						"receipt batch included"
					);
				},
				Err(e) => {
					if shutdown.is_cancelled() {
						tracing::warn!("receipt submitter stopped with receipts queued ({e}); they are sent on the next start");
						return;
					}
					tracing::warn!("submitting receipts failed, retrying in {backoff:?}: {e}");
					tokio::select! {
						_ = tokio::time::sleep(backoff) => {},
						_ = shutdown.cancelled() => {},
					}
					backoff = (backoff * 2).min(self.options.backoff_max);
				},
			}
		}
	}

	/// Submits one batch; `None` when the queue is empty.
	pub async fn round(&self) -> Result<Option<Round>, ChainError> {
		let (outbox, batch) = (self.outbox.clone(), self.options.batch.max(1));
		let queued = blocking(move || outbox.queued(batch)).await.map_err(|e| ChainError::State(e.to_string()))?;
		if queued.is_empty() {
			return Ok(None);
		}
		let mut round = Round::default();
		let submit = |part: &[Queued]| {
			let receipts: Vec<_> = part.iter().map(|q| subxt::utils::Static(q.receipt.clone())).collect();
			let call = runtime::tx().attribution().submit_receipts(BoundedVec(receipts));
			let part = part.to_vec();
			async move {
				let included = self.chain.submit(&call, &self.signer).await?;
				verdicts(&part, &included)
			}
		};
		let record = |outcomes: Vec<(u64, ContentHash, Outcome)>| {
			round.count(&outcomes);
			self.record(outcomes)
		};
		submit_splitting(&queued, &submit, record).await?;
		Ok(Some(round))
	}

	/// Stores the verdicts and tells the judged hook.
	async fn record(&self, outcomes: Vec<(u64, ContentHash, Outcome)>) -> Result<(), ChainError> {
		let ids: Vec<ContentHash> = outcomes.iter().map(|(_, id, _)| *id).collect();
		let outbox = self.outbox.clone();
		blocking(move || outbox.record(&outcomes)).await.map_err(|e| ChainError::State(e.to_string()))?;
		if let Some(hook) = &self.on_judged {
			hook(&ids);
		}
		Ok(())
	}
}

/// Submits `queued` in one call and records its verdicts. A call that fails on chain is split in
/// halves, each submitted (and split) the same way, so one receipt the runtime cannot take costs
/// about log2(batch) more calls and holds up nothing; a receipt whose call fails alone is set
/// aside. Verdicts are recorded as each part is included, so a part settled is never lost to a
/// later part's transport error (which ends the round, to be retried).
async fn submit_splitting<S, SF, R, RF>(queued: &[Queued], submit: &S, mut record: R) -> Result<(), ChainError>
where
	S: Fn(&[Queued]) -> SF,
	SF: Future<Output = Result<Vec<(u64, ContentHash, Outcome)>, ChainError>>,
	R: FnMut(Vec<(u64, ContentHash, Outcome)>) -> RF,
	RF: Future<Output = Result<(), ChainError>>,
{
	// Depth-first over halves, without recursion in an async fn: a stack of parts to submit.
	let mut parts = vec![queued];
	while let Some(part) = parts.pop() {
		match submit(part).await {
			Ok(outcomes) => record(outcomes).await?,
			Err(ChainError::Dispatch(message)) if part.len() == 1 => {
				let q = &part[0];
				tracing::warn!(receipt = %hex::encode(q.id), "receipt set aside: a call with it alone fails on chain: {message}");
				record(vec![(q.seq, q.id, Outcome::SetAside { reason: message })]).await?;
			},
			Err(ChainError::Dispatch(message)) => {
				tracing::warn!(receipts = part.len(), "a batch failed on chain ({message}); submitting it in halves");
				let (first, second) = part.split_at(part.len() / 2);
				// Popped first-half first, so receipts keep their oldest-first order.
				parts.push(second);
				parts.push(first);
			},
			Err(e) => return Err(e),
		}
	}
	Ok(())
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

#[cfg(test)]
mod tests {
	use super::*;
	use crate::test_receipt;
	use std::sync::Mutex;

	fn queued(n: u8) -> Queued {
		let receipt = test_receipt(n);
		Queued { seq: u64::from(n), id: receipt.receipt.id().into(), receipt }
	}

	/// A chain on which any call that carries receipt 5 fails, as a batch did when one payout
	/// could not be made: every other receipt settles, 5 is set aside, in few calls.
	#[tokio::test]
	async fn a_receipt_that_fails_every_call_it_is_in_is_set_aside_and_blocks_nothing() {
		let batch: Vec<Queued> = (0..16).map(queued).collect();
		let bad = batch[5].id;
		let calls = Mutex::new(0);
		let submit = |part: &[Queued]| {
			*calls.lock().unwrap() += 1;
			let result = if part.iter().any(|q| q.id == bad) {
				Err(ChainError::Dispatch("Balances.Underflow".into()))
			} else {
				Ok(part.iter().map(|q| (q.seq, q.id, Outcome::Settled { block: 3 })).collect())
			};
			async move { result }
		};
		let recorded = Mutex::new(Vec::new());
		let record = |outcomes: Vec<(u64, ContentHash, Outcome)>| {
			recorded.lock().unwrap().extend(outcomes);
			async { Ok(()) }
		};
		submit_splitting(&batch, &submit, record).await.unwrap();
		let recorded = recorded.into_inner().unwrap();
		assert_eq!(recorded.len(), 16, "every receipt has a verdict");
		let seqs: Vec<u64> = recorded.iter().map(|(seq, _, _)| *seq).collect();
		assert_eq!(seqs, (0..16).collect::<Vec<_>>(), "in their queue order");
		for (_, id, outcome) in &recorded {
			if *id == bad {
				assert!(matches!(outcome, Outcome::SetAside { reason } if reason.contains("Underflow")), "{outcome:?}");
			} else {
				assert_eq!(*outcome, Outcome::Settled { block: 3 });
			}
		}
		// 1 whole + 2 per level down to the single receipt (16 → 8 → 4 → 2 → 1): 9 calls.
		assert_eq!(*calls.lock().unwrap(), 9);
	}

	#[tokio::test]
	async fn a_transport_error_keeps_what_was_recorded_and_ends_the_round() {
		let batch: Vec<Queued> = (0..4).map(queued).collect();
		let calls = Mutex::new(0);
		let submit = |part: &[Queued]| {
			let call = { let mut c = calls.lock().unwrap(); *c += 1; *c };
			let result = match call {
				1 => Err(ChainError::Dispatch("Attribution.Something".into())),
				2 => Ok(part.iter().map(|q| (q.seq, q.id, Outcome::Settled { block: 3 })).collect()),
				_ => Err(ChainError::Rpc("connection lost".into())),
			};
			async move { result }
		};
		let recorded = Mutex::new(Vec::new());
		let record = |outcomes: Vec<(u64, ContentHash, Outcome)>| {
			recorded.lock().unwrap().extend(outcomes);
			async { Ok(()) }
		};
		let result = submit_splitting(&batch, &submit, record).await;
		assert!(matches!(result, Err(ChainError::Rpc(_))));
		let seqs: Vec<u64> = recorded.into_inner().unwrap().iter().map(|(seq, _, _)| *seq).collect();
		assert_eq!(seqs, vec![0, 1], "the first half settled and stays recorded; the rest stays queued");
	}
}
