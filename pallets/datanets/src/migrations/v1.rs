//! Version 1 keys `ContentIndex` by a hash of the content hash instead of the content hash
//! itself. A contributor chooses that hash, so under the `Identity` hasher they could choose
//! keys that share long prefixes and deepen the trie (and every proof through it) at will.

use crate::{Config, ContentIndex, Pallet};
use openledger_primitives::{ContentHash, DataNetId, ItemId};
use polkadot_sdk::frame_support::{
	migrations::VersionedMigration,
	pallet_prelude::*,
	storage_alias,
	traits::UncheckedOnRuntimeUpgrade,
};
#[cfg(feature = "try-runtime")]
use alloc::vec::Vec;

/// The index as version 0 stored it.
pub(crate) mod v0 {
	use super::*;

	#[storage_alias]
	pub type ContentIndex<T: Config> =
		StorageDoubleMap<Pallet<T>, Blake2_128Concat, DataNetId, Identity, ContentHash, ItemId>;
}

/// Rewrites every entry under the new key. Runs in one block: the index holds one entry per
/// live item, which `MaxItemsPerDataNet` bounds per DataNet.
pub struct RehashContentIndex<T>(core::marker::PhantomData<T>);

impl<T: Config> UncheckedOnRuntimeUpgrade for RehashContentIndex<T> {
	fn on_runtime_upgrade() -> Weight {
		// Drained in full before anything is written: old and new keys share one prefix, and a
		// new key read back through the old layout would decode as garbage.
		let entries: alloc::vec::Vec<_> = v0::ContentIndex::<T>::drain().collect();
		let moved = entries.len() as u64;
		for (datanet, content_hash, item) in entries {
			ContentIndex::<T>::insert(datanet, content_hash, item);
		}
		T::DbWeight::get().reads_writes(moved, moved.saturating_mul(2))
	}

	#[cfg(feature = "try-runtime")]
	fn pre_upgrade() -> Result<Vec<u8>, polkadot_sdk::sp_runtime::TryRuntimeError> {
		use codec::Encode;
		Ok((v0::ContentIndex::<T>::iter().count() as u64).encode())
	}

	#[cfg(feature = "try-runtime")]
	fn post_upgrade(state: Vec<u8>) -> Result<(), polkadot_sdk::sp_runtime::TryRuntimeError> {
		use codec::Decode;
		let before = u64::decode(&mut &state[..]).map_err(|_| "pre_upgrade state does not decode")?;
		ensure!(ContentIndex::<T>::iter().count() as u64 == before, "content index lost entries");
		Ok(())
	}
}

/// Version 0 to 1, for the runtime's migrations; a no-op on a chain already at version 1.
pub type MigrateToV1<T> =
	VersionedMigration<0, 1, RehashContentIndex<T>, Pallet<T>, <T as polkadot_sdk::frame_system::Config>::DbWeight>;
