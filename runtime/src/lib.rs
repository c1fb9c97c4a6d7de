//! The OpenLedger runtime: OPEN balances, Aura + GRANDPA consensus, sudo as governance for now,
//! and the four OpenLedger pallets (DataNets, registry, workers, attribution). Its wasm blob, which
//! the node embeds, is built by `runtime/wasm` (`openledger-runtime-wasm`).
#![cfg_attr(not(feature = "std"), no_std)]
// `construct_runtime` needs a higher recursion limit.
#![recursion_limit = "256"]

extern crate alloc;

pub mod apis;
#[cfg(feature = "runtime-benchmarks")]
mod benchmarks;
pub mod configs;
pub mod genesis_config_presets;
#[cfg(test)]
mod tests;

use polkadot_sdk::{
	frame_executive, frame_support, frame_system, pallet_aura, pallet_balances, pallet_grandpa,
	pallet_sudo, pallet_timestamp, pallet_transaction_payment,
	sp_runtime::{
		generic, impl_opaque_keys,
		traits::{BlakeTwo256, IdentifyAccount, Verify},
		MultiAddress, MultiSignature,
	},
	sp_version::RuntimeVersion,
};

use alloc::vec::Vec;
pub use openledger_primitives as primitives;
#[cfg(feature = "std")]
pub use polkadot_sdk::sp_runtime::BuildStorage;

/// Opaque types for the node, which need not know the extrinsic format.
pub mod opaque {
	use super::*;
	pub use polkadot_sdk::sp_runtime::OpaqueExtrinsic as UncheckedExtrinsic;
	pub type Header = generic::Header<BlockNumber, BlakeTwo256>;
	pub type Block = generic::Block<Header, UncheckedExtrinsic>;
	pub type Hash = polkadot_sdk::sp_core::H256;
}

impl_opaque_keys! {
	pub struct SessionKeys {
		pub aura: Aura,
		pub grandpa: Grandpa,
	}
}

/// Declares `VERSION` with the given spec version (a literal, as `runtime_version` requires).
macro_rules! runtime_version {
	($spec_version:tt) => {
		#[polkadot_sdk::sp_version::runtime_version]
		pub const VERSION: RuntimeVersion = RuntimeVersion {
			spec_name: alloc::borrow::Cow::Borrowed("openledger"),
			impl_name: alloc::borrow::Cow::Borrowed("openledger"),
			authoring_version: 1,
			// Bump on every change of runtime logic; nodes and clients use it to pick the runtime.
			spec_version: $spec_version,
			impl_version: 1,
			apis: apis::RUNTIME_API_VERSIONS,
			// Bump when the transaction format or call indices change.
			transaction_version: 1,
			system_version: 1,
		};
	};
}

#[cfg(not(feature = "upgrade-test"))]
runtime_version!(100);
// The same runtime one spec version higher: the end-to-end test upgrades a chain to it.
#[cfg(feature = "upgrade-test")]
runtime_version!(101);

/// Target block time of a real network. `--dev` seals blocks on demand instead.
pub const MILLI_SECS_PER_BLOCK: u64 = 6000;
/// Aura slot length; it cannot change once a chain has started.
pub const SLOT_DURATION: u64 = MILLI_SECS_PER_BLOCK;
pub const MINUTES: BlockNumber = 60_000 / (MILLI_SECS_PER_BLOCK as BlockNumber);
pub const HOURS: BlockNumber = MINUTES * 60;
pub const DAYS: BlockNumber = HOURS * 24;

/// One OPEN: 18 decimals.
pub const UNIT: Balance = 1_000_000_000_000_000_000;
pub const MILLI_UNIT: Balance = UNIT / 1_000;
pub const MICRO_UNIT: Balance = UNIT / 1_000_000;
pub const EXISTENTIAL_DEPOSIT: Balance = MILLI_UNIT;

pub type Signature = MultiSignature;
pub type AccountId = <<Signature as Verify>::Signer as IdentifyAccount>::AccountId;
pub use openledger_primitives::Balance;
pub type Nonce = u32;
pub type Hash = polkadot_sdk::sp_core::H256;
pub type BlockNumber = u32;
pub type Address = MultiAddress<AccountId, ()>;
pub type Header = generic::Header<BlockNumber, BlakeTwo256>;
pub type Block = generic::Block<Header, UncheckedExtrinsic>;

/// The transaction extensions, checked in order for every signed transaction.
pub type TxExtension = (
	frame_system::CheckNonZeroSender<Runtime>,
	frame_system::CheckSpecVersion<Runtime>,
	frame_system::CheckTxVersion<Runtime>,
	frame_system::CheckGenesis<Runtime>,
	frame_system::CheckEra<Runtime>,
	frame_system::CheckNonce<Runtime>,
	frame_system::CheckWeight<Runtime>,
	pallet_transaction_payment::ChargeTransactionPayment<Runtime>,
);

pub type UncheckedExtrinsic =
	generic::UncheckedExtrinsic<Address, RuntimeCall, Signature, TxExtension>;
pub type SignedPayload = generic::SignedPayload<RuntimeCall, TxExtension>;

/// Storage migrations, each a no-op on a chain whose pallet is already at its version.
type Migrations = (
	pallet_datanets::migrations::v1::MigrateToV1<Runtime>,
	pallet_registry::migrations::v1::MigrateToV1<Runtime>,
);

pub type Executive = frame_executive::Executive<
	Runtime,
	Block,
	frame_system::ChainContext<Runtime>,
	Runtime,
	AllPalletsWithSystem,
	Migrations,
>;

#[frame_support::runtime]
mod runtime {
	#[runtime::runtime]
	#[runtime::derive(
		RuntimeCall,
		RuntimeEvent,
		RuntimeError,
		RuntimeOrigin,
		RuntimeFreezeReason,
		RuntimeHoldReason,
		RuntimeSlashReason,
		RuntimeLockId,
		RuntimeTask,
		RuntimeViewFunction
	)]
	pub struct Runtime;

	#[runtime::pallet_index(0)]
	pub type System = frame_system;
	#[runtime::pallet_index(1)]
	pub type Timestamp = pallet_timestamp;
	#[runtime::pallet_index(2)]
	pub type Aura = pallet_aura;
	#[runtime::pallet_index(3)]
	pub type Grandpa = pallet_grandpa;
	#[runtime::pallet_index(4)]
	pub type Balances = pallet_balances;
	#[runtime::pallet_index(5)]
	pub type TransactionPayment = pallet_transaction_payment;
	#[runtime::pallet_index(6)]
	pub type Sudo = pallet_sudo;

	#[runtime::pallet_index(10)]
	pub type DataNets = pallet_datanets;
	#[runtime::pallet_index(11)]
	pub type Registry = pallet_registry;
	#[runtime::pallet_index(12)]
	pub type Workers = pallet_workers;
	#[runtime::pallet_index(13)]
	pub type Attribution = pallet_attribution;
}
