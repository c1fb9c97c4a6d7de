//! Who pays for a request, decided before any work: a payer-signed voucher for exactly this
//! body, or an API key whose payer set an allowance for this worker; else 402.

use std::sync::Arc;

use openledger_primitives::{content_hash, ContentHash};
use polkadot_sdk::sp_runtime::AccountId32;

use super::{
	decode_voucher, keys::hex_hash, service::{Ledger, LedgerError}, voucher_request_hash, Balance, SignedVoucher,
	VOUCHER_HEADER,
};

/// Who pays for a request and how much they authorised.
#[derive(Debug)]
pub struct Authorisation {
	pub payer: AccountId32,
	pub request_hash: ContentHash,
	pub voucher: Option<SignedVoucher>,
	/// The most this one request may cost: the voucher's `max_fee` (unbounded for an allowance).
	pub per_request: Balance,
	/// What this payer's requests at this worker may cost together until they settle: the credit
	/// (and, for an allowance, the allowance) on chain when the request came.
	pub shared: Balance,
	/// The receipt's `expires_at`.
	pub expires_at: u32,
	/// Held while a voucher's request is served, until its receipt is in the outbox; never read,
	/// it works by being dropped.
	#[allow(dead_code)]
	pub(crate) claim: Option<VoucherClaim>,
}

/// A voucher's request hash, claimed when the request is authorised and released once its
/// receipt is in the outbox (where [`Ledger::authorise`] finds it) or the request ended without
/// one. Another request with the same voucher meanwhile is refused (409) before any generation,
/// so one fee never pays for several answers sent at once.
pub(crate) struct VoucherClaim {
	ledger: Arc<Ledger>,
	request_hash: ContentHash,
}

impl Drop for VoucherClaim {
	fn drop(&mut self) {
		self.ledger.claims.lock().expect("claims lock").remove(&self.request_hash);
	}
}

impl std::fmt::Debug for VoucherClaim {
	fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
		write!(f, "VoucherClaim({})", hex_hash(&self.request_hash))
	}
}

/// A voucher must leave the submitter at least this many blocks to settle its receipt.
const MIN_BLOCKS_TO_SETTLE: u32 = 5;

impl Ledger {
	/// Who pays for the request with this body: a voucher in [`VOUCHER_HEADER`], or an
	/// API key whose payer set an allowance for this worker. Checked before any work.
	pub async fn authorise(
		self: &Arc<Self>,
		voucher_header: Option<&str>,
		bearer: Option<&str>,
		body: &[u8],
		request_id: &str,
	) -> Result<Authorisation, LedgerError> {
		self.standing().map_err(LedgerError::NotInStanding)?;
		let snapshot = self.view.snapshot();
		let best = self.view.best_block();
		// A receipt must reach a block before it expires; leave the submitter a few blocks.
		let latest_expiry = best.saturating_add(snapshot.max_receipt_lifetime);
		if let Some(header) = voucher_header {
			let signed = decode_voucher(header).ok_or_else(|| {
				LedgerError::PaymentRequired(format!("the {} header is not a hex SCALE-encoded signed voucher", VOUCHER_HEADER))
			})?;
			let voucher = &signed.voucher;
			if !voucher.verify(&signed.signature, &self.genesis) {
				return Err(LedgerError::PaymentRequired("the voucher's signature is not its payer's on this chain".into()));
			}
			if voucher.worker != self.account {
				return Err(LedgerError::PaymentRequired(format!("the voucher is for worker {}, not this one ({})", voucher.worker, self.account)));
			}
			if voucher.request_hash != voucher_request_hash(body) {
				return Err(LedgerError::PaymentRequired(
					"the voucher's request hash is not the blake2-256 of this request's body".into(),
				));
			}
			if voucher.expires_at < best.saturating_add(MIN_BLOCKS_TO_SETTLE) {
				return Err(LedgerError::PaymentRequired(format!(
					"the voucher expires at block {}, too soon to settle (best block {best})",
					voucher.expires_at
				)));
			}
			// The chain refuses a voucher that outlives its receipt, and a receipt may expire
			// at most the receipt lifetime ahead.
			if voucher.expires_at > latest_expiry {
				return Err(LedgerError::PaymentRequired(format!(
					"the voucher expires at block {}, after the latest receipt expiry the chain allows ({latest_expiry})",
					voucher.expires_at
				)));
			}
			let served_already = || {
				LedgerError::AlreadyServed(format!(
					"request {} was served already; a voucher pays for one request",
					hex_hash(&voucher.request_hash)
				))
			};
			// Claimed before the outbox is read: a receipt stored meanwhile is found there, and
			// a copy of this request being served now holds the claim.
			if !self.claims.lock().expect("claims lock").insert(voucher.request_hash) {
				return Err(served_already());
			}
			let claim = VoucherClaim { ledger: self.clone(), request_hash: voucher.request_hash };
			if self.outbox.has_request(&voucher.request_hash)? {
				return Err(served_already());
			}
			// And on chain, so a worker that lost its outbox does not serve a settled voucher
			// again and sign a second receipt for its request (provable equivocation).
			if self.view.chain().settled(&self.account, voucher.expires_at, &voucher.request_hash).await? {
				return Err(served_already());
			}
			let funds = self.view.chain().payer_funds(&voucher.payer, &self.account).await?;
			if funds.credit.saturating_sub(self.committed(&voucher.payer)) == 0 || voucher.max_fee == 0 {
				return Err(LedgerError::PaymentRequired(format!(
					"payer {} has no credit on chain beyond what its unsettled requests may cost",
					voucher.payer
				)));
			}
			return Ok(Authorisation {
				payer: voucher.payer.clone(),
				request_hash: voucher.request_hash,
				per_request: voucher.max_fee,
				shared: funds.credit,
				expires_at: voucher.expires_at,
				voucher: Some(signed),
				claim: Some(claim),
			});
		}
		let Some(payer) = bearer.and_then(|key| self.api_keys.get(key)) else {
			return Err(LedgerError::PaymentRequired(format!(
				"payment required: send a payer-signed voucher in the {} header, or use an API key whose payer set an allowance for this worker",
				VOUCHER_HEADER
			)));
		};
		let funds = self.view.chain().payer_funds(payer, &self.account).await?;
		let committed = self.committed(payer);
		let shared = funds.allowance.min(funds.credit);
		if shared.saturating_sub(committed) == 0 {
			return Err(LedgerError::PaymentRequired(format!(
				"payer {payer} has {} credit and {} allowance for this worker, {committed} of it held for requests not yet settled",
				funds.credit, funds.allowance
			)));
		}
		// Equal bodies are different requests here: the request id makes the hash unique.
		let mut hashed = body.to_vec();
		hashed.extend_from_slice(request_id.as_bytes());
		Ok(Authorisation {
			payer: payer.clone(),
			request_hash: content_hash(&hashed),
			voucher: None,
			per_request: Balance::MAX,
			shared,
			expires_at: latest_expiry,
			claim: None,
		})
	}
}
