//! The worker's side of the ledger: who pays for a request (a payer-signed voucher or an
//! on-chain allowance, checked before any work), the signed attribution receipt of every
//! request served, the durable outbox that keeps receipts until the chain has judged them, the
//! chain client that reads prices and registrations, and the submitter that settles receipts.

pub mod authorise;
pub mod chain;
pub mod charge;
pub mod keys;
pub mod outbox;
pub mod service;
pub mod submitter;
pub mod view;

use codec::{Decode, Encode};
use openledger_primitives::{
	content_hash, AttributionEntry, BlockNumber, ContentHash, MaxAttributionEntries, MaxToolEntries, ToolUse,
};
use polkadot_sdk::sp_runtime::{AccountId32, BoundedVec, MultiSignature};

pub use openledger_primitives::Balance;

pub type Receipt = openledger_primitives::Receipt<AccountId32>;
pub type SignedReceipt = openledger_primitives::SignedReceipt<AccountId32, Balance>;
pub type Voucher = openledger_primitives::Voucher<AccountId32, Balance>;
pub type SignedVoucher = openledger_primitives::SignedVoucher<AccountId32, Balance>;

/// The header a payer's voucher travels in: `0x` + hex of the SCALE-encoded `SignedVoucher`.
pub const VOUCHER_HEADER: &str = "x-openledger-voucher";
/// Response header: the request hash the receipt will carry (known before generation, so
/// streams have it too).
pub const REQUEST_HASH_HEADER: &str = "x-openledger-request-hash";

/// The request hash a voucher signs: blake2-256 of the exact HTTP body bytes. Payers add a
/// field of their own (e.g. `"user"` or a nonce) to make two equal requests differ.
pub fn voucher_request_hash(body: &[u8]) -> ContentHash {
	content_hash(body)
}

/// Signs a voucher that lets `worker` charge `payer` up to `max_fee` for the request whose
/// body is `body`, on the chain with `genesis`, settleable until block `expires_at`.
pub fn sign_voucher(
	payer: &keys::Sr25519Key,
	worker: AccountId32,
	body: &[u8],
	max_fee: Balance,
	expires_at: BlockNumber,
	genesis: &ContentHash,
) -> SignedVoucher {
	let voucher = Voucher {
		payer: payer.account(),
		worker,
		request_hash: voucher_request_hash(body),
		max_fee,
		expires_at,
	};
	let signature = MultiSignature::Sr25519(payer.sign(&voucher.signing_payload(genesis)));
	SignedVoucher { voucher, signature }
}

/// The header value of a voucher.
pub fn encode_voucher(voucher: &SignedVoucher) -> String {
	format!("0x{}", hex::encode(voucher.encode()))
}

/// A voucher from its header value; `None` when it is not hex of a SCALE `SignedVoucher`.
pub fn decode_voucher(header: &str) -> Option<SignedVoucher> {
	let bytes = hex::decode(header.trim().strip_prefix("0x")?).ok()?;
	let mut input = bytes.as_slice();
	let voucher = SignedVoucher::decode(&mut input).ok()?;
	input.is_empty().then_some(voucher)
}

/// Everything a receipt says about one served request, before it is signed.
#[derive(Clone, Debug)]
pub struct Served {
	pub payer: AccountId32,
	pub request_hash: ContentHash,
	/// blake2-256 of the answer's text.
	pub output_hash: ContentHash,
	pub base_model: u32,
	pub adapter: Option<(u32, ContentHash)>,
	pub prompt: Option<(u32, ContentHash)>,
	pub prompt_tokens: u32,
	pub completion_tokens: u32,
	pub attribution: Vec<AttributionEntry>,
	/// The MCP tools called, each once, with its successful calls.
	pub tools: Vec<ToolUse>,
	pub expires_at: BlockNumber,
	pub voucher: Option<SignedVoucher>,
}

/// Builds the receipt of `served` and signs `DOMAIN ++ genesis ++ SCALE(receipt)` with the
/// session key.
pub fn sign_receipt(
	worker: &AccountId32,
	session: &keys::Sr25519Key,
	genesis: &ContentHash,
	served: Served,
) -> SignedReceipt {
	let receipt = Receipt {
		worker: worker.clone(),
		payer: served.payer,
		request_hash: served.request_hash,
		output_hash: served.output_hash,
		base_model: served.base_model,
		adapter: served.adapter,
		prompt: served.prompt,
		prompt_tokens: served.prompt_tokens,
		completion_tokens: served.completion_tokens,
		attribution: BoundedVec::<_, MaxAttributionEntries>::truncate_from(served.attribution),
		tools: BoundedVec::<_, MaxToolEntries>::truncate_from(served.tools),
		expires_at: served.expires_at,
	};
	let signature = session.sign(&receipt.signing_payload(genesis));
	SignedReceipt { receipt, signature, voucher: served.voucher }
}

/// A signed receipt for tests, distinct per `n`.
#[cfg(test)]
pub(crate) fn test_receipt(n: u8) -> SignedReceipt {
	let session = keys::Sr25519Key::from_suri("//Worker").unwrap();
	let served = Served {
		payer: keys::Sr25519Key::from_suri("//Alice").unwrap().account(),
		request_hash: content_hash(&[n]),
		output_hash: content_hash(format!("answer {n}").as_bytes()),
		base_model: 0,
		adapter: None,
		prompt: None,
		prompt_tokens: 10,
		completion_tokens: u32::from(n),
		attribution: Vec::new(),
		tools: Vec::new(),
		expires_at: 100,
		voucher: None,
	};
	sign_receipt(&session.account(), &session, &ContentHash::repeat_byte(9), served)
}

#[cfg(test)]
mod tests {
	use super::*;

	#[test]
	fn a_voucher_round_trips_through_its_header_and_verifies() {
		let payer = keys::Sr25519Key::from_suri("//Alice").unwrap();
		let worker = keys::Sr25519Key::from_suri("//Bob").unwrap().account();
		let genesis = ContentHash::repeat_byte(3);
		let signed = sign_voucher(&payer, worker, b"{\"model\":\"m\"}", 1_000, 50, &genesis);
		let header = encode_voucher(&signed);
		let decoded = decode_voucher(&header).unwrap();
		assert_eq!(decoded, signed);
		assert!(decoded.voucher.verify(&decoded.signature, &genesis));
		assert_eq!(decoded.voucher.request_hash, voucher_request_hash(b"{\"model\":\"m\"}"));
		assert!(decode_voucher("0x00").is_none());
		assert!(decode_voucher(&format!("{header}00")).is_none(), "trailing bytes are refused");
		assert!(decode_voucher("not hex").is_none());
	}

	#[test]
	fn a_receipt_is_signed_by_the_session_key_for_this_chain() {
		let signed = test_receipt(4);
		let session = keys::Sr25519Key::from_suri("//Worker").unwrap();
		assert!(signed.receipt.verify(&signed.signature, &session.public(), &ContentHash::repeat_byte(9)));
		assert!(!signed.receipt.verify(&signed.signature, &session.public(), &ContentHash::repeat_byte(8)));
		assert_eq!(signed.receipt.output_hash, content_hash(b"answer 4"));
	}
}
