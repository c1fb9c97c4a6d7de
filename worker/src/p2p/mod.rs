//! Workers find each other over libp2p and tell each other which adapters they hold resident, so
//! a client or a router can send a request where its adapter is loaded already (OpenLoRA's cold
//! start is an adapter load).
//!
//! Each worker runs a swarm (TCP, Noise, Yamux, with connection limits) with Kademlia to discover
//! peers from a few known ones (Identify tells each peer's listen addresses to Kademlia, so a node
//! that was only ever dialled can still introduce its peers to each other) and gossipsub, on which
//! it publishes its [`Announcement`] every `interval` and whenever a peer subscribes: its HTTP
//! endpoint, its base model and its resident adapters (name and weights hash), and a goodbye when
//! it stops. Messages are signed with the peer's libp2p key; a worker serving a chain also has its
//! session key vouch for the announcement ([`WorkerClaim`]), and a receiver on the same chain
//! tells whether the claim names an active registered worker. A peer's newest valid announcement
//! is kept until it is three of the sender's intervals old; older ones and replays are ignored.
//!
//! The module's files, one job each: `announce.rs` the announcements and the session key's claim
//! in them, `peers.rs` the table of peers heard from, `swarm.rs` the swarm and its loop, `key.rs`
//! the libp2p identity file.

mod announce;
mod key;
mod peers;
mod swarm;
#[cfg(test)]
mod tests;

use std::time::Duration;

use libp2p::StreamProtocol;

pub use announce::{Announcement, AnnouncementSigner, ResidentAdapter, WorkerClaim};
pub use key::load_or_create_key;
pub use peers::{PeerInfo, Peers};
pub use swarm::{start, Departure, P2pConfig, P2pNode};

/// The gossipsub topic of announcements.
const TOPIC: &str = "openledger/residency/1";
/// Kademlia's protocol: OpenLedger workers form their own DHT.
const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/openledger/kad/1.0.0");
/// The largest gossip message (an announcement of the most resident adapters fits).
const MAX_MESSAGE_BYTES: usize = 64 << 10;
/// The most resident adapters an announcement may list, and the longest endpoint and name.
const MAX_RESIDENT: usize = 256;
const MAX_ENDPOINT_LEN: usize = 256;
const MAX_NAME_LEN: usize = 128;
/// The most peers remembered; the oldest announcement goes first.
const MAX_PEERS: usize = 4096;
/// The longest a sender may ask its announcement to be kept.
const MAX_INTERVAL_SECS: u64 = 600;
/// How far ahead of the receiver's clock an announcement may be dated (clock skew).
const MAX_CLOCK_AHEAD_MS: u64 = 60_000;
/// How long a stopping worker keeps its swarm running to send its goodbye.
const GOODBYE_FLUSH: Duration = Duration::from_millis(500);

