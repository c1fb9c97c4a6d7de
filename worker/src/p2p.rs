//! Workers find each other over libp2p and tell each other which adapters they hold resident, so
//! a client or a router can send a request where its adapter is loaded already (OpenLoRA's cold
//! start is an adapter load).
//!
//! Each worker runs a swarm (TCP, Noise, Yamux) with Kademlia to discover peers from a few known
//! ones, Identify to learn their listen addresses, and gossipsub, on which it publishes its
//! [`Announcement`] every `interval`: its HTTP endpoint, its base model and its resident adapters
//! (name and weights hash). Messages are signed with the peer's libp2p key; the peers table keeps
//! each peer's latest announcement until it is three intervals old. An announcement is a peer's
//! claim: a client checks the endpoint's registration and the adapter's hash on chain, as it
//! would for any worker.

use std::{
	collections::HashMap,
	sync::{Arc, RwLock},
	time::{Duration, Instant},
};

use anyhow::{Context, Result};
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
/// The largest announcement accepted (a few hundred resident adapters).
const MAX_ANNOUNCEMENT_BYTES: usize = 64 << 10;

/// What a worker tells its peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
	/// Where its OpenAI-compatible API is (its registered endpoint when it charges on chain).
	pub endpoint: String,
	/// The base model's served name.
	pub base_model: String,
	/// Adapters resident now.
	pub resident: Vec<ResidentAdapter>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResidentAdapter {
	pub name: String,
	/// blake2-256 of `adapter_model.safetensors`, lower-case hex.
	pub hash: String,
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
#[derive(Clone, Default)]
pub struct Peers {
	table: Arc<RwLock<HashMap<PeerId, (Announcement, Instant)>>>,
	max_age: Duration,
}

impl Peers {
	fn new(max_age: Duration) -> Self {
		Self { table: Arc::default(), max_age }
	}

	fn record(&self, peer: PeerId, announcement: Announcement) {
		self.table.write().expect("peers lock").insert(peer, (announcement, Instant::now()));
	}

	/// Every peer heard from within three intervals, sorted by peer id; only those holding
	/// `adapter` (a name or a weights hash) resident when it is given.
	pub fn list(&self, adapter: Option<&str>) -> Vec<PeerInfo> {
		let mut table = self.table.write().expect("peers lock");
		table.retain(|_, (_, at)| at.elapsed() < self.max_age);
		let mut peers: Vec<PeerInfo> = table
			.iter()
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

/// How to join the network.
#[derive(Clone, Debug)]
pub struct P2pConfig {
	/// Where to listen, e.g. `/ip4/0.0.0.0/tcp/4100`.
	pub listen: Vec<Multiaddr>,
	/// Known peers to start from, each ending in `/p2p/<peer id>`.
	pub bootstrap: Vec<Multiaddr>,
	/// How often the worker announces itself (and how often a test wants to hear of others).
	pub interval: Duration,
	/// The libp2p identity; a new one each start when `None`.
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
	/// Stops the node.
	pub async fn stop(self) {
		self.task.abort();
		let _ = self.task.await;
	}
}

#[derive(NetworkBehaviour)]
struct Behaviour {
	gossipsub: gossipsub::Behaviour,
	kademlia: kad::Behaviour<kad::store::MemoryStore>,
	identify: identify::Behaviour,
}

/// Joins the network and announces `announce()` every interval (it is called each time, so the
/// resident set is current).
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
				.max_transmit_size(MAX_ANNOUNCEMENT_BYTES)
				.build()
				.map_err(|e| format!("gossipsub config: {e}"))?;
			let gossipsub = gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), gossip_config)
				.map_err(|e| format!("gossipsub: {e}"))?;
			let mut kad_config = kad::Config::new(KAD_PROTOCOL);
			kad_config.set_query_timeout(Duration::from_secs(30));
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
		let peer = address
			.iter()
			.find_map(|p| match p {
				libp2p::multiaddr::Protocol::P2p(peer) => Some(peer),
				_ => None,
			})
			.with_context(|| format!("the p2p peer {address} does not end in /p2p/<peer id>"))?;
		swarm.behaviour_mut().kademlia.add_address(&peer, address.clone());
		swarm.dial(address.clone()).with_context(|| format!("dialling {address}"))?;
	}
	let peer_id = *swarm.local_peer_id();
	let peers = Peers::new(config.interval * 3);
	let (listening_tx, listening) = watch::channel(Vec::new());
	let (connected_tx, connected) = watch::channel(0);
	let watches = Watches { listening: listening_tx, connected: connected_tx };
	let task = tokio::spawn(run(swarm, topic, config.interval, announce, peers.clone(), watches));
	tracing::info!(%peer_id, "p2p node started");
	Ok(P2pNode { peer_id, peers, listening, connected, task })
}

/// What the swarm's task reports to its [`P2pNode`].
struct Watches {
	listening: watch::Sender<Vec<Multiaddr>>,
	connected: watch::Sender<usize>,
}

async fn run(
	mut swarm: Swarm<Behaviour>,
	topic: gossipsub::IdentTopic,
	interval: Duration,
	announce: impl Fn() -> Announcement,
	peers: Peers,
	watches: Watches,
) {
	let mut announce_every = tokio::time::interval(interval);
	announce_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
	// Discovery needs no code here: Identify hands each peer's listen addresses to Kademlia, which
	// bootstraps when its table gets a first peer and every few minutes after, and connects to
	// the peers its queries find, so gossip reaches them.
	loop {
		tokio::select! {
			_ = announce_every.tick() => {
				match serde_json::to_vec(&announce()) {
					Ok(bytes) => match swarm.behaviour_mut().gossipsub.publish(topic.clone(), bytes) {
						Ok(_) => {},
						// Alone in the network, or no peer subscribed yet: nobody to tell.
						Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {},
						Err(e) => tracing::debug!("p2p announcement not sent: {e}"),
					},
					Err(e) => tracing::warn!("p2p announcement not encoded: {e}"),
				}
			},
			event = swarm.select_next_some() => match event {
				SwarmEvent::NewListenAddr { address, .. } => {
					tracing::info!(%address, "p2p listening");
					watches.listening.send_modify(|all| all.push(address));
				},
				SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message { message, .. })) => {
					let Some(source) = message.source else { continue };
					match serde_json::from_slice::<Announcement>(&message.data) {
						Ok(announcement) => peers.record(source, announcement),
						Err(e) => tracing::debug!(peer = %source, "p2p announcement unreadable: {e}"),
					}
				},
				SwarmEvent::ConnectionEstablished { peer_id, .. } => {
					tracing::debug!(peer = %peer_id, "p2p peer connected");
					watches.connected.send_replace(swarm.connected_peers().count());
				},
				SwarmEvent::ConnectionClosed { .. } => {
					watches.connected.send_replace(swarm.connected_peers().count());
				},
				SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
					tracing::debug!(peer = ?peer_id, "p2p dial failed: {error}");
				},
				_ => {},
			},
		}
	}
}

#[cfg(test)]
mod tests {
	use super::*;

	fn announcement(endpoint: &str, adapters: &[(&str, &str)]) -> Announcement {
		Announcement {
			endpoint: endpoint.into(),
			base_model: "SmolLM2-135M-Instruct".into(),
			resident: adapters.iter().map(|(n, h)| ResidentAdapter { name: (*n).into(), hash: (*h).into() }).collect(),
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

	/// Three workers on loopback: the third knows only the second, finds the first through
	/// Kademlia and connects to it; each hears the others' resident adapters, and a filter by
	/// adapter name or hash finds the ones holding it.
	#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
	async fn workers_find_each_other_and_learn_where_adapters_are_resident() {
		let config = |bootstrap: Vec<Multiaddr>| P2pConfig {
			listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
			bootstrap,
			interval: Duration::from_millis(300),
			key: None,
		};
		let a = start(config(vec![]), || announcement("http://a:8000", &[("legal", "aa11")])).await.unwrap();
		let a_address = first_address(&a).await;
		let b = start(config(vec![a_address]), || announcement("http://b:8000", &[("legal", "aa11"), ("tutor", "bb22")]))
			.await
			.unwrap();
		let b_address = first_address(&b).await;
		let c = start(config(vec![b_address]), || announcement("http://c:8000", &[])).await.unwrap();

		until("c to connect to a, found through b", || *c.connected.borrow() == 2).await;
		until("c to hear a and b", || c.peers.list(None).len() == 2).await;
		until("a to hear b and c", || a.peers.list(None).len() == 2).await;
		let holding: Vec<String> = c.peers.list(Some("legal")).into_iter().map(|p| p.announcement.endpoint).collect();
		let mut expected = vec![("http://a:8000", a.peer_id), ("http://b:8000", b.peer_id)];
		expected.sort_by_key(|(_, peer)| peer.to_string());
		assert_eq!(holding, expected.iter().map(|(e, _)| e.to_string()).collect::<Vec<_>>());
		let tutor = c.peers.list(Some("bb22"));
		assert_eq!(tutor.len(), 1);
		assert_eq!(tutor[0].peer_id, b.peer_id.to_string());
		assert_eq!(tutor[0].announcement.resident[1].name, "tutor");
		assert!(c.peers.list(Some("nobody")).is_empty());
		assert!(!c.peers.list(None).iter().any(|p| p.peer_id == c.peer_id.to_string()), "not itself");

		// A worker that stops is forgotten after three intervals.
		b.stop().await;
		until("c to forget b", || c.peers.list(None).iter().all(|p| p.announcement.endpoint != "http://b:8000")).await;
		a.stop().await;
		c.stop().await;
	}

	#[tokio::test]
	async fn a_bootstrap_address_without_a_peer_id_is_refused() {
		let config = P2pConfig {
			listen: vec![],
			bootstrap: vec!["/ip4/127.0.0.1/tcp/1".parse().unwrap()],
			interval: Duration::from_secs(1),
			key: None,
		};
		let err = start(config, || announcement("x", &[])).await.err().expect("refused").to_string();
		assert!(err.contains("/p2p/<peer id>"), "{err}");
	}
}
