//! Weights for `pallet_workers`.
//!
//! PROVISIONAL: the reads and writes are counted from the code, the execution times are
//! estimates. This file is to be replaced by the output of the benchmarks in `benchmarking.rs`
//! (see `docs/weights.md`); until then the estimates err high.
//!
//! `s` is the number of base models a call names: each is one read of the registry.

#![allow(unused_parens, unused_imports)]

use core::marker::PhantomData;
use polkadot_sdk::frame_support::{
	traits::Get,
	weights::{constants::RocksDbWeight, Weight},
};

/// Weight functions needed by `pallet_workers`.
pub trait WeightInfo {
	fn register(s: u32) -> Weight;
	fn update(s: u32) -> Weight;
	fn bond_extra() -> Weight;
	fn rotate_key() -> Weight;
	fn unbond() -> Weight;
	fn withdraw_unbonded() -> Weight;
	fn slash() -> Weight;
	fn report_equivocation() -> Weight;
}

/// Weights for `pallet_workers` using the runtime's database weights.
pub struct SubstrateWeight<T>(PhantomData<T>);

macro_rules! weights {
	($db:ty) => {
		// Reads: `Workers`, `SessionKeyOwner`, the account and its holds, one registry entry per
		// model. Writes: `Workers`, `SessionKeyOwner`, the account and its holds.
		fn register(s: u32) -> Weight {
			Weight::from_parts(80_000_000, 6_000)
				.saturating_add(Weight::from_parts(4_000_000, 2_600).saturating_mul(s.into()))
				.saturating_add(<$db>::get().reads(4_u64.saturating_add(s.into())))
				.saturating_add(<$db>::get().writes(4))
		}
		// Reads: `Workers`, one registry entry per model. Writes: `Workers`.
		fn update(s: u32) -> Weight {
			Weight::from_parts(45_000_000, 4_000)
				.saturating_add(Weight::from_parts(4_000_000, 2_600).saturating_mul(s.into()))
				.saturating_add(<$db>::get().reads(1_u64.saturating_add(s.into())))
				.saturating_add(<$db>::get().writes(1))
		}
		// Reads and writes: `Workers`, the account and its holds.
		fn bond_extra() -> Weight {
			Weight::from_parts(70_000_000, 6_000)
				.saturating_add(<$db>::get().reads(3))
				.saturating_add(<$db>::get().writes(3))
		}
		// Reads: `Workers`, `SessionKeyOwner` (new key). Writes: `Workers`, `SessionKeyOwner`
		// (old key removed, new key inserted).
		fn rotate_key() -> Weight {
			Weight::from_parts(50_000_000, 4_000)
				.saturating_add(<$db>::get().reads(2))
				.saturating_add(<$db>::get().writes(3))
		}
		// Reads and writes: `Workers`.
		fn unbond() -> Weight {
			Weight::from_parts(40_000_000, 4_000)
				.saturating_add(<$db>::get().reads(1))
				.saturating_add(<$db>::get().writes(1))
		}
		// Reads: `Workers`, the account and its holds. Writes: those and `SessionKeyOwner`.
		fn withdraw_unbonded() -> Weight {
			Weight::from_parts(75_000_000, 6_000)
				.saturating_add(<$db>::get().reads(3))
				.saturating_add(<$db>::get().writes(4))
		}
		// Reads and writes: `Workers`, the worker's account and holds, the treasury's account.
		fn slash() -> Weight {
			Weight::from_parts(90_000_000, 8_000)
				.saturating_add(<$db>::get().reads(4))
				.saturating_add(<$db>::get().writes(4))
		}
		// Two sr25519 verifications of receipts with the most attribution entries, two receipt
		// ids. Reads: `Workers`, `ReportedEquivocations`, the genesis `BlockHash`, the worker's
		// account and holds, the treasury's account. Writes: all but `BlockHash`.
		fn report_equivocation() -> Weight {
			Weight::from_parts(200_000_000, 10_000)
				.saturating_add(<$db>::get().reads(6))
				.saturating_add(<$db>::get().writes(5))
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
