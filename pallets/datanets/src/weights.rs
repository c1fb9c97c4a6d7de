//! Weights for `pallet_datanets`.
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

/// Weight functions needed by `pallet_datanets`.
pub trait WeightInfo {
	fn create_datanet() -> Weight;
	fn update_metadata() -> Weight;
	fn add_curator() -> Weight;
	fn remove_curator() -> Weight;
	fn contribute() -> Weight;
	fn accept() -> Weight;
	fn reject() -> Weight;
	fn withdraw_contribution() -> Weight;
	fn claim_rewards() -> Weight;
}

/// Weights for `pallet_datanets` using the runtime's database weights.
pub struct SubstrateWeight<T>(PhantomData<T>);

macro_rules! weights {
	($db:ty) => {
		fn create_datanet() -> Weight {
			Weight::from_parts(60_000_000, 4_000)
				.saturating_add(<$db>::get().reads(3))
				.saturating_add(<$db>::get().writes(3))
		}
		fn update_metadata() -> Weight {
			Weight::from_parts(40_000_000, 4_000)
				.saturating_add(<$db>::get().reads(1))
				.saturating_add(<$db>::get().writes(1))
		}
		fn add_curator() -> Weight {
			Weight::from_parts(45_000_000, 4_000)
				.saturating_add(<$db>::get().reads(1))
				.saturating_add(<$db>::get().writes(1))
		}
		fn remove_curator() -> Weight {
			Weight::from_parts(45_000_000, 4_000)
				.saturating_add(<$db>::get().reads(1))
				.saturating_add(<$db>::get().writes(1))
		}
		fn contribute() -> Weight {
			Weight::from_parts(70_000_000, 6_000)
				.saturating_add(<$db>::get().reads(4))
				.saturating_add(<$db>::get().writes(5))
		}
		fn accept() -> Weight {
			Weight::from_parts(50_000_000, 6_000)
				.saturating_add(<$db>::get().reads(3))
				.saturating_add(<$db>::get().writes(2))
		}
		fn reject() -> Weight {
			Weight::from_parts(90_000_000, 8_000)
				.saturating_add(<$db>::get().reads(5))
				.saturating_add(<$db>::get().writes(6))
		}
		fn withdraw_contribution() -> Weight {
			Weight::from_parts(100_000_000, 8_000)
				.saturating_add(<$db>::get().reads(6))
				.saturating_add(<$db>::get().writes(7))
		}
		fn claim_rewards() -> Weight {
			Weight::from_parts(70_000_000, 6_000)
				.saturating_add(<$db>::get().reads(4))
				.saturating_add(<$db>::get().writes(3))
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
