//! Storage types of the workers pallet.

use crate::Config;
use codec::{Decode, Encode, MaxEncodedLen};
use openledger_primitives::{price::PriceFloor, BaseModelId, Receipt};
use polkadot_sdk::{
	frame_support::{
		traits::{fungible::Inspect, Get},
		BoundedVec,
	},
	frame_system::{self, pallet_prelude::BlockNumberFor},
	sp_core::sr25519,
};
use scale_info::TypeInfo;

pub type BalanceOf<T> =
	<<T as Config>::Currency as Inspect<<T as frame_system::Config>::AccountId>>::Balance;

/// A receipt naming this runtime's accounts.
pub type ReceiptOf<T> = Receipt<<T as frame_system::Config>::AccountId>;

/// Where a worker stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Encode, Decode, MaxEncodedLen, TypeInfo)]
pub enum WorkerStatus<BlockNumber> {
	/// Serving: its session key may sign receipts (while its stake is at least `MinStake`).
	Active,
	/// Leaving: it may sign nothing; its stake stays held, and slashable, until `until`, then
	/// `withdraw_unbonded` releases it.
	Unbonding { until: BlockNumber },
	/// Caught equivocating: it may sign nothing; it can only unbond.
	Slashed,
}

/// An inference worker, keyed by its account (the stash its stake is held from).
#[derive(Clone, PartialEq, Eq, Debug, Encode, Decode, MaxEncodedLen, TypeInfo)]
#[scale_info(skip_type_params(MaxEndpoint, MaxServed))]
pub struct Worker<Balance, BlockNumber, MaxEndpoint, MaxServed>
where
	MaxEndpoint: Get<u32>,
	MaxServed: Get<u32>,
{
	/// The sr25519 key that signs the worker's receipts; owned by this worker alone.
	pub session_key: sr25519::Public,
	/// Where clients reach the worker, e.g. `https://worker.example:8080`.
	pub endpoint: BoundedVec<u8, MaxEndpoint>,
	/// The base models the worker serves: at least one, each active, each once.
	pub serves: BoundedVec<BaseModelId, MaxServed>,
	/// The worker's part of every fee, per 1000 tokens; a rise is charged only `PriceHold`
	/// blocks later (see `price_floor`).
	pub compute_price_per_1k_tokens: Balance,
	/// What is charged below the price set while a change is recent.
	pub price_floor: PriceFloor<Balance, BlockNumber>,
	/// Held from the worker's account under `HoldReason::Stake`.
	pub stake: Balance,
	pub status: WorkerStatus<BlockNumber>,
}

pub type WorkerOf<T> = Worker<
	BalanceOf<T>,
	BlockNumberFor<T>,
	<T as Config>::MaxEndpointLen,
	<T as Config>::MaxServedModels,
>;

/// Makes the state a benchmark needs that this pallet cannot make itself.
#[cfg(feature = "runtime-benchmarks")]
pub trait BenchmarkHelper {
	/// Returns `count` distinct base models that the registry reports active, registering and
	/// activating them first where needed.
	fn active_base_models(count: u32) -> alloc::vec::Vec<BaseModelId>;
}

/// For runtimes whose registry already reports base models `0..count` active.
#[cfg(feature = "runtime-benchmarks")]
impl BenchmarkHelper for () {
	fn active_base_models(count: u32) -> alloc::vec::Vec<BaseModelId> {
		(0..count).collect()
	}
}
