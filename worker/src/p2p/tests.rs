use std::{
	collections::HashMap,
	time::{Duration, Instant},
};

use libp2p::{gossipsub, Multiaddr, PeerId};
use openledger_primitives::ContentHash;
use polkadot_sdk::{
	sp_core::crypto::Ss58Codec,
	sp_runtime::AccountId32,
};
use tokio::sync::watch;

use openledger_ledger::{
	chain::WorkerInfo,
	keys::{hex_hash, Sr25519Key},
};

use super::{announce::*, peers::*, swarm::*, *};

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
	until("a to refuse c", || *a.refused.borrow() >= 1).await;
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
