//! The peers heard from: each one's newest valid announcement, shared with the HTTP API.

use std::{
	collections::HashMap,
	sync::{Arc, RwLock},
	time::{Duration, Instant},
};

use anyhow::Result;
use libp2p::{gossipsub, Multiaddr, PeerId};
use openledger_primitives::ContentHash;
use polkadot_sdk::sp_runtime::AccountId32;
use serde::Serialize;
use tokio::sync::watch;

use openledger_ledger::chain::WorkerInfo;

use super::{announce::*, *};

/// A peer's latest announcement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerInfo {
	pub peer_id: String,
	#[serde(flatten)]
	pub announcement: Announcement,
	/// The on-chain worker vouching for it, when the sender serves a chain.
	#[serde(skip_serializing_if = "Option::is_none")]
	pub worker: Option<WorkerClaim>,
	/// Milliseconds since it was received.
	pub age_ms: u64,
	/// Whether its worker claim names an active worker registered, with that session key, on
	/// the chain this worker serves; `None` when this worker serves no chain and cannot tell.
	pub registered: Option<bool>,
}

/// A peer's newest announcement, when it came and its checked claim.
pub(super) struct Entry {
	pub(super) announcement: Announcement,
	pub(super) received: Instant,
	pub(super) claim: Option<VerifiedClaim>,
}

impl Entry {
	/// Whether it is still kept: until three of its intervals after it came, and until an
	/// announcement dated before it could no longer be taken as current (a sender's clock may be
	/// up to a minute ahead), so a goodbye outlives what it ends.
	pub(super) fn current(&self) -> bool {
		let kept = kept_for(&self.announcement);
		self.received.elapsed() < kept ||
			unix_ms() <= self.announcement.issued_at_ms.saturating_add(kept.as_millis() as u64 + MAX_CLOCK_AHEAD_MS)
	}
}

/// The peers heard from, shared with the HTTP API.
#[derive(Clone)]
pub struct Peers {
	table: Arc<RwLock<HashMap<PeerId, Entry>>>,
	local: PeerId,
	listening: watch::Receiver<Vec<Multiaddr>>,
}

pub(super) fn kept_for(announcement: &Announcement) -> Duration {
	Duration::from_secs(announcement.interval_secs.min(MAX_INTERVAL_SECS) * 3)
}

impl Peers {
	pub(super) fn new(local: PeerId, listening: watch::Receiver<Vec<Multiaddr>>) -> Self {
		Self { table: Arc::default(), local, listening }
	}

	/// This worker's peer id.
	pub fn local_peer_id(&self) -> PeerId {
		self.local
	}

	/// The addresses this worker listens on, as peers would name it in `--p2p-peer`.
	pub fn listening(&self) -> Vec<String> {
		self.listening.borrow().iter().map(|a| a.clone().with(libp2p::multiaddr::Protocol::P2p(self.local)).to_string()).collect()
	}

	/// Why `announcement` from `peer` is out of date, if it is: older than its own keeping
	/// time, dated ahead of this clock, or not newer than the one kept.
	pub(super) fn out_of_date(table: &HashMap<PeerId, Entry>, peer: &PeerId, announcement: &Announcement) -> Option<&'static str> {
		let now = unix_ms();
		let issued = announcement.issued_at_ms;
		if issued.saturating_add(kept_for(announcement).as_millis() as u64) < now {
			return Some("it is older than three of its intervals");
		}
		if issued > now.saturating_add(MAX_CLOCK_AHEAD_MS) {
			return Some("it is dated more than a minute ahead");
		}
		table
			.get(peer)
			.is_some_and(|kept| kept.announcement.issued_at_ms >= issued)
			.then_some("it is not newer than the one kept")
	}

	/// Keeps `announcement` as `peer`'s newest, unless it is out of date. A full table first
	/// forgets what is past its time, then the oldest peer without a claim (announcements
	/// without one cost nothing to make), then the oldest.
	pub(super) fn record(&self, peer: PeerId, announcement: Announcement, claim: Option<VerifiedClaim>) -> Result<(), &'static str> {
		let mut table = self.table.write().expect("peers lock");
		if let Some(why) = Self::out_of_date(&table, &peer, &announcement) {
			return Err(why);
		}
		if table.len() >= MAX_PEERS && !table.contains_key(&peer) {
			table.retain(|_, e| e.current());
			let oldest = |unclaimed_only: bool| {
				table
					.iter()
					.filter(|(_, e)| !unclaimed_only || e.claim.is_none())
					.min_by_key(|(_, e)| e.received)
					.map(|(p, _)| *p)
			};
			if let Some(evicted) = (table.len() >= MAX_PEERS).then(|| oldest(true).or_else(|| oldest(false))).flatten() {
				table.remove(&evicted);
			}
		}
		// A goodbye is kept too, unlisted, so the announcements before it cannot be replayed.
		table.insert(peer, Entry { announcement, received: Instant::now(), claim });
		Ok(())
	}

	/// Whether a received message is kept and passed on (`Accept`), dropped quietly as out of
	/// date (`Ignore`), or refused as malformed or forged (`Reject`: not passed on). The cheap
	/// checks come before the signature's.
	pub(super) fn judge(&self, source: PeerId, data: &[u8]) -> gossipsub::MessageAcceptance {
		use gossipsub::MessageAcceptance::{Accept, Ignore, Reject};
		let parsed = serde_json::from_slice::<Envelope>(data).and_then(|envelope| {
			serde_json::from_str::<Announcement>(&envelope.announcement).map(|announcement| (envelope, announcement))
		});
		let (envelope, announcement) = match parsed {
			Ok(parsed) => parsed,
			Err(e) => {
				tracing::debug!(peer = %source, "p2p announcement unreadable: {e}");
				return Reject;
			},
		};
		if let Some(why) = announcement.invalid() {
			tracing::debug!(peer = %source, "p2p announcement refused: {why}");
			return Reject;
		}
		if let Some(why) = Self::out_of_date(&self.table.read().expect("peers lock"), &source, &announcement) {
			tracing::debug!(peer = %source, "p2p announcement ignored: {why}");
			return Ignore;
		}
		let claim = match envelope.worker.map(|claim| claim.verify(envelope.announcement.as_bytes(), &source)).transpose() {
			Ok(claim) => claim,
			Err(why) => {
				tracing::debug!(peer = %source, "p2p announcement refused: {why}");
				return Reject;
			},
		};
		match self.record(source, announcement, claim) {
			Ok(()) => Accept,
			Err(why) => {
				tracing::debug!(peer = %source, "p2p announcement ignored: {why}");
				Ignore
			},
		}
	}

	/// Forgets the announcements past their time.
	pub(super) fn prune(&self) {
		self.table.write().expect("peers lock").retain(|_, e| e.current());
	}

	/// The peers whose announcement is current, sorted by peer id; only those holding `adapter`
	/// (a weights hash, or a name as that worker calls it) resident when it is given. With
	/// `chain` (its genesis and registered workers) each says whether its claim is registered.
	pub fn list(&self, adapter: Option<&str>, chain: Option<(&ContentHash, &HashMap<AccountId32, WorkerInfo>)>) -> Vec<PeerInfo> {
		let table = self.table.read().expect("peers lock");
		let mut peers: Vec<PeerInfo> = table
			.iter()
			.filter(|(_, e)| !e.announcement.leaving && e.received.elapsed() < kept_for(&e.announcement))
			.filter(|(_, e)| {
				adapter.is_none_or(|wanted| e.announcement.resident.iter().any(|r| r.name == wanted || r.hash == wanted))
			})
			.map(|(peer, e)| PeerInfo {
				peer_id: peer.to_string(),
				announcement: e.announcement.clone(),
				worker: e.claim.as_ref().map(|verified| verified.claim.clone()),
				age_ms: e.received.elapsed().as_millis() as u64,
				registered: chain.map(|(genesis, workers)| {
					e.claim.as_ref().is_some_and(|claim| WorkerClaim::registered_on(claim, genesis, workers))
				}),
			})
			.collect();
		peers.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
		peers
	}
}
