//! Types shared by the OpenLedger runtime and the off-chain worker.
//!
//! Everything that is signed, hashed or priced on one side and checked on the other lives here,
//! once: ids, the attribution [`Receipt`], the payer's [`Voucher`], attribution entries, the
//! signing payload (domain tag + genesis hash + SCALE bytes) and content hashing.
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

use alloc::vec::Vec;
use codec::{Decode, DecodeWithMemTracking, Encode, MaxEncodedLen};
use polkadot_sdk::{
	sp_core::{sr25519, ConstU32, H256},
	sp_runtime::{traits::Verify, BoundedVec, MultiSignature},
};
use scale_info::TypeInfo;

pub mod fees;
pub mod price;
pub mod traits;

/// Identifies a DataNet.
pub type DataNetId = u32;
/// Identifies a contribution inside its DataNet (ids are per DataNet, starting at 0).
pub type ItemId = u32;
/// Identifies a registered base model.
pub type BaseModelId = u32;
/// Identifies a registered LoRA adapter.
pub type AdapterId = u32;
/// Identifies a registered prompt template.
pub type PromptId = u32;
/// Identifies a registered MCP tool.
pub type ToolId = u32;
/// A block number as receipts and vouchers carry it (the runtime uses `u32` blocks).
pub type BlockNumber = u32;
/// blake2-256 of some bytes.
pub type ContentHash = H256;
/// An amount of OPEN (18 decimals), as balances, prices and fees carry it.
pub type Balance = u128;

/// Parts per million: weights and shares are expressed on this scale.
pub const PPM: u32 = 1_000_000;

/// The most attribution entries one receipt may carry.
pub const MAX_ATTRIBUTION_ENTRIES: u32 = 32;
/// Bound type for [`MAX_ATTRIBUTION_ENTRIES`].
pub type MaxAttributionEntries = ConstU32<MAX_ATTRIBUTION_ENTRIES>;

/// The most MCP tools one receipt may name (a worker offers at most this many per request).
pub const MAX_TOOL_ENTRIES: u32 = 16;
/// Bound type for [`MAX_TOOL_ENTRIES`].
pub type MaxToolEntries = ConstU32<MAX_TOOL_ENTRIES>;

/// Domain tag prefixed to every signed receipt, so a receipt signature means nothing elsewhere.
pub const RECEIPT_DOMAIN: &[u8] = b"openledger/receipt/v1";
/// Domain tag prefixed to every signed voucher.
pub const VOUCHER_DOMAIN: &[u8] = b"openledger/voucher/v1";
/// Domain tag prefixed to a worker's signed p2p announcement (its session key vouching for the
/// endpoint and resident adapters a libp2p peer announces).
pub const ANNOUNCEMENT_DOMAIN: &[u8] = b"openledger/announcement/v1";

/// blake2-256 of `bytes`: the content hash used for DataNet items, adapter weights and templates.
pub fn content_hash(bytes: &[u8]) -> ContentHash {
	H256(polkadot_sdk::sp_crypto_hashing::blake2_256(bytes))
}

/// Normalises a DataNet item's text before hashing, so the worker and anyone re-checking a
/// receipt compute the same hash: CRLF/CR become LF, trailing whitespace is stripped from every
/// line, leading and trailing blank lines are dropped. Text is otherwise kept as written.
pub fn normalise_item_text(text: &str) -> alloc::string::String {
	let unified = text.replace("\r\n", "\n").replace('\r', "\n");
	let lines: Vec<&str> = unified.lines().map(|line| line.trim_end()).collect();
	let first = lines.iter().position(|l| !l.is_empty());
	let last = lines.iter().rposition(|l| !l.is_empty());
	match (first, last) {
		(Some(first), Some(last)) => lines[first..=last].join("\n"),
		_ => alloc::string::String::new(),
	}
}

/// The content hash of a DataNet item: blake2-256 of its normalised UTF-8 text.
pub fn item_hash(text: &str) -> ContentHash {
	content_hash(normalise_item_text(text).as_bytes())
}

/// The bytes a signature covers: `domain ++ genesis_hash ++ SCALE(value)`.
pub fn signing_payload<T: Encode>(domain: &[u8], genesis_hash: &H256, value: &T) -> Vec<u8> {
	let mut payload = Vec::with_capacity(domain.len() + 32 + value.size_hint());
	payload.extend_from_slice(domain);
	payload.extend_from_slice(genesis_hash.as_bytes());
	value.encode_to(&mut payload);
	payload
}

/// Why an item is named in a receipt's attribution.
#[derive(
	Clone, Copy, PartialEq, Eq, Debug, Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo,
)]
pub enum AttributionSource {
	/// The item was retrieved as context for the request (RAG).
	Retrieval,
	/// A verbatim span of the output occurs in the item.
	Span,
	/// The DataNet trained the adapter (its provenance share); names no item.
	Training,
}

/// One attribution entry of a receipt.
#[derive(
	Clone, Copy, PartialEq, Eq, Debug, Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo,
)]
pub struct AttributionEntry {
	pub source: AttributionSource,
	pub datanet: DataNetId,
	/// The item, for `Retrieval` and `Span`; `None` for `Training`.
	pub item: Option<ItemId>,
	/// Weight in parts per million; the entries of a receipt sum to [`PPM`].
	pub weight_ppm: u32,
}

impl AttributionEntry {
	/// Whether this entry names an item whose contributor is paid from the retrieval part.
	pub fn is_item(&self) -> bool {
		matches!(self.source, AttributionSource::Retrieval | AttributionSource::Span)
	}
}

/// An MCP tool a request used: how many of its calls succeeded, each paid the tool's price.
#[derive(
	Clone, Copy, PartialEq, Eq, Debug, Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo,
)]
pub struct ToolUse {
	pub tool: ToolId,
	/// At least one; failed calls are not counted.
	pub calls: u32,
}

/// The attribution receipt a worker signs for every request it serves.
///
/// The runtime never trusts a fee from the worker: it recomputes the fee from on-chain prices and
/// the token counts here. The receipt's id is the blake2-256 of its SCALE encoding.
#[derive(Clone, PartialEq, Eq, Debug, Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo)]
pub struct Receipt<AccountId> {
	/// The worker's account (its stash), which registered the signing session key.
	pub worker: AccountId,
	/// Who pays for the request.
	pub payer: AccountId,
	/// blake2-256 of the canonical request (it includes a request nonce, so equal bodies differ).
	pub request_hash: H256,
	/// blake2-256 of the generated output.
	pub output_hash: H256,
	pub base_model: BaseModelId,
	/// The adapter used and the weights hash the worker loaded.
	pub adapter: Option<(AdapterId, H256)>,
	/// The prompt template used and the template hash the worker rendered.
	pub prompt: Option<(PromptId, H256)>,
	pub prompt_tokens: u32,
	pub completion_tokens: u32,
	pub attribution: BoundedVec<AttributionEntry, MaxAttributionEntries>,
	/// The MCP tools the request called, each named once.
	pub tools: BoundedVec<ToolUse, MaxToolEntries>,
	/// The last block at which this receipt may be settled.
	pub expires_at: BlockNumber,
}

impl<AccountId: Encode> Receipt<AccountId> {
	/// The receipt's id: blake2-256 of its SCALE encoding.
	pub fn id(&self) -> H256 {
		self.using_encoded(content_hash)
	}

	/// The bytes the worker's session key signs.
	pub fn signing_payload(&self, genesis_hash: &H256) -> Vec<u8> {
		signing_payload(RECEIPT_DOMAIN, genesis_hash, self)
	}

	/// Whether `signature` is the session key `signer`'s signature of this receipt on the chain
	/// with `genesis_hash`.
	pub fn verify(
		&self,
		signature: &sr25519::Signature,
		signer: &sr25519::Public,
		genesis_hash: &H256,
	) -> bool {
		signature.verify(&self.signing_payload(genesis_hash)[..], signer)
	}

	/// Total tokens billed.
	pub fn total_tokens(&self) -> u64 {
		u64::from(self.prompt_tokens) + u64::from(self.completion_tokens)
	}

	/// The number of distinct items named by retrieval or span entries.
	pub fn attributed_items(&self) -> u32 {
		let mut seen: Vec<(DataNetId, ItemId)> = Vec::new();
		for entry in self.attribution.iter().filter(|e| e.is_item()) {
			if let Some(item) = entry.item {
				if !seen.contains(&(entry.datanet, item)) {
					seen.push((entry.datanet, item));
				}
			}
		}
		seen.len() as u32
	}
}

/// A payer's authorisation of one request: the worker may charge up to `max_fee` for it.
#[derive(Clone, PartialEq, Eq, Debug, Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo)]
pub struct Voucher<AccountId, Balance> {
	pub payer: AccountId,
	pub worker: AccountId,
	pub request_hash: H256,
	pub max_fee: Balance,
	/// The last block at which a receipt under this voucher may be settled.
	pub expires_at: BlockNumber,
}

impl<AccountId: Encode, Balance: Encode> Voucher<AccountId, Balance> {
	/// The bytes the payer signs.
	pub fn signing_payload(&self, genesis_hash: &H256) -> Vec<u8> {
		signing_payload(VOUCHER_DOMAIN, genesis_hash, self)
	}
}

impl<Balance: Encode> Voucher<polkadot_sdk::sp_runtime::AccountId32, Balance> {
	/// Whether `signature` is the payer's signature of this voucher on the chain with
	/// `genesis_hash`.
	pub fn verify(&self, signature: &MultiSignature, genesis_hash: &H256) -> bool {
		signature.verify(&self.signing_payload(genesis_hash)[..], &self.payer)
	}
}

/// A voucher with the payer's signature.
#[derive(Clone, PartialEq, Eq, Debug, Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo)]
pub struct SignedVoucher<AccountId, Balance> {
	pub voucher: Voucher<AccountId, Balance>,
	pub signature: MultiSignature,
}

/// A receipt as submitted on chain: the receipt, the worker's signature, and the payer's
/// voucher when the request was authorised by one (otherwise an on-chain allowance applies).
#[derive(Clone, PartialEq, Eq, Debug, Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo)]
pub struct SignedReceipt<AccountId, Balance> {
	pub receipt: Receipt<AccountId>,
	pub signature: sr25519::Signature,
	pub voucher: Option<SignedVoucher<AccountId, Balance>>,
}

#[cfg(test)]
mod tests {
	use super::*;
	use polkadot_sdk::{
		sp_core::Pair,
		sp_keyring::Sr25519Keyring,
		sp_runtime::AccountId32,
	};

	fn receipt() -> Receipt<AccountId32> {
		Receipt {
			worker: Sr25519Keyring::Bob.to_account_id(),
			payer: Sr25519Keyring::Alice.to_account_id(),
			request_hash: content_hash(b"request"),
			output_hash: content_hash(b"output"),
			base_model: 0,
			adapter: Some((1, content_hash(b"weights"))),
			prompt: None,
			prompt_tokens: 10,
			completion_tokens: 20,
			attribution: BoundedVec::truncate_from(alloc::vec![
				AttributionEntry {
					source: AttributionSource::Retrieval,
					datanet: 0,
					item: Some(3),
					weight_ppm: 600_000,
				},
				AttributionEntry {
					source: AttributionSource::Span,
					datanet: 0,
					item: Some(3),
					weight_ppm: 400_000,
				},
			]),
			tools: Default::default(),
			expires_at: 100,
		}
	}

	#[test]
	fn signature_is_bound_to_chain_and_domain() {
		let key = Sr25519Keyring::Charlie.pair();
		let genesis = H256::repeat_byte(7);
		let r = receipt();
		let signature = key.sign(&r.signing_payload(&genesis));
		assert!(r.verify(&signature, &key.public(), &genesis));
		assert!(!r.verify(&signature, &key.public(), &H256::repeat_byte(8)));
		// The same bytes under the voucher domain do not verify as a receipt.
		let other_domain = key.sign(&signing_payload(VOUCHER_DOMAIN, &genesis, &r));
		assert!(!r.verify(&other_domain, &key.public(), &genesis));
		let mut changed = r.clone();
		changed.completion_tokens += 1;
		assert!(!changed.verify(&signature, &key.public(), &genesis));
	}

	#[test]
	fn receipt_id_changes_with_any_field() {
		let r = receipt();
		let mut other = r.clone();
		other.expires_at += 1;
		assert_ne!(r.id(), other.id());
		assert_eq!(r.id(), receipt().id());
	}

	#[test]
	fn attributed_items_counts_distinct_items() {
		assert_eq!(receipt().attributed_items(), 1);
	}

	#[test]
	fn voucher_signature_verifies_for_payer_only() {
		let genesis = H256::repeat_byte(1);
		let voucher = Voucher::<AccountId32, u128> {
			payer: Sr25519Keyring::Alice.to_account_id(),
			worker: Sr25519Keyring::Bob.to_account_id(),
			request_hash: content_hash(b"r"),
			max_fee: 5,
			expires_at: 9,
		};
		let good: MultiSignature =
			Sr25519Keyring::Alice.pair().sign(&voucher.signing_payload(&genesis)).into();
		let bad: MultiSignature =
			Sr25519Keyring::Bob.pair().sign(&voucher.signing_payload(&genesis)).into();
		assert!(voucher.verify(&good, &genesis));
		assert!(!voucher.verify(&bad, &genesis));
		assert!(!voucher.verify(&good, &H256::zero()));
	}

	#[test]
	fn item_text_normalisation_is_stable() {
		assert_eq!(normalise_item_text("\n\r\nHello  \r\nworld\t\n\n"), "Hello\nworld");
		assert_eq!(item_hash("a \n"), item_hash("\na"));
		assert_ne!(item_hash("a"), item_hash("b"));
	}
}
