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

use std::{
	cell::Cell,
	collections::HashMap,
	path::Path,
	sync::{Arc, RwLock},
	time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use libp2p::{
	connection_limits, gossipsub, identify, identity, kad, noise,
	swarm::{NetworkBehaviour, SwarmEvent},
	tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm,
};
use openledger_primitives::{content_hash, signing_payload, ContentHash, ANNOUNCEMENT_DOMAIN};
use polkadot_sdk::{
	sp_core::{crypto::Ss58Codec, sr25519, Pair},
	sp_runtime::AccountId32,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use openledger_ledger::{
	chain::WorkerInfo,
	keys::{hex_hash, parse_account, Sr25519Key},
};

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

/// What a worker tells its peers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
	/// Where its OpenAI-compatible API is.
	pub endpoint: String,
	/// The base model's served name.
	pub base_model: String,
	/// Adapters resident now (at most 256 are told).
	pub resident: Vec<ResidentAdapter>,
	/// How often it announces: receivers keep this announcement for three of these.
	pub interval_secs: u64,
	/// When the sender made it, in ms since the Unix epoch. A receiver keeps only a peer's
	/// newest, and none older than three intervals or dated more than a minute ahead of its own
	/// clock, so an announcement recorded earlier cannot be replayed.
	pub issued_at_ms: u64,
	/// The sender is stopping: its peers forget it now, not three intervals later.
	#[serde(default, skip_serializing_if = "std::ops::Not::not")]
	pub leaving: bool,
}

/// The gossip message: the announcement's JSON as sent, and the claim that signs those very
/// bytes. Signing the bytes (not a re-serialisation of what a receiver parsed) keeps claims
/// valid between versions that add fields, and for signers in other languages.
#[derive(Serialize, Deserialize)]
struct Envelope {
	announcement: String,
	#[serde(default, skip_serializing_if = "Option::is_none")]
	worker: Option<WorkerClaim>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResidentAdapter {
	/// Its name on that worker (names are local: the hash identifies the adapter).
	pub name: String,
	/// blake2-256 of `adapter_model.safetensors`, lower-case hex.
	pub hash: String,
}

/// A worker's session key vouching for an announcement. The signature covers the announcement's
/// bytes, the libp2p peer id sending it, the account, the chain and a domain tag
/// ([`ANNOUNCEMENT_DOMAIN`]): it cannot be moved to another peer or account, edited, or shown on
/// another chain or for another purpose. It says that a key registered on chain signed the
/// announcement, not that the chain knows its endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerClaim {
	/// The worker's account, SS58.
	pub account: String,
	/// Its session public key, `0x` + hex: the chain says whether it is the account's.
	pub session_key: String,
	/// The chain's genesis hash, `0x` + hex.
	pub chain: String,
	/// The session key's sr25519 signature, `0x` + hex.
	pub signature: String,
}

/// What the session key signs for the announcement `body` sent by `peer` for `account`.
fn claim_payload(body: &[u8], peer: &PeerId, account: &AccountId32, genesis: &ContentHash) -> Vec<u8> {
	signing_payload(ANNOUNCEMENT_DOMAIN, genesis, &(peer.to_bytes(), account, content_hash(body)))
}

/// The gossip message for `announcement` from `peer`, vouched for by `signer` when given.
fn message(announcement: &Announcement, peer: &PeerId, signer: Option<&AnnouncementSigner>) -> Vec<u8> {
	let body = serde_json::to_string(announcement).expect("an announcement serializes");
	let worker = signer.map(|signer| signer.sign(body.as_bytes(), peer));
	serde_json::to_vec(&Envelope { announcement: body, worker }).expect("an envelope serializes")
}

fn from_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
	let mut bytes = [0u8; N];
	hex::decode_to_slice(text.strip_prefix("0x")?, &mut bytes).ok()?;
	Some(bytes)
}

/// A claim whose signature checked out.
#[derive(Clone, Debug, PartialEq, Eq)]
struct VerifiedClaim {
	/// As received, to be shown.
	claim: WorkerClaim,
	account: AccountId32,
	session_key: sr25519::Public,
	chain: ContentHash,
}

impl WorkerClaim {
	/// The claim, parsed, if it is well formed and its signature is the session key's for the
	/// announcement `body` sent by `peer`.
	fn verify(&self, body: &[u8], peer: &PeerId) -> Result<VerifiedClaim, &'static str> {
		let account = parse_account(&self.account).map_err(|_| "the worker claim's account is not an account id")?;
		let session_key = from_hex::<32>(&self.session_key).ok_or("the worker claim's session key is not 0x + 32 bytes")?;
		let chain = from_hex::<32>(&self.chain).ok_or("the worker claim's chain is not 0x + 32 bytes")?;
		let signature = from_hex::<64>(&self.signature).ok_or("the worker claim's signature is not 0x + 64 bytes")?;
		let claim = VerifiedClaim {
			claim: self.clone(),
			account,
			session_key: sr25519::Public::from_raw(session_key),
			chain: ContentHash::from(chain),
		};
		let payload = claim_payload(body, peer, &claim.account, &claim.chain);
		if !sr25519::Pair::verify(&sr25519::Signature::from_raw(signature), payload, &claim.session_key) {
			return Err("the worker claim's signature is not its session key's for this announcement and peer");
		}
		Ok(claim)
	}

	/// Whether it names an active worker of the chain with `genesis` whose session key it is.
	fn registered_on(claim: &VerifiedClaim, genesis: &ContentHash, workers: &HashMap<AccountId32, WorkerInfo>) -> bool {
		claim.chain == *genesis && workers.get(&claim.account).is_some_and(|w| w.active && w.session_key == claim.session_key)
	}
}

/// The worker's session key, which vouches for its announcements.
#[derive(Clone, Debug)]
pub struct AnnouncementSigner {
	pub session: Sr25519Key,
	pub account: AccountId32,
	pub genesis: ContentHash,
}

impl AnnouncementSigner {
	fn sign(&self, body: &[u8], peer: &PeerId) -> WorkerClaim {
		let signature = self.session.sign(&claim_payload(body, peer, &self.account, &self.genesis));
		WorkerClaim {
			account: self.account.to_ss58check(),
			session_key: format!("0x{}", hex::encode(self.session.public().0)),
			chain: hex_hash(&self.genesis),
			signature: format!("0x{}", hex::encode(signature.0)),
		}
	}
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

fn unix_ms() -> u64 {
	SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

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
struct Entry {
	announcement: Announcement,
	received: Instant,
	claim: Option<VerifiedClaim>,
}

impl Entry {
	/// Whether it is still kept: until three of its intervals after it came, and until an
	/// announcement dated before it could no longer be taken as current (a sender's clock may be
	/// up to a minute ahead), so a goodbye outlives what it ends.
	fn current(&self) -> bool {
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

fn kept_for(announcement: &Announcement) -> Duration {
	Duration::from_secs(announcement.interval_secs.min(MAX_INTERVAL_SECS) * 3)
}

impl Peers {
	fn new(local: PeerId, listening: watch::Receiver<Vec<Multiaddr>>) -> Self {
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
	fn out_of_date(table: &HashMap<PeerId, Entry>, peer: &PeerId, announcement: &Announcement) -> Option<&'static str> {
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
	fn record(&self, peer: PeerId, announcement: Announcement, claim: Option<VerifiedClaim>) -> Result<(), &'static str> {
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
	fn judge(&self, source: PeerId, data: &[u8]) -> gossipsub::MessageAcceptance {
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
	fn prune(&self) {
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
struct Behaviour {
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
		bootstrap: config.bootstrap.clone(),
	};
	let task = tokio::spawn(node.run(swarm, stopped));
	tracing::info!(%peer_id, "p2p node started");
	Ok(P2pNode { peer_id, peers, listening, connected, stop: Some(Departure(stop)), task })
}

/// The swarm task's state.
struct Node {
	peer_id: PeerId,
	topic: gossipsub::IdentTopic,
	announce: Box<dyn Fn() -> Announcement + Send>,
	interval: Duration,
	signer: Option<AnnouncementSigner>,
	/// The date of the last announcement: each is dated later than the one before, so none is
	/// taken for a replay.
	last_issued_ms: Cell<u64>,
	/// Set once the goodbye is out: anything said after it is a goodbye too.
	leaving: Cell<bool>,
	peers: Peers,
	listening: watch::Sender<Vec<Multiaddr>>,
	connected: watch::Sender<usize>,
	bootstrap: Vec<Multiaddr>,
}

impl Node {
	/// Runs until told to stop (or the [`P2pNode`] is dropped), then says goodbye.
	async fn run(self, mut swarm: Swarm<Behaviour>, mut stop: oneshot::Receiver<()>) {
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

	fn publish(&self, swarm: &mut Swarm<Behaviour>, leaving: bool) {
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

	/// What the worker's closure gives; the node fills in the rest.
	fn announcement(endpoint: &str, adapters: &[(&str, char)]) -> Announcement {
		Announcement {
			endpoint: endpoint.into(),
			base_model: "SmolLM2-135M-Instruct".into(),
			resident: adapters
				.iter()
				.map(|(n, h)| ResidentAdapter { name: (*n).into(), hash: h.to_string().repeat(64) })
				.collect(),
			..Announcement::default()
		}
	}

	/// As received: dated now, one-second interval.
	fn received(endpoint: &str, adapters: &[(&str, char)]) -> Announcement {
		Announcement { interval_secs: 1, issued_at_ms: unix_ms(), ..announcement(endpoint, adapters) }
	}

	fn config(bootstrap: Vec<Multiaddr>, interval_secs: u64) -> P2pConfig {
		P2pConfig::new(vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()], bootstrap, Duration::from_secs(interval_secs))
	}

	fn peers() -> Peers {
		Peers::new(PeerId::random(), watch::channel(Vec::new()).1)
	}

	fn signer(genesis: ContentHash) -> AnnouncementSigner {
		let session = Sr25519Key::from_suri("//Alice//session").unwrap();
		AnnouncementSigner { account: Sr25519Key::from_suri("//Alice").unwrap().account(), session, genesis }
	}

	fn registered(signer: &AnnouncementSigner, active: bool) -> HashMap<AccountId32, WorkerInfo> {
		let info = WorkerInfo {
			session_key: signer.session.public(),
			compute_price_per_1k_tokens: 0,
			serves: vec![0],
			stake: 1,
			active,
		};
		HashMap::from([(signer.account.clone(), info)])
	}

	async fn first_address(node: &P2pNode) -> Multiaddr {
		let mut listening = node.listening.clone();
		let listened = tokio::time::timeout(Duration::from_secs(30), listening.wait_for(|a| !a.is_empty()));
		let address = listened.await.expect("the node listens within 30 s").unwrap()[0].clone();
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
	/// hears the others' resident adapters, a filter by adapter name or hash finds the ones
	/// holding it, and the chain-backed one is listed as registered. A stopping worker's goodbye
	/// removes it at once (its 60 s interval would keep it listed for three minutes).
	#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
	async fn workers_find_each_other_and_learn_where_adapters_are_resident() {
		let genesis = ContentHash::repeat_byte(7);
		let a = start(config(vec![], 1), || announcement("http://a:8000", &[("legal", 'a')])).await.unwrap();
		let a_address = first_address(&a).await;
		let b_signer = signer(genesis);
		let workers = registered(&b_signer, true);
		let b_config = P2pConfig { signer: Some(b_signer), ..config(vec![a_address.clone()], 60) };
		let b = start(b_config, || announcement("http://b:8000", &[("legal", 'a'), ("tutor", 'b')])).await.unwrap();
		until("b to connect to a", || *b.connected.borrow() >= 1).await;
		let c = start(config(vec![a_address], 1), || announcement("http://c:8000", &[])).await.unwrap();

		until("c to connect to b, found through a", || *c.connected.borrow() == 2).await;
		until("c to hear a and b", || c.peers.list(None, None).len() == 2).await;
		until("a to hear b and c", || a.peers.list(None, None).len() == 2).await;
		let mut expected = vec![("http://a:8000", a.peer_id), ("http://b:8000", b.peer_id)];
		expected.sort_by_key(|(_, peer)| peer.to_string());
		let expected: Vec<String> = expected.iter().map(|(e, _)| e.to_string()).collect();
		until("c to list who holds `legal`", || {
			c.peers.list(Some("legal"), None).into_iter().map(|p| p.announcement.endpoint).collect::<Vec<_>>() == expected
		})
		.await;
		until("c to list who holds b's second adapter, by hash", || {
			let tutor = c.peers.list(Some(&"b".repeat(64)), None);
			tutor.len() == 1 && tutor[0].peer_id == b.peer_id.to_string() && tutor[0].announcement.resident[1].name == "tutor"
		})
		.await;
		assert!(c.peers.list(Some("nobody"), None).is_empty());
		assert!(!c.peers.list(None, None).iter().any(|p| p.peer_id == c.peer_id.to_string()), "not itself");
		let registrations: Vec<(String, Option<bool>)> = c
			.peers
			.list(None, Some((&genesis, &workers)))
			.into_iter()
			.map(|p| (p.announcement.endpoint, p.registered))
			.collect();
		assert!(registrations.contains(&("http://b:8000".into(), Some(true))), "{registrations:?}");
		assert!(registrations.contains(&("http://a:8000".into(), Some(false))), "{registrations:?}");
		assert!(c.peers.list(None, None).iter().all(|p| p.registered.is_none()));
		assert!(c.peers.listening()[0].ends_with(&format!("/p2p/{}", c.peer_id)));

		let b_id = b.peer_id.to_string();
		b.stop().await;
		until("c to forget b on its goodbye", || c.peers.list(None, None).iter().all(|p| p.peer_id != b_id)).await;
		until("a to forget b on its goodbye", || a.peers.list(None, None).iter().all(|p| p.peer_id != b_id)).await;
		a.stop().await;
		c.stop().await;
	}

	/// A worker at its connection limit refuses the next peer.
	#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
	async fn a_worker_at_its_connection_limit_refuses_more_peers() {
		let a = start(P2pConfig { max_connections: 1, ..config(vec![], 1) }, || announcement("http://a:8000", &[])).await.unwrap();
		let a_address = first_address(&a).await;
		let b = start(config(vec![a_address.clone()], 1), || announcement("http://b:8000", &[])).await.unwrap();
		until("b to hear a", || b.peers.list(None, None).len() == 1).await;
		let c = start(config(vec![a_address], 1), || announcement("http://c:8000", &[])).await.unwrap();
		tokio::time::sleep(Duration::from_secs(2)).await;
		assert_eq!(*a.connected.borrow(), 1);
		assert_eq!(*c.connected.borrow(), 0);
		assert!(c.peers.list(None, None).is_empty());
		for node in [a, b, c] {
			node.stop().await;
		}
	}

	/// An envelope with `body` as the announcement's bytes and `worker` as its claim.
	fn envelope(body: &str, worker: Option<WorkerClaim>) -> Vec<u8> {
		serde_json::to_vec(&Envelope { announcement: body.into(), worker }).unwrap()
	}

	#[test]
	fn a_worker_claim_binds_the_announcement_the_peer_the_account_and_the_chain() {
		let genesis = ContentHash::repeat_byte(7);
		let signer = signer(genesis);
		let peer = PeerId::random();
		let body = serde_json::to_string(&received("http://w:8000", &[("legal", 'a')])).unwrap();
		let claim = signer.sign(body.as_bytes(), &peer);
		let verified = claim.verify(body.as_bytes(), &peer).expect("a signed announcement verifies");
		assert_eq!(verified.account, signer.account);
		let workers = registered(&signer, true);
		assert!(WorkerClaim::registered_on(&verified, &genesis, &workers));
		assert!(!WorkerClaim::registered_on(&verified, &ContentHash::repeat_byte(8), &workers), "another chain");
		assert!(!WorkerClaim::registered_on(&verified, &genesis, &registered(&signer, false)), "not active");
		assert!(!WorkerClaim::registered_on(&verified, &genesis, &HashMap::new()), "not registered");
		let other_key = AnnouncementSigner { session: Sr25519Key::from_suri("//Bob").unwrap(), ..signer.clone() };
		assert!(!WorkerClaim::registered_on(&verified, &genesis, &registered(&other_key, true)), "not its session key");

		assert!(claim.verify(body.as_bytes(), &PeerId::random()).is_err(), "another peer sending it");
		// Any change to the bytes, even one a parser would not see, breaks it.
		for edited in [body.replace("http://w:8000", "http://evil:8000"), format!("{body} "), body.replace("legal", "LEGAL")] {
			assert!(claim.verify(edited.as_bytes(), &peer).is_err(), "{edited}");
		}
		let other_chain = WorkerClaim { chain: hex_hash(&ContentHash::repeat_byte(8)), ..claim.clone() };
		assert!(other_chain.verify(body.as_bytes(), &peer).is_err());
		let bob = Sr25519Key::from_suri("//Bob").unwrap().account().to_ss58check();
		assert!(WorkerClaim { account: bob, ..claim.clone() }.verify(body.as_bytes(), &peer).is_err(), "another account");
		assert!(WorkerClaim { signature: "0x00".into(), ..claim }.verify(body.as_bytes(), &peer).is_err());
	}

	/// Received messages: a valid one is kept and passed on, a malformed or forged one is
	/// refused, an out-of-date one (replayed, older, or dated ahead) is dropped quietly, and a
	/// goodbye unlists the peer and stops its earlier announcements from coming back. Fields a
	/// newer version adds are ignored, and its claim still verifies.
	#[test]
	fn received_announcements_are_judged() {
		use gossipsub::MessageAcceptance::{Accept, Ignore, Reject};
		let peers = peers();
		let peer = PeerId::random();
		let signer = signer(ContentHash::repeat_byte(7));
		let first = received("http://w:8000", &[("legal", 'a')]);
		let signed = message(&first, &peer, Some(&signer));
		assert_eq!(peers.judge(peer, &signed), Accept);
		let listed = peers.list(Some("legal"), None);
		assert_eq!(listed.len(), 1);
		assert_eq!(listed[0].worker.as_ref().map(|w| w.account.clone()), Some(signer.account.to_ss58check()));
		assert_eq!(peers.judge(peer, &signed), Ignore, "a replay");
		let claim = serde_json::from_slice::<Envelope>(&signed).unwrap().worker;
		let forged = Announcement { endpoint: "http://evil:8000".into(), issued_at_ms: first.issued_at_ms + 1, ..first.clone() };
		assert_eq!(peers.judge(peer, &envelope(&serde_json::to_string(&forged).unwrap(), claim)), Reject, "edited under its claim");
		assert_eq!(peers.judge(PeerId::random(), &signed), Reject, "a claim sent by another peer");
		assert_eq!(peers.judge(peer, b"not json"), Reject);
		assert_eq!(peers.judge(peer, &envelope("not json", None)), Reject);
		let bad_endpoint = Announcement { endpoint: "file:///x".into(), ..received("http://w", &[]) };
		assert_eq!(peers.judge(peer, &message(&bad_endpoint, &peer, None)), Reject);

		let later = Announcement { issued_at_ms: first.issued_at_ms + 10, ..received("http://w:8000", &[]) };
		assert_eq!(peers.judge(peer, &message(&later, &peer, None)), Accept, "unsigned and newer");
		assert_eq!(peers.list(Some("legal"), None).len(), 0, "the newer one replaced it");
		let older = Announcement { issued_at_ms: first.issued_at_ms + 5, ..later.clone() };
		assert_eq!(peers.judge(peer, &message(&older, &peer, None)), Ignore, "older than the one kept");
		let other = PeerId::random();
		let stale = Announcement { issued_at_ms: unix_ms() - 3_100, ..received("http://o:8000", &[]) };
		assert_eq!(peers.judge(other, &message(&stale, &other, None)), Ignore, "older than three intervals");
		let ahead = Announcement { issued_at_ms: unix_ms() + 2 * MAX_CLOCK_AHEAD_MS, ..received("http://o:8000", &[]) };
		assert_eq!(peers.judge(other, &message(&ahead, &other, None)), Ignore, "dated ahead");

		// A newer version's announcement, with a field this one does not know, signed as sent.
		let mut value = serde_json::to_value(received("http://n:8000", &[])).unwrap();
		value["load"] = serde_json::json!(0.5);
		let body = value.to_string();
		let newer = PeerId::random();
		assert_eq!(peers.judge(newer, &envelope(&body, Some(signer.sign(body.as_bytes(), &newer)))), Accept);

		let goodbye = Announcement { leaving: true, issued_at_ms: later.issued_at_ms + 1, ..later.clone() };
		assert_eq!(peers.judge(peer, &message(&goodbye, &peer, None)), Accept);
		assert!(peers.list(None, None).iter().all(|p| p.peer_id != peer.to_string()), "a leaving peer is not listed");
		assert_eq!(peers.judge(peer, &message(&later, &peer, None)), Ignore, "its earlier announcement cannot bring it back");
	}

	/// A full table makes room from the peers without a claim first.
	#[test]
	fn a_full_table_evicts_unclaimed_peers_first() {
		let peers = peers();
		let signer = signer(ContentHash::repeat_byte(7));
		let claimed = PeerId::random();
		let body = serde_json::to_string(&received("http://c:8000", &[])).unwrap();
		let claim = signer.sign(body.as_bytes(), &claimed).verify(body.as_bytes(), &claimed).unwrap();
		peers.record(claimed, received("http://c:8000", &[]), Some(claim)).unwrap();
		for _ in 1..MAX_PEERS {
			peers.record(PeerId::random(), received("http://u:8000", &[]), None).unwrap();
		}
		peers.record(PeerId::random(), received("http://new:8000", &[]), None).unwrap();
		let listed = peers.list(None, None);
		assert_eq!(listed.len(), MAX_PEERS);
		assert!(listed.iter().any(|p| p.peer_id == claimed.to_string()), "the oldest, but claimed, stays");
	}

	#[test]
	fn announcements_are_checked_and_the_table_is_bounded() {
		let good = received("https://w.example:8000", &[("legal", 'a')]);
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
		let peers = peers();
		let first = PeerId::random();
		peers.record(first, good.clone(), None).unwrap();
		for _ in 0..MAX_PEERS {
			peers.record(PeerId::random(), good.clone(), None).unwrap();
		}
		let listed = peers.list(None, None);
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
		let config = P2pConfig::new(vec![], vec!["/ip4/127.0.0.1/tcp/1".parse().unwrap()], Duration::from_secs(1));
		let err = start(config, || announcement("http://x", &[])).await.err().expect("refused").to_string();
		assert!(err.contains("/p2p/<peer id>"), "{err}");
	}
}
