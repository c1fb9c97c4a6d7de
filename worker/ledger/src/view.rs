//! The worker's view of the chain: the snapshot of registrations and prices that requests are
//! priced against, the best block their receipts expire from, and the registered workers that
//! peers' announcements are checked against. It follows the best chain on its own; the rest of
//! the ledger only reads it.

use std::{
	collections::HashMap,
	sync::{
		atomic::{AtomicU32, AtomicU64, Ordering},
		Arc, RwLock,
	},
	time::{Duration, Instant},
};

use polkadot_sdk::sp_runtime::AccountId32;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::chain::{ChainClient, ChainError, ChainSnapshot, WorkerInfo};

/// How long the registered workers read for the p2p listing are used before being read again.
const WORKERS_TTL: Duration = Duration::from_secs(30);
const WORKERS_READ_TIMEOUT: Duration = Duration::from_secs(5);

pub struct ChainView {
	chain: ChainClient,
	/// The worker's account: the snapshot holds its registration and prices.
	account: AccountId32,
	snapshot: RwLock<Arc<ChainSnapshot>>,
	/// The best block seen whose price changes the snapshot holds (receipts expire from it).
	best_block: AtomicU32,
	/// Bumped when a block's events change DataNet contributions (accepted, rejected, withdrawn,
	/// reaped from a closing DataNet).
	datanets_changed: watch::Sender<u64>,
	/// Every registered worker, when it was read and the value of `workers_changed` then (see
	/// [`ChainView::workers`]).
	workers: tokio::sync::Mutex<Option<(Instant, u64, Arc<HashMap<AccountId32, WorkerInfo>>)>>,
	/// Bumped when a block has an event of the workers pallet (a registration, a key rotation).
	workers_changed: AtomicU64,
}

impl ChainView {
	pub(crate) fn new(chain: ChainClient, account: AccountId32, snapshot: ChainSnapshot) -> Self {
		Self {
			chain,
			account,
			best_block: AtomicU32::new(snapshot.block),
			snapshot: RwLock::new(Arc::new(snapshot)),
			datanets_changed: watch::channel(0).0,
			workers: Default::default(),
			workers_changed: AtomicU64::new(0),
		}
	}

	pub fn chain(&self) -> &ChainClient {
		&self.chain
	}

	pub fn snapshot(&self) -> Arc<ChainSnapshot> {
		self.snapshot.read().expect("snapshot lock").clone()
	}

	/// The best block requests are priced at (never behind the snapshot's).
	pub fn best_block(&self) -> u32 {
		self.best_block.load(Ordering::Relaxed).max(self.snapshot().block)
	}

	/// Changes whenever a block's events touch DataNet contributions: the served items' ids
	/// should be synced again.
	pub fn datanets_changed(&self) -> watch::Receiver<u64> {
		self.datanets_changed.subscribe()
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

	/// Follows the best chain: notes each block's number, and re-reads the snapshot when a
	/// block's events touch registrations or prices (or cannot be read). Calls `on_block` with
	/// each block's number. Resubscribes after a lost connection.
	pub(crate) async fn follow(self: Arc<Self>, shutdown: CancellationToken, mut on_block: impl FnMut(u32)) {
		loop {
			let mut blocks = match self.chain.api().stream_best_blocks().await {
				Ok(blocks) => blocks,
				Err(e) => {
					tracing::debug!("cannot follow the chain yet: {e}");
					tokio::select! {
						_ = tokio::time::sleep(Duration::from_secs(2)) => continue,
						_ = shutdown.cancelled() => return,
					}
				},
			};
			let mut stale = true;
			// Warned once when the snapshot falls behind, told once when it catches up.
			let mut warned = false;
			loop {
				let block = tokio::select! {
					block = blocks.next() => block,
					_ = shutdown.cancelled() => return,
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
				on_block(number);
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
							if std::mem::take(&mut warned) {
								tracing::info!(block = number, "chain snapshot current again");
							}
						},
						Err(e) if !warned => {
							warned = true;
							tracing::warn!(
								block = number,
								"chain snapshot not refreshed: prices and registrations may be stale, and receipts' expiry does not move on until it is: {e}"
							);
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
}
