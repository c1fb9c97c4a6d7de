//! Version 1 indexes adapters by weights hash and prompt templates by template hash
//! (`AdapterByHash`, `PromptByHash`), so that a hash names one registration. A chain at version 0
//! may hold several entries with one hash; workers billed the lowest id among them, so the index
//! names that one. The others are not indexed, so workers (which bill what the index names) no
//! longer serve them; they stay, paying the receipts already signed, until their owners retire
//! them.

use crate::{AdapterByHash, Adapters, Config, Pallet, PromptByHash, Prompts};
use polkadot_sdk::frame_support::{
	migrations::VersionedMigration, pallet_prelude::*, traits::UncheckedOnRuntimeUpgrade,
};
#[cfg(feature = "try-runtime")]
use alloc::vec::Vec;

/// Fills both indexes. Runs in one block: one read per adapter and prompt template, each bounded
/// in number by the deposit it holds.
pub struct IndexHashes<T>(core::marker::PhantomData<T>);

impl<T: Config> UncheckedOnRuntimeUpgrade for IndexHashes<T> {
	fn on_runtime_upgrade() -> Weight {
		let (mut reads, mut writes) = (0u64, 0u64);
		for (id, adapter) in Adapters::<T>::iter() {
			reads += 2;
			if AdapterByHash::<T>::get(adapter.weights_hash).is_none_or(|indexed| id < indexed) {
				AdapterByHash::<T>::insert(adapter.weights_hash, id);
				writes += 1;
			}
		}
		for (id, prompt) in Prompts::<T>::iter() {
			reads += 2;
			if PromptByHash::<T>::get(prompt.template_hash).is_none_or(|indexed| id < indexed) {
				PromptByHash::<T>::insert(prompt.template_hash, id);
				writes += 1;
			}
		}
		T::DbWeight::get().reads_writes(reads, writes)
	}

	#[cfg(feature = "try-runtime")]
	fn pre_upgrade() -> Result<Vec<u8>, polkadot_sdk::sp_runtime::TryRuntimeError> {
		Ok(Vec::new())
	}

	#[cfg(feature = "try-runtime")]
	fn post_upgrade(_: Vec<u8>) -> Result<(), polkadot_sdk::sp_runtime::TryRuntimeError> {
		// Every entry's hash is indexed (`do_try_state` checks that each index entry names an
		// entry with its hash).
		for (_, adapter) in Adapters::<T>::iter() {
			ensure!(AdapterByHash::<T>::contains_key(adapter.weights_hash), "an adapter's hash is not indexed");
		}
		for (_, prompt) in Prompts::<T>::iter() {
			ensure!(PromptByHash::<T>::contains_key(prompt.template_hash), "a template's hash is not indexed");
		}
		Pallet::<T>::do_try_state()
	}
}

/// Version 0 to 1, for the runtime's migrations; a no-op on a chain already at version 1.
pub type MigrateToV1<T> =
	VersionedMigration<0, 1, IndexHashes<T>, Pallet<T>, <T as polkadot_sdk::frame_system::Config>::DbWeight>;
