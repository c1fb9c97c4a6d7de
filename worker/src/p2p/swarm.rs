//! The swarm: transports, Kademlia, Identify and gossipsub, and the task that runs them.

use std::{cell::Cell, time::Duration};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use libp2p::{
	connection_limits, gossipsub, identify, identity, kad, noise,
	swarm::{NetworkBehaviour, SwarmEvent},
	tcp, yamux, Multiaddr, PeerId, Swarm,
};
use tokio::sync::{oneshot, watch};

use super::{announce::*, peers::*, *};

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
	/// The most connections open at once, in and out (two at most per peer).
	pub max_connections: u32,
	/// Vouches for the announcements when the worker serves a chain.
	pub signer: Option<AnnouncementSigner>,
}

impl P2pConfig {
	/// Listening on `listen`, starting from `bootstrap`, with the defaults for the rest.
	pub fn new(listen: Vec<Multiaddr>, bootstrap: Vec<Multiaddr>, interval: Duration) -> Self {
		Self { listen, bootstrap, interval, key: None, max_connections: 128, signer: None }
	}
}

/// A running p2p node.
pub struct P2pNode {
	pub peer_id: PeerId,
	pub peers: Peers,
	/// The addresses it listens on, as they become known.
	pub listening: watch::Receiver<Vec<Multiaddr>>,
	/// How many peers it is connected to.
	pub connected: watch::Receiver<usize>,
	/// How many incoming connections it refused (over its connection limit, or failed
	/// handshakes) since it started.
	pub refused: watch::Receiver<usize>,
	stop: Option<Departure>,
	task: tokio::task::JoinHandle<()>,
}

/// Tells the node to say goodbye and stop; taken from [`P2pNode::departure`] to be used where
/// the shutdown begins.
pub struct Departure(oneshot::Sender<()>);

impl Departure {
	pub fn leave(self) {
		let _ = self.0.send(());
	}
}

impl P2pNode {
	/// What makes the node say goodbye, for the shutdown path: peers should stop sending
	/// requests here when draining starts, not when it ends.
	pub fn departure(&mut self) -> Option<Departure> {
		self.stop.take()
	}

	/// Says goodbye to the peers (they forget this worker at once), unless already told to,
	/// and stops the node.
	pub async fn stop(mut self) {
		if let Some(departure) = self.stop.take() {
			departure.leave();
		}
		let mut task = self.task;
		match tokio::time::timeout(4 * GOODBYE_FLUSH, &mut task).await {
			Ok(Err(e)) if e.is_panic() => tracing::error!("the p2p task had panicked: {e}"),
			Ok(_) => {},
			Err(_) => task.abort(),
		}
	}
}

#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
	limits: connection_limits::Behaviour,
	gossipsub: gossipsub::Behaviour,
	kademlia: kad::Behaviour<kad::store::MemoryStore>,
	identify: identify::Behaviour,
}

/// Joins the network and announces `announce()` (called each time, so the resident set is
/// current; the node fills in the interval, the date and the claim).
pub async fn start(
	config: P2pConfig,
	announce: impl Fn() -> Announcement + Send + 'static,
) -> Result<P2pNode> {
	let key = config.key.clone().unwrap_or_else(identity::Keypair::generate_ed25519);
	let heartbeat = (config.interval / 4).clamp(Duration::from_millis(200), Duration::from_secs(1));
	// A quarter of the connections is kept for dialling out, so peers that dialled in cannot
	// leave the worker unable to reach the ones it looks for.
	let limits = connection_limits::ConnectionLimits::default()
		.with_max_established(Some(config.max_connections))
		.with_max_established_incoming(Some((config.max_connections * 3 / 4).max(1)))
		.with_max_pending_incoming(Some(config.max_connections))
		.with_max_pending_outgoing(Some(16))
		.with_max_established_per_peer(Some(2));
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
			// Bootstrap (look for peers near this one) every 10 s rather than every 5 minutes:
			// the first one, right after joining, may come before the known peer has heard of
			// the others. A worker network is small; the lookups are cheap.
			kad_config.set_periodic_bootstrap_interval(Some(Duration::from_secs(10)));
			let mut kademlia = kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_config);
			// Workers are servers of the DHT whatever their addresses look like.
			kademlia.set_mode(Some(kad::Mode::Server));
			let identify = identify::Behaviour::new(identify::Config::new("/openledger/1.0.0".into(), key.public()));
			Ok(Behaviour { limits: connection_limits::Behaviour::new(limits), gossipsub, kademlia, identify })
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
	let (listening_tx, listening) = watch::channel(Vec::new());
	let peers = Peers::new(peer_id, listening.clone());
	let (connected_tx, connected) = watch::channel(0);
	let (refused_tx, refused) = watch::channel(0);
	let (stop, stopped) = oneshot::channel();
	let node = Node {
		peer_id,
		topic,
		announce: Box::new(announce),
		interval: config.interval,
		signer: config.signer,
		last_issued_ms: Cell::new(0),
		leaving: Cell::new(false),
		peers: peers.clone(),
		listening: listening_tx,
		connected: connected_tx,
		refused: refused_tx,
		bootstrap: config.bootstrap.clone(),
	};
	let task = tokio::spawn(node.run(swarm, stopped));
	tracing::info!(%peer_id, "p2p node started");
	Ok(P2pNode { peer_id, peers, listening, connected, refused, stop: Some(Departure(stop)), task })
}

/// The swarm task's state.
pub(super) struct Node {
	pub(super) peer_id: PeerId,
	pub(super) topic: gossipsub::IdentTopic,
	pub(super) announce: Box<dyn Fn() -> Announcement + Send>,
	pub(super) interval: Duration,
	pub(super) signer: Option<AnnouncementSigner>,
	/// The date of the last announcement: each is dated later than the one before, so none is
	/// taken for a replay.
	pub(super) last_issued_ms: Cell<u64>,
	/// Set once the goodbye is out: anything said after it is a goodbye too.
	pub(super) leaving: Cell<bool>,
	pub(super) peers: Peers,
	pub(super) listening: watch::Sender<Vec<Multiaddr>>,
	pub(super) connected: watch::Sender<usize>,
	pub(super) refused: watch::Sender<usize>,
	pub(super) bootstrap: Vec<Multiaddr>,
}

impl Node {
	/// Runs until told to stop (or the [`P2pNode`] is dropped), then says goodbye.
	pub(super) async fn run(self, mut swarm: Swarm<Behaviour>, mut stop: oneshot::Receiver<()>) {
		let mut announce_every = tokio::time::interval(self.interval);
		announce_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
		loop {
			tokio::select! {
				_ = &mut stop => break,
				_ = announce_every.tick() => {
					self.publish(&mut swarm, false);
					self.peers.prune();
				},
				event = swarm.select_next_some() => self.handle(&mut swarm, event),
			}
		}
		// The swarm runs a moment longer, so the goodbye leaves before the connections close.
		self.leaving.set(true);
		self.publish(&mut swarm, true);
		let flush = tokio::time::sleep(GOODBYE_FLUSH);
		tokio::pin!(flush);
		loop {
			tokio::select! {
				_ = &mut flush => break,
				event = swarm.select_next_some() => self.handle(&mut swarm, event),
			}
		}
		tracing::info!("p2p node stopped");
	}

	pub(super) fn publish(&self, swarm: &mut Swarm<Behaviour>, leaving: bool) {
		let mut announcement = (self.announce)();
		announcement.resident.truncate(MAX_RESIDENT);
		if leaving {
			announcement.resident.clear();
		}
		announcement.leaving = leaving;
		announcement.interval_secs = self.interval.as_secs().max(1);
		let issued = unix_ms().max(self.last_issued_ms.get() + 1);
		self.last_issued_ms.set(issued);
		announcement.issued_at_ms = issued;
		let bytes = message(&announcement, &self.peer_id, self.signer.as_ref());
		match swarm.behaviour_mut().gossipsub.publish(self.topic.clone(), bytes) {
			Ok(_) => {},
			// Alone in the network, or no peer subscribed yet: nobody to tell.
			Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {},
			Err(e) => tracing::debug!("p2p announcement not sent: {e}"),
		}
	}

	pub(super) fn handle(&self, swarm: &mut Swarm<Behaviour>, event: SwarmEvent<BehaviourEvent>) {
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
			SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { .. })) => {
				self.publish(swarm, self.leaving.get())
			},
			SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
				propagation_source,
				message_id,
				message,
			})) => {
				let verdict = match message.source {
					Some(source) => self.peers.judge(source, &message.data),
					None => gossipsub::MessageAcceptance::Reject,
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
			SwarmEvent::IncomingConnectionError { error, .. } => {
				tracing::debug!("p2p incoming connection refused: {error}");
				self.refused.send_modify(|n| *n += 1);
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
