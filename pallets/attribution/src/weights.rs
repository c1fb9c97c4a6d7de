//! Weights for `pallet_attribution`.
//!
//! PROVISIONAL: the reads and writes are counted from the code, the execution times are
//! estimates. This file is to be replaced by the output of the benchmarks in `benchmarking.rs`
//! (see `docs/weights.md`); until then the estimates err high.

#![allow(unused_parens, unused_imports)]

use core::marker::PhantomData;
use polkadot_sdk::frame_support::{
	traits::Get,
	weights::{constants::RocksDbWeight, Weight},
};

/// Weight functions needed by `pallet_attribution`.
pub trait WeightInfo {
	fn deposit() -> Weight;
	fn withdraw() -> Weight;
	fn claim_withdrawal() -> Weight;
	fn set_allowance() -> Weight;
	/// `n` receipts, each at the worst case: all attribution entries naming distinct items of
	/// distinct contributors, an adapter with full provenance, a prompt and a voucher.
	fn submit_receipts(n: u32) -> Weight;
	fn set_fee_params() -> Weight;
	/// Pruning `n` expired settled records.
	fn prune(n: u32) -> Weight;
}

/// Weights for `pallet_attribution` using the runtime's database weights.
pub struct SubstrateWeight<T>(PhantomData<T>);

macro_rules! weights {
	($db:ty) => {
		fn deposit() -> Weight {
			Weight::from_parts(50_000_000, 4_000)
				.saturating_add(<$db>::get().reads(2))
				.saturating_add(<$db>::get().writes(2))
		}
		fn withdraw() -> Weight {
			Weight::from_parts(40_000_000, 4_000)
				.saturating_add(<$db>::get().reads(2))
				.saturating_add(<$db>::get().writes(1))
		}
		fn claim_withdrawal() -> Weight {
			Weight::from_parts(50_000_000, 4_000)
				.saturating_add(<$db>::get().reads(3))
				.saturating_add(<$db>::get().writes(3))
		}
		fn set_allowance() -> Weight {
			Weight::from_parts(30_000_000, 4_000)
				.saturating_add(<$db>::get().reads(2))
				.saturating_add(<$db>::get().writes(2))
		}
		fn submit_receipts(n: u32) -> Weight {
			Weight::from_parts(20_000_000, 2_000)
				.saturating_add(Weight::from_parts(400_000_000, 60_000).saturating_mul(n.into()))
				.saturating_add(<$db>::get().reads(1))
				.saturating_add(<$db>::get().reads(50).saturating_mul(n.into()))
				.saturating_add(<$db>::get().writes(40).saturating_mul(n.into()))
		}
		fn set_fee_params() -> Weight {
			Weight::from_parts(10_000_000, 0).saturating_add(<$db>::get().writes(3))
		}
		fn prune(n: u32) -> Weight {
			Weight::from_parts(5_000_000, 1_000)
				.saturating_add(Weight::from_parts(10_000_000, 3_000).saturating_mul(n.into()))
				.saturating_add(<$db>::get().reads(2))
				.saturating_add(<$db>::get().writes(1))
				.saturating_add(<$db>::get().writes(2).saturating_mul(n.into()))
		}
	};
}

impl<T: polkadot_sdk::frame_system::Config> WeightInfo for SubstrateWeight<T> {
	weights!(T::DbWeight);
}

// For tests.
impl WeightInfo for () {
	weights!(RocksDbWeight);
}
