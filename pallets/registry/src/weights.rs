//! Weights for `pallet_registry`.
//!
//! PROVISIONAL: the reads and writes are counted from the code, the execution times are
//! estimates. This file is to be replaced by the output of the benchmarks in `benchmarking.rs`
//! (see `docs/weights.md`); until then the estimates err high.
//!
//! Holding or releasing a deposit reads and writes the account's `Holds` and `System::Account`.

#![allow(unused_parens, unused_imports)]

use core::marker::PhantomData;
use polkadot_sdk::frame_support::{
	traits::Get,
	weights::{constants::RocksDbWeight, Weight},
};

/// Weight functions needed by `pallet_registry`.
pub trait WeightInfo {
	fn register_base_model() -> Weight;
	fn retire_base_model() -> Weight;
	/// `p`: the number of provenance entries.
	fn register_adapter(p: u32) -> Weight;
	fn set_adapter_price() -> Weight;
	fn transfer_adapter() -> Weight;
	fn retire_adapter() -> Weight;
	fn register_prompt() -> Weight;
	fn set_prompt_price() -> Weight;
	fn transfer_prompt() -> Weight;
	fn retire_prompt() -> Weight;
}

/// Weights for `pallet_registry` using the runtime's database weights.
pub struct SubstrateWeight<T>(PhantomData<T>);

macro_rules! weights {
	($db:ty) => {
		// Reads `NextBaseModelId`; writes `BaseModels`, `NextBaseModelId`.
		fn register_base_model() -> Weight {
			Weight::from_parts(40_000_000, 2_000)
				.saturating_add(<$db>::get().reads(1))
				.saturating_add(<$db>::get().writes(2))
		}
		// Reads and writes `BaseModels`.
		fn retire_base_model() -> Weight {
			Weight::from_parts(35_000_000, 3_000)
				.saturating_add(<$db>::get().reads(1))
				.saturating_add(<$db>::get().writes(1))
		}
		// Reads `BaseModels`, `NextAdapterId`, `Holds`, `Account` and one `DataNets` entry per
		// provenance entry; writes `Adapters`, `NextAdapterId`, `Holds`, `Account`.
		fn register_adapter(p: u32) -> Weight {
			Weight::from_parts(80_000_000, 8_000)
				.saturating_add(Weight::from_parts(8_000_000, 3_000).saturating_mul(p.into()))
				.saturating_add(<$db>::get().reads(4))
				.saturating_add(<$db>::get().reads(p.into()))
				.saturating_add(<$db>::get().writes(4))
		}
		// Reads and writes `Adapters`.
		fn set_adapter_price() -> Weight {
			Weight::from_parts(40_000_000, 4_000)
				.saturating_add(<$db>::get().reads(1))
				.saturating_add(<$db>::get().writes(1))
		}
		// Reads and writes `Adapters`.
		fn transfer_adapter() -> Weight {
			Weight::from_parts(40_000_000, 4_000)
				.saturating_add(<$db>::get().reads(1))
				.saturating_add(<$db>::get().writes(1))
		}
		// Reads `Adapters`, `Holds`, `Account`; removes `Adapters`, writes `Holds`, `Account`.
		fn retire_adapter() -> Weight {
			Weight::from_parts(70_000_000, 8_000)
				.saturating_add(<$db>::get().reads(3))
				.saturating_add(<$db>::get().writes(3))
		}
		// Reads `NextPromptId`, `Holds`, `Account`; writes `Prompts`, `NextPromptId`, `Holds`,
		// `Account`.
		fn register_prompt() -> Weight {
			Weight::from_parts(65_000_000, 6_000)
				.saturating_add(<$db>::get().reads(3))
				.saturating_add(<$db>::get().writes(4))
		}
		// Reads and writes `Prompts`.
		fn set_prompt_price() -> Weight {
			Weight::from_parts(40_000_000, 4_000)
				.saturating_add(<$db>::get().reads(1))
				.saturating_add(<$db>::get().writes(1))
		}
		// Reads and writes `Prompts`.
		fn transfer_prompt() -> Weight {
			Weight::from_parts(40_000_000, 4_000)
				.saturating_add(<$db>::get().reads(1))
				.saturating_add(<$db>::get().writes(1))
		}
		// Reads `Prompts`, `Holds`, `Account`; removes `Prompts`, writes `Holds`, `Account`.
		fn retire_prompt() -> Weight {
			Weight::from_parts(70_000_000, 8_000)
				.saturating_add(<$db>::get().reads(3))
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
