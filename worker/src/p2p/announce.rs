//! What a worker announces, and the session key's claim that vouches for it.

use std::{
	collections::HashMap,
	time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Result;
use libp2p::PeerId;
use openledger_primitives::{content_hash, signing_payload, ContentHash, ANNOUNCEMENT_DOMAIN};
use polkadot_sdk::{
	sp_core::{crypto::Ss58Codec, sr25519, Pair},
	sp_runtime::AccountId32,
};
use serde::{Deserialize, Serialize};

use openledger_ledger::{
	chain::WorkerInfo,
	keys::{hex_hash, parse_account, Sr25519Key},
};

use super::*;

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
pub(super) struct Envelope {
	pub(super) announcement: String,
	#[serde(default, skip_serializing_if = "Option::is_none")]
	pub(super) worker: Option<WorkerClaim>,
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
pub(super) fn claim_payload(body: &[u8], peer: &PeerId, account: &AccountId32, genesis: &ContentHash) -> Vec<u8> {
	signing_payload(ANNOUNCEMENT_DOMAIN, genesis, &(peer.to_bytes(), account, content_hash(body)))
}

/// The gossip message for `announcement` from `peer`, vouched for by `signer` when given.
pub(super) fn message(announcement: &Announcement, peer: &PeerId, signer: Option<&AnnouncementSigner>) -> Vec<u8> {
	let body = serde_json::to_string(announcement).expect("an announcement serializes");
	let worker = signer.map(|signer| signer.sign(body.as_bytes(), peer));
	serde_json::to_vec(&Envelope { announcement: body, worker }).expect("an envelope serializes")
}

pub(super) fn from_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
	let mut bytes = [0u8; N];
	hex::decode_to_slice(text.strip_prefix("0x")?, &mut bytes).ok()?;
	Some(bytes)
}

/// A claim whose signature checked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct VerifiedClaim {
	/// As received, to be shown.
	pub(super) claim: WorkerClaim,
	pub(super) account: AccountId32,
	pub(super) session_key: sr25519::Public,
	pub(super) chain: ContentHash,
}

impl WorkerClaim {
	/// The claim, parsed, if it is well formed and its signature is the session key's for the
	/// announcement `body` sent by `peer`.
	pub(super) fn verify(&self, body: &[u8], peer: &PeerId) -> Result<VerifiedClaim, &'static str> {
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
	pub(super) fn registered_on(claim: &VerifiedClaim, genesis: &ContentHash, workers: &HashMap<AccountId32, WorkerInfo>) -> bool {
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
	pub(super) fn sign(&self, body: &[u8], peer: &PeerId) -> WorkerClaim {
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
	pub(super) fn invalid(&self) -> Option<&'static str> {
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

pub(super) fn unix_ms() -> u64 {
	SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
