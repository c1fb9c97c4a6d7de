//! The worker's view of the chain: the snapshot of registrations and prices that requests are
//! priced against, the best block their receipts expire from, and the registered workers that
//! peers' announcements are checked against. It follows the best chain on its own; the rest of
//! the ledger only reads it.

use std::{
	collections::{BTreeSet, HashMap},
	sync::{
		atomic::{AtomicU32, AtomicU64, Ordering},
		Arc, RwLock,
	},
	time::{Duration, Instant},
};

use openledger_primitives::DataNetId;
use polkadot_sdk::sp_runtime::AccountId32;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::chain::{runtime, to_subxt_account, ChainClient, ChainError, ChainSnapshot, RegistryEntry, WorkerInfo};

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
	/// The DataNets whose accepted items changed since the DataNets' follower last took them.
	datanets_changed: watch::Sender<DataNetChanges>,
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
			datanets_changed: watch::channel(DataNetChanges::default()).0,
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

	/// Changes whenever a block's events accept or remove DataNet items: the served items' ids
	/// should be synced again ([`Self::take_datanet_changes`] says which DataNets').
	pub fn datanets_changed(&self) -> watch::Receiver<DataNetChanges> {
		self.datanets_changed.subscribe()
	}

	/// The DataNets changed since the last call, forgotten here.
	pub fn take_datanet_changes(&self) -> DataNetChanges {
		let mut taken = DataNetChanges::default();
		self.datanets_changed.send_if_modified(|pending| {
			taken = std::mem::take(pending);
			false
		});
		taken
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

	/// Follows the best chain: notes each block's number, reads again the registrations a
	/// block's events name, and the whole snapshot when they touch what is not read entry by
	/// entry (base models, fee parameters, this worker) or cannot be read. Calls `on_block` with
	/// each block's number. Resubscribes after a lost connection.
	pub(crate) async fn follow(self: Arc<Self>, shutdown: CancellationToken, mut on_block: impl FnMut(u32)) {
		let own = to_subxt_account(&self.account);
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
			// Registrations named by events and not read again yet.
			let mut pending = BTreeSet::new();
			// Warned once when the snapshot falls behind, told once when it catches up.
			let mut warned = false;
			loop {
				let block = tokio::select! {
					block = blocks.next() => block,
					_ = shutdown.cancelled() => return,
				};
				let Some(Ok(block)) = block else { break };
				let number = u32::try_from(block.number()).unwrap_or(u32::MAX);
				let changes = match block.at().await {
					Ok(at) => match at.events().fetch().await {
						Ok(events) => events.iter().fold(Changes::default(), |mut changes, e| {
							match e.and_then(|e| e.decode_as::<runtime::Event>()) {
								Ok(event) => changes.note(&event, &own),
								Err(_) => changes = Changes::unknown(),
							}
							changes
						}),
						Err(_) => Changes::unknown(),
					},
					Err(_) => Changes::unknown(),
				};
				stale |= changes.snapshot;
				pending.extend(changes.entries);
				on_block(number);
				if changes.workers {
					self.workers_changed.fetch_add(1, Ordering::Relaxed);
				}
				if !changes.datanets.is_empty() {
					self.datanets_changed.send_modify(|pending| pending.merge(changes.datanets));
				}
				if stale || !pending.is_empty() {
					let read = if stale {
						self.chain.snapshot(&self.account).await
					} else {
						self.chain.refresh(&self.snapshot(), &pending).await
					};
					match read {
						Ok(snapshot) => {
							*self.snapshot.write().expect("snapshot lock") = Arc::new(snapshot);
							stale = false;
							pending.clear();
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
				if !stale && pending.is_empty() {
					self.best_block.fetch_max(number, Ordering::Relaxed);
				}
			}
			tracing::debug!("best-block subscription ended; resubscribing");
		}
	}
}

/// DataNets whose served items changed: one was accepted, or started leaving (withdrawn, or
/// reaped from a closing DataNet), or the DataNet closed. An item's removal, a hold later,
/// changes nothing served: it left the served set when it started leaving.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataNetChanges {
	/// Every DataNet: a block whose events could not be read.
	pub all: bool,
	pub ids: BTreeSet<DataNetId>,
}

impl DataNetChanges {
	pub fn is_empty(&self) -> bool {
		!self.all && self.ids.is_empty()
	}

	/// Whether `datanet` may have changed.
	pub fn touches(&self, datanet: DataNetId) -> bool {
		self.all || self.ids.contains(&datanet)
	}

	fn merge(&mut self, other: DataNetChanges) {
		self.all |= other.all;
		self.ids.extend(other.ids);
	}
}

/// What a block's events make the worker read again. Only what it holds: an event that changes
/// nothing it serves (a DataNet's metadata, another worker's stake, a transfer) costs nothing,
/// so nobody can keep every worker reloading with cheap calls.
#[derive(Debug, Default, PartialEq, Eq)]
struct Changes {
	/// The whole snapshot: base models, the fee parameters, this worker's own registration.
	snapshot: bool,
	/// Adapters, prompt templates and tools whose registration changed.
	entries: BTreeSet<RegistryEntry>,
	/// Some worker's registration (what peers' announcements are checked against).
	workers: bool,
	datanets: DataNetChanges,
}

impl Changes {
	/// A block whose events could not be read: anything may have changed.
	fn unknown() -> Self {
		Self {
			snapshot: true,
			entries: BTreeSet::new(),
			workers: true,
			datanets: DataNetChanges { all: true, ids: BTreeSet::new() },
		}
	}

	fn note(&mut self, event: &runtime::Event, own: &subxt::utils::AccountId32) {
		use runtime::{
			attribution::Event as Attribution, data_nets::Event as DataNets, registry::Event as Registry,
			workers::Event as Workers, Event,
		};
		match event {
			Event::Registry(event) => match event {
				// Anyone can commit to a registration, and it changes nothing registered.
				Registry::RegistrationCommitted { .. } => {},
				Registry::BaseModelRegistered { .. } | Registry::BaseModelRetired { .. } => self.snapshot = true,
				Registry::AdapterRegistered { adapter, .. } |
				Registry::AdapterPriceSet { adapter, .. } |
				Registry::AdapterTransferred { adapter, .. } |
				Registry::AdapterRetiring { adapter, .. } |
				Registry::AdapterRetired { adapter, .. } => {
					self.entries.insert(RegistryEntry::Adapter(*adapter));
				},
				Registry::PromptRegistered { prompt, .. } |
				Registry::PromptPriceSet { prompt, .. } |
				Registry::PromptTransferred { prompt, .. } |
				Registry::PromptRetiring { prompt, .. } |
				Registry::PromptRetired { prompt, .. } => {
					self.entries.insert(RegistryEntry::Prompt(*prompt));
				},
				Registry::ToolRegistered { tool, .. } |
				Registry::ToolPriceSet { tool, .. } |
				Registry::ToolTransferred { tool, .. } |
				Registry::ToolRetiring { tool, .. } |
				Registry::ToolRetired { tool, .. } => {
					self.entries.insert(RegistryEntry::Tool(*tool));
				},
			},
			Event::Attribution(Attribution::FeeParamsSet { .. }) => self.snapshot = true,
			Event::Workers(event) => {
				self.workers = true;
				let worker = match event {
					Workers::WorkerRegistered { worker, .. } |
					Workers::WorkerUpdated { worker } |
					Workers::StakeBonded { worker, .. } |
					Workers::SessionKeyRotated { worker, .. } |
					Workers::Unbonded { worker, .. } |
					Workers::WorkerRemoved { worker, .. } |
					Workers::WorkerSlashed { worker, .. } |
					Workers::WorkerEquivocated { worker, .. } => worker,
				};
				self.snapshot |= worker == own;
			},
			Event::DataNets(
				DataNets::ContributionAccepted { datanet, .. } |
				DataNets::ContributionLeaving { datanet, .. } |
				DataNets::DataNetClosed { datanet, .. },
			) => {
				self.datanets.ids.insert(*datanet);
			},
			_ => {},
		}
	}
}

#[cfg(test)]
mod tests {
	use super::*;
	use runtime::{attribution::Event as Attribution, data_nets::Event as DataNets, registry::Event as Registry, workers::Event as Workers, Event};

	fn changes(events: &[Event], own: &subxt::utils::AccountId32) -> Changes {
		let mut changes = Changes::default();
		for event in events {
			changes.note(event, own);
		}
		changes
	}

	#[test]
	fn only_what_the_worker_holds_makes_it_read_again() {
		let own = subxt::utils::AccountId32([1; 32]);
		let other = subxt::utils::AccountId32([2; 32]);
		// A storm of cheap calls that change nothing the worker serves.
		let storm = [
			Event::DataNets(DataNets::DataNetUpdated { datanet: 3 }),
			Event::DataNets(DataNets::ContributionWithdrawn { datanet: 3, item: 1 }),
			Event::Workers(Workers::WorkerUpdated { worker: other.clone() }),
			Event::Registry(Registry::RegistrationCommitted { who: other.clone(), commitment: Default::default() }),
		];
		let seen = changes(&storm, &own);
		assert!(!seen.snapshot && seen.entries.is_empty() && seen.datanets.is_empty(), "{seen:?}");
		assert!(seen.workers, "another worker's change is for the p2p listing only");

		let seen = changes(&[Event::Workers(Workers::WorkerUpdated { worker: own.clone() })], &own);
		assert!(seen.snapshot, "its own registration is in the snapshot");
		// A registry event names what to read again, not the whole registry.
		let named = [
			Event::Registry(Registry::PromptPriceSet { prompt: 4, price_per_call: 9 }),
			Event::Registry(Registry::AdapterRetiring { adapter: 2, until: 99 }),
			Event::Registry(Registry::ToolTransferred { tool: 7, from: other.clone(), to: own.clone() }),
			Event::Registry(Registry::AdapterPriceSet { adapter: 2, price_per_1k_tokens: 1 }),
		];
		let seen = changes(&named, &own);
		assert!(!seen.snapshot && !seen.workers);
		assert_eq!(
			seen.entries,
			BTreeSet::from([RegistryEntry::Adapter(2), RegistryEntry::Prompt(4), RegistryEntry::Tool(7)])
		);
		let base = Event::Registry(Registry::BaseModelRetired { base_model: 0 });
		assert!(changes(&[base], &own).snapshot);
		let fees = Event::Attribution(Attribution::FeeParamsSet {
			protocol_share: runtime::runtime_types::sp_arithmetic::per_things::Permill(1),
			data_share: runtime::runtime_types::sp_arithmetic::per_things::Permill(2),
			retrieval_price: 3,
		});
		assert!(changes(&[fees], &own).snapshot);

		let accepted = [
			Event::DataNets(DataNets::ContributionAccepted { datanet: 5, item: 1, curator: other.clone() }),
			Event::DataNets(DataNets::ContributionLeaving { datanet: 6, item: 2, until: 99 }),
			Event::DataNets(DataNets::ContributionReaped { datanet: 7, item: 3 }),
		];
		let seen = changes(&accepted, &own);
		assert_eq!(seen.datanets.ids, BTreeSet::from([5, 6]));
		assert!(seen.datanets.touches(5) && !seen.datanets.touches(7) && !seen.snapshot);
		assert!(Changes::unknown().datanets.touches(7));
	}
}
