//! Workers find each other over libp2p and tell each other which adapters they hold resident, so
//! a client or a router can send a request where its adapter is loaded already (OpenLoRA's cold
//! start is an adapter load).
//!
//! Each worker runs a swarm (TCP, Noise, Yamux) with Kademlia to discover peers from a few known
//! ones (Identify tells each peer's listen addresses to Kademlia, so a node that was only ever
//! dialled can still introduce its peers to each other) and gossipsub, on which it publishes its
//! [`Announcement`] every `interval` and whenever a peer subscribes: its HTTP endpoint, its base
//! model and its resident adapters (name and weights hash). Messages are signed with the peer's
//! libp2p key; a peer's latest valid announcement is kept until it is three of the sender's
//! intervals old. An announcement is a peer's claim: a client checks the endpoint's registration
//! and the adapter's hash on chain, as it would for any worker.

use std::{
	collections::HashMap,
	path::Path,
	sync::{Arc, RwLock},
	time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use libp2p::{
	gossipsub, identify, identity, kad, noise,
	swarm::{NetworkBehaviour, SwarmEvent},
	tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

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

/// What a worker tells its peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
	/// Where its OpenAI-compatible API is.
	pub endpoint: String,
	/// The base model's served name.
	pub base_model: String,
	/// Adapters resident now (at most 256 are told).
	pub resident: Vec<ResidentAdapter>,
	/// How often it announces: receivers keep this announcement for three of these.
	pub interval_secs: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResidentAdapter {
	/// Its name on that worker (names are local: the hash identifies the adapter).
	pub name: String,
	/// blake2-256 of `adapter_model.safetensors`, lower-case hex.
	pub hash: String,
}

impl Announcement {
	/// Why a received announcement is not kept, if it is not.
	fn invalid(&self) -> Option<&'static str> {
		let url = self.endpoint.strip_prefix("http://").or_else(|| self.endpoint.strip_prefix("https://"));
		if !url.is_some_and(|rest| !rest.is_empty()) || self.endpoint.len() > MAX_ENDPOINT_LEN {
			return Some("the endpoint is not an http(s) URL of at most 256 bytes");
		}
		if self.base_model.len() > MAX_NAME_LEN || self.resident.len() > MAX_RESIDENT {
			return Some("a name or the resident list is too long");
		}
		let hex = |h: &str| h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
		if self.resident.iter().any(|r| r.name.len() > MAX_NAME_LEN || !hex(&r.hash)) {
			return Some("an adapter's name is too long or its hash is not 64 lower-case hex digits");
		}
		(self.interval_secs == 0).then_some("the interval is 0")
	}
}

/// A peer's latest announcement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerInfo {
	pub peer_id: String,
	#[serde(flatten)]
	pub announcement: Announcement,
	/// Milliseconds since it was received.
	pub age_ms: u64,
}

/// The peers heard from, shared with the HTTP API.
#[derive(Clone)]
pub struct Peers {
	table: Arc<RwLock<HashMap<PeerId, (Announcement, Instant)>>>,
}

fn kept_for(announcement: &Announcement) -> Duration {
	Duration::from_secs(announcement.interval_secs.min(MAX_INTERVAL_SECS) * 3)
}

impl Peers {
	fn new() -> Self {
		Self { table: Arc::default() }
	}

	fn record(&self, peer: PeerId, announcement: Announcement) {
		let mut table = self.table.write().expect("peers lock");
		if table.len() >= MAX_PEERS && !table.contains_key(&peer) {
			if let Some(oldest) = table.iter().min_by_key(|(_, (_, at))| *at).map(|(p, _)| *p) {
				table.remove(&oldest);
			}
		}
		table.insert(peer, (announcement, Instant::now()));
	}

	/// Forgets the announcements past their time.
	fn prune(&self) {
		self.table.write().expect("peers lock").retain(|_, (a, at)| at.elapsed() < kept_for(a));
	}

	/// The peers whose announcement is current, sorted by peer id; only those holding `adapter`
	/// (a weights hash, or a name as that worker calls it) resident when it is given.
	pub fn list(&self, adapter: Option<&str>) -> Vec<PeerInfo> {
		let table = self.table.read().expect("peers lock");
		let mut peers: Vec<PeerInfo> = table
			.iter()
			.filter(|(_, (a, at))| at.elapsed() < kept_for(a))
			.filter(|(_, (a, _))| adapter.is_none_or(|wanted| a.resident.iter().any(|r| r.name == wanted || r.hash == wanted)))
			.map(|(peer, (announcement, at))| PeerInfo {
				peer_id: peer.to_string(),
				announcement: announcement.clone(),
				age_ms: at.elapsed().as_millis() as u64,
			})
			.collect();
		peers.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
		peers
	}
}

/// The libp2p identity kept in `path` (protobuf-encoded ed25519, mode 600), made there on first
/// use, so the peer id others name in `--p2p-peer` survives restarts.
pub fn load_or_create_key(path: &Path) -> Result<identity::Keypair> {
	if path.exists() {
		let bytes = std::fs::read(path).with_context(|| format!("reading the p2p key {}", path.display()))?;
		return identity::Keypair::from_protobuf_encoding(&bytes)
			.with_context(|| format!("{} is not a libp2p key", path.display()));
	}
	let key = identity::Keypair::generate_ed25519();
	let bytes = key.to_protobuf_encoding().context("encoding the new p2p key")?;
	let mut options = std::fs::OpenOptions::new();
	options.write(true).create_new(true);
	#[cfg(unix)]
	std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
	std::io::Write::write_all(
		&mut options.open(path).with_context(|| format!("creating the p2p key {}", path.display()))?,
		&bytes,
	)?;
	tracing::info!(peer_id = %key.public().to_peer_id(), "new p2p key written to {}", path.display());
	Ok(key)
}

/// How to join the network.
#[derive(Clone, Debug)]
pub struct P2pConfig {
	/// Where to listen, e.g. `/ip4/0.0.0.0/tcp/4100`.
	pub listen: Vec<Multiaddr>,
	/// Known peers to start from, each ending in `/p2p/<peer id>`.
	pub bootstrap: Vec<Multiaddr>,
	/// How often the worker announces itself.
	pub interval: Duration,
	/// The libp2p identity; a new one when `None`.
	pub key: Option<identity::Keypair>,
}

/// A running p2p node.
pub struct P2pNode {
	pub peer_id: PeerId,
	pub peers: Peers,
	/// The addresses it listens on, as they become known.
	pub listening: watch::Receiver<Vec<Multiaddr>>,
	/// How many peers it is connected to.
	pub connected: watch::Receiver<usize>,
	task: tokio::task::JoinHandle<()>,
}

impl P2pNode {
	/// Stops the node; its peers forget it after three intervals.
	pub async fn stop(self) {
		self.task.abort();
		if let Err(e) = self.task.await {
			if e.is_panic() {
				tracing::error!("the p2p task had panicked: {e}");
			}
		}
	}
}

#[derive(NetworkBehaviour)]
struct Behaviour {
	gossipsub: gossipsub::Behaviour,
	kademlia: kad::Behaviour<kad::store::MemoryStore>,
	identify: identify::Behaviour,
}

/// Joins the network and announces `announce()` (called each time, so the resident set is
/// current).
pub async fn start(
	config: P2pConfig,
	announce: impl Fn() -> Announcement + Send + 'static,
) -> Result<P2pNode> {
	let key = config.key.clone().unwrap_or_else(identity::Keypair::generate_ed25519);
	let heartbeat = (config.interval / 4).clamp(Duration::from_millis(200), Duration::from_secs(1));
	let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
		.with_tokio()
		.with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
		.context("p2p transport")?
		.with_behaviour(|key| -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
			let peer_id = key.public().to_peer_id();
			let gossip_config = gossipsub::ConfigBuilder::default()
				.heartbeat_interval(heartbeat)
				.validation_mode(gossipsub::ValidationMode::Strict)
				.max_transmit_size(MAX_MESSAGE_BYTES)
				// Forwarded only once this worker has read and accepted it.
				.validate_messages()
				.build()
				.map_err(|e| format!("gossipsub config: {e}"))?;
			let gossipsub = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), gossip_config)
				.map_err(|e| format!("gossipsub: {e}"))?;
			let mut kad_config = kad::Config::new(KAD_PROTOCOL);
			kad_config.set_query_timeout(Duration::from_secs(30));
			// The DHT is for finding peers only: nobody's records are stored.
			kad_config.set_record_filtering(kad::StoreInserts::FilterBoth);
			let mut kademlia = kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_config);
			// Workers are servers of the DHT whatever their addresses look like.
			kademlia.set_mode(Some(kad::Mode::Server));
			let identify = identify::Behaviour::new(identify::Config::new("/openledger/1.0.0".into(), key.public()));
			Ok(Behaviour { gossipsub, kademlia, identify })
		})
		.context("p2p behaviour")?
		.with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
		.build();
	let topic = gossipsub::IdentTopic::new(TOPIC);
	swarm.behaviour_mut().gossipsub.subscribe(&topic).context("subscribing to announcements")?;
	for address in &config.listen {
		swarm.listen_on(address.clone()).with_context(|| format!("listening on {address}"))?;
	}
	for address in &config.bootstrap {
		let Some(peer) = address.iter().find_map(|p| match p {
			libp2p::multiaddr::Protocol::P2p(peer) => Some(peer),
			_ => None,
		}) else {
			bail!("the p2p peer {address} does not end in /p2p/<peer id>");
		};
		swarm.behaviour_mut().kademlia.add_address(&peer, address.clone());
		swarm.dial(address.clone()).with_context(|| format!("dialling {address}"))?;
	}
	let peer_id = *swarm.local_peer_id();
	let peers = Peers::new();
	let (listening_tx, listening) = watch::channel(Vec::new());
	let (connected_tx, connected) = watch::channel(0);
	let node = Node {
		topic,
		announce: Box::new(announce),
		peers: peers.clone(),
		listening: listening_tx,
		connected: connected_tx,
		bootstrap: config.bootstrap.clone(),
	};
	let task = tokio::spawn(node.run(swarm, config.interval));
	tracing::info!(%peer_id, "p2p node started");
	Ok(P2pNode { peer_id, peers, listening, connected, task })
}

/// The swarm task's state.
struct Node {
	topic: gossipsub::IdentTopic,
	announce: Box<dyn Fn() -> Announcement + Send>,
	peers: Peers,
	listening: watch::Sender<Vec<Multiaddr>>,
	connected: watch::Sender<usize>,
	bootstrap: Vec<Multiaddr>,
}

impl Node {
	async fn run(self, mut swarm: Swarm<Behaviour>, interval: Duration) {
		let mut announce_every = tokio::time::interval(interval);
		announce_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
		loop {
			tokio::select! {
				_ = announce_every.tick() => {
					self.publish(&mut swarm);
					self.peers.prune();
				},
				event = swarm.select_next_some() => self.handle(&mut swarm, event),
			}
		}
	}

	fn publish(&self, swarm: &mut Swarm<Behaviour>) {
		let mut announcement = (self.announce)();
		announcement.resident.truncate(MAX_RESIDENT);
		match serde_json::to_vec(&announcement) {
			Ok(bytes) => match swarm.behaviour_mut().gossipsub.publish(self.topic.clone(), bytes) {
				Ok(_) => {},
				// Alone in the network, or no peer subscribed yet: nobody to tell.
				Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {},
				Err(e) => tracing::debug!("p2p announcement not sent: {e}"),
			},
			Err(e) => tracing::warn!("p2p announcement not encoded: {e}"),
		}
	}

	fn handle(&self, swarm: &mut Swarm<Behaviour>, event: SwarmEvent<BehaviourEvent>) {
		match event {
			SwarmEvent::NewListenAddr { address, .. } => {
				tracing::info!(%address, "p2p listening");
				self.listening.send_modify(|all| all.push(address));
			},
			// Kademlia learns only the addresses of peers it dialled itself: tell it those of
			// peers that dialled in, so it can hand them to others.
			SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
				if info.protocols.contains(&KAD_PROTOCOL) {
					for address in info.listen_addrs {
						swarm.behaviour_mut().kademlia.add_address(&peer_id, address);
					}
				}
			},
			// A new listener hears of this worker now, not an interval later.
			SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { .. })) => self.publish(swarm),
			SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
				propagation_source,
				message_id,
				message,
			})) => {
				let announcement = serde_json::from_slice::<Announcement>(&message.data).map_err(|e| e.to_string());
				let verdict = match (message.source, announcement) {
					(Some(source), Ok(announcement)) => match announcement.invalid() {
						None => {
							self.peers.record(source, announcement);
							gossipsub::MessageAcceptance::Accept
						},
						Some(why) => {
							tracing::debug!(peer = %source, "p2p announcement refused: {why}");
							gossipsub::MessageAcceptance::Reject
						},
					},
					(source, Err(e)) => {
						tracing::debug!(peer = ?source, "p2p announcement unreadable: {e}");
						gossipsub::MessageAcceptance::Reject
					},
					(None, Ok(_)) => gossipsub::MessageAcceptance::Reject,
				};
				let _ = swarm.behaviour_mut().gossipsub.report_message_validation_result(
					&message_id,
					&propagation_source,
					verdict,
				);
			},
			SwarmEvent::ConnectionEstablished { peer_id, .. } => {
				tracing::debug!(peer = %peer_id, "p2p peer connected");
				self.connected.send_replace(swarm.connected_peers().count());
			},
			SwarmEvent::ConnectionClosed { .. } => {
				self.connected.send_replace(swarm.connected_peers().count());
			},
			SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
				let bootstrap = peer_id.is_some_and(|peer| {
					self.bootstrap.iter().any(|a| a.iter().any(|p| p == libp2p::multiaddr::Protocol::P2p(peer)))
				});
				if bootstrap {
					tracing::warn!(peer = ?peer_id, "cannot reach the p2p peer given with --p2p-peer: {error}");
				} else {
					tracing::debug!(peer = ?peer_id, "p2p dial failed: {error}");
				}
			},
			_ => {},
		}
	}
}

#[cfg(test)]
mod tests {
	use super::*;

	fn announcement(endpoint: &str, adapters: &[(&str, char)]) -> Announcement {
		Announcement {
			endpoint: endpoint.into(),
			base_model: "SmolLM2-135M-Instruct".into(),
			resident: adapters
				.iter()
				.map(|(n, h)| ResidentAdapter { name: (*n).into(), hash: h.to_string().repeat(64) })
				.collect(),
			interval_secs: 1,
		}
	}

	async fn first_address(node: &P2pNode) -> Multiaddr {
		let mut listening = node.listening.clone();
		let address = listening.wait_for(|a| !a.is_empty()).await.unwrap()[0].clone();
		address.with(libp2p::multiaddr::Protocol::P2p(node.peer_id))
	}

	async fn until(what: &str, mut done: impl FnMut() -> bool) {
		let deadline = Instant::now() + Duration::from_secs(30);
		while !done() {
			assert!(Instant::now() < deadline, "timed out waiting for {what}");
			tokio::time::sleep(Duration::from_millis(50)).await;
		}
	}

	/// Three workers on loopback, both others started from the first, which only ever accepted
	/// connections: the third still finds the second through Kademlia and connects to it; each
	/// hears the others' resident adapters, and a filter by adapter name or hash finds the ones
	/// holding it.
	#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
	async fn workers_find_each_other_and_learn_where_adapters_are_resident() {
		let config = |bootstrap: Vec<Multiaddr>| P2pConfig {
			listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
			bootstrap,
			interval: Duration::from_secs(1),
			key: None,
		};
		let a = start(config(vec![]), || announcement("http://a:8000", &[("legal", 'a')])).await.unwrap();
		let a_address = first_address(&a).await;
		let b = start(config(vec![a_address.clone()]), || {
			announcement("http://b:8000", &[("legal", 'a'), ("tutor", 'b')])
		})
		.await
		.unwrap();
		b.connected.clone().wait_for(|n| *n >= 1).await.unwrap();
		let c = start(config(vec![a_address]), || announcement("http://c:8000", &[])).await.unwrap();

		until("c to connect to b, found through a", || *c.connected.borrow() == 2).await;
		until("c to hear a and b", || c.peers.list(None).len() == 2).await;
		until("a to hear b and c", || a.peers.list(None).len() == 2).await;
		let mut expected = vec![("http://a:8000", a.peer_id), ("http://b:8000", b.peer_id)];
		expected.sort_by_key(|(_, peer)| peer.to_string());
		let expected: Vec<String> = expected.iter().map(|(e, _)| e.to_string()).collect();
		until("c to list who holds `legal`", || {
			c.peers.list(Some("legal")).into_iter().map(|p| p.announcement.endpoint).collect::<Vec<_>>() == expected
		})
		.await;
		until("c to list who holds b's second adapter, by hash", || {
			let tutor = c.peers.list(Some(&"b".repeat(64)));
			tutor.len() == 1 && tutor[0].peer_id == b.peer_id.to_string() && tutor[0].announcement.resident[1].name == "tutor"
		})
		.await;
		assert!(c.peers.list(Some("nobody")).is_empty());
		assert!(!c.peers.list(None).iter().any(|p| p.peer_id == c.peer_id.to_string()), "not itself");

		// A worker that stops is forgotten after three of its intervals.
		b.stop().await;
		until("c to forget b", || c.peers.list(None).iter().all(|p| p.announcement.endpoint != "http://b:8000")).await;
		a.stop().await;
		c.stop().await;
	}

	#[test]
	fn announcements_are_checked_and_the_table_is_bounded() {
		let good = announcement("https://w.example:8000", &[("legal", 'a')]);
		assert_eq!(good.invalid(), None);
		let bad = [
			Announcement { endpoint: "file:///etc/passwd".into(), ..good.clone() },
			Announcement { endpoint: format!("http://{}", "x".repeat(300)), ..good.clone() },
			Announcement { resident: vec![ResidentAdapter { name: "x".into(), hash: "A".repeat(64) }], ..good.clone() },
			Announcement { resident: vec![good.resident[0].clone(); MAX_RESIDENT + 1], ..good.clone() },
			Announcement { interval_secs: 0, ..good.clone() },
		];
		for announcement in bad {
			assert!(announcement.invalid().is_some(), "{announcement:?}");
		}
		let peers = Peers::new();
		let first = PeerId::random();
		peers.record(first, good.clone());
		for _ in 0..MAX_PEERS {
			peers.record(PeerId::random(), good.clone());
		}
		let listed = peers.list(None);
		assert_eq!(listed.len(), MAX_PEERS);
		assert!(!listed.iter().any(|p| p.peer_id == first.to_string()), "the oldest went first");
	}

	#[test]
	fn the_key_file_keeps_the_peer_id() {
		let dir = tempfile::tempdir().unwrap();
		let path = dir.path().join("p2p.key");
		let made = load_or_create_key(&path).unwrap();
		let again = load_or_create_key(&path).unwrap();
		assert_eq!(made.public().to_peer_id(), again.public().to_peer_id());
		#[cfg(unix)]
		{
			use std::os::unix::fs::PermissionsExt;
			assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
		}
		std::fs::write(&path, b"not a key").unwrap();
		assert!(load_or_create_key(&path).unwrap_err().to_string().contains("not a libp2p key"));
	}

	#[tokio::test]
	async fn a_bootstrap_address_without_a_peer_id_is_refused() {
		let config = P2pConfig {
			listen: vec![],
			bootstrap: vec!["/ip4/127.0.0.1/tcp/1".parse().unwrap()],
			interval: Duration::from_secs(1),
			key: None,
		};
		let err = start(config, || announcement("http://x", &[])).await.err().expect("refused").to_string();
		assert!(err.contains("/p2p/<peer id>"), "{err}");
	}
}
