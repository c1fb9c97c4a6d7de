//! Types of the attribution pallet.

use crate::Config;
use codec::{Decode, DecodeWithMemTracking, Encode, MaxEncodedLen};
use openledger_primitives::SignedReceipt;
use polkadot_sdk::{
	frame_support::traits::fungible::Inspect,
	frame_system::{self, pallet_prelude::BlockNumberFor},
	sp_runtime::DispatchError,
};
use scale_info::TypeInfo;

pub type BalanceOf<T> =
	<<T as Config>::Currency as Inspect<<T as frame_system::Config>::AccountId>>::Balance;

pub type SignedReceiptOf<T> = SignedReceipt<<T as frame_system::Config>::AccountId, BalanceOf<T>>;

/// A credit withdrawal waiting out `WithdrawalDelay`, so receipts for work already done can
/// still be settled against the credit.
#[derive(Clone, PartialEq, Eq, Debug, Encode, Decode, MaxEncodedLen, TypeInfo)]
pub struct PendingWithdrawal<Balance, BlockNumber> {
	pub amount: Balance,
	pub unlock_at: BlockNumber,
}

pub type PendingWithdrawalOf<T> = PendingWithdrawal<BalanceOf<T>, BlockNumberFor<T>>;

/// Why a receipt in a batch was not settled. Each rejected receipt pays nothing.
#[derive(
	Clone, Copy, PartialEq, Eq, Debug, Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo,
)]
pub enum RejectReason {
	/// A receipt for this worker and request was already settled.
	AlreadySettled,
	/// The receipt's `expires_at` has passed.
	Expired,
	/// The receipt's `expires_at` is further ahead than `MaxReceiptLifetime`.
	ExpiryTooFar,
	/// The receipt's worker is not registered, not active, or below the minimum stake.
	UnknownWorker,
	/// The worker does not serve the receipt's base model.
	ModelNotServed,
	/// The worker's session key did not sign these bytes: a wrong key, a wrong chain (genesis
	/// hash) or a wrong domain tag, which a signature cannot tell apart.
	InvalidSignature,
	/// The base model is not registered or retired.
	UnknownBaseModel,
	/// The adapter is not registered.
	UnknownAdapter,
	/// The adapter's weights hash on chain differs from the receipt's.
	AdapterHashMismatch,
	/// The adapter belongs to another base model.
	AdapterBaseMismatch,
	/// The prompt template is not registered.
	UnknownPrompt,
	/// The prompt's template hash on chain differs from the receipt's.
	PromptHashMismatch,
	/// An attributed item is unknown or not accepted.
	UnacceptedItem,
	/// A training entry names a DataNet outside the adapter's provenance, or names an item.
	InvalidTrainingEntry,
	/// The attribution weights do not sum to 1,000,000 ppm, or an item entry names no item.
	InvalidAttribution,
	/// The voucher is for another payer, worker or request.
	VoucherMismatch,
	/// The voucher's signature is not the payer's.
	InvalidVoucherSignature,
	/// The receipt does not expire with its voucher. A request's settled record is kept under
	/// the receipt's expiry, so a voucher's receipt must expire when the voucher does, or a
	/// second receipt for the request, kept under another expiry, could be paid from it again.
	ExpiryDiffersFromVoucher,
	/// The receipt carries no voucher and the payer set no allowance for the worker.
	NotAuthorised,
	/// The fee exceeds the voucher's `max_fee` or the remaining allowance.
	FeeExceedsAuthorisation,
	/// The payer's credit does not cover the fee.
	InsufficientCredit,
	/// The worker has settled `MaxSettledPerExpiry` requests expiring at this block already;
	/// further receipts must expire at another block.
	ExpiryFull,
	/// The fee does not fit the balance type.
	FeeOverflow,
	/// Paying out failed (e.g. a recipient account cannot receive).
	PayoutFailed,
	/// An MCP tool the receipt names is not registered (or was retired).
	UnknownTool,
	/// A tool entry names a tool twice or counts no calls.
	InvalidToolEntry,
}

impl From<DispatchError> for RejectReason {
	fn from(_: DispatchError) -> Self {
		RejectReason::PayoutFailed
	}
}
