//! # Registry pallet
//!
//! What inference is paid for. Governance registers the **base models** that workers serve and
//! retires them. Anyone registers a **LoRA adapter** over an active base model, naming the
//! DataNets it was trained on with a share of each (its training provenance), a **prompt
//! template**, or an **MCP tool** (an MCP server's endpoint, the tool's name there and the hash of
//! its definition, paid per call); each registration holds a deposit from the caller, released to that same account
//! when the entry is retired, whoever owns the entry by then. Owners set prices and transfer
//! ownership. The attribution pallet reads the registry through [`RegistryInspect`].
//!
//! Adapters, prompts and tools retire in two steps, so retiring one never voids the receipts of
//! requests served with it: the owner's first `retire_*` call marks it retiring (workers stop
//! serving it; receipts naming it still settle, paying its owner as before) for `PriceHold`, a
//! receipt's longest lifetime; the same call once that has passed removes it and releases its
//! deposit.
//!
//! A weights hash names one adapter and a template hash one prompt template, so a worker that
//! loads a file knows the one registration to pay. Registering one takes two transactions, so
//! that nobody who sees it in the transaction pool can register the hash first: the registrant
//! first commits to the registration (`commit_registration`, blake2-256 of the registration's
//! kind, the registrant, the hash and a secret salt, which tells nobody which hash it is), then,
//! at least `CommitmentDelay` blocks later and within `CommitmentLifetime`, registers it with
//! the salt. The chain cannot know who made a file: whoever registers a hash first owns it.
//! `docs/pallets/registry.md` says what that means for publishers and operators.
//!
//! [`RegistryInspect`]: openledger_primitives::traits::RegistryInspect
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

pub use pallet::*;
pub use weights::WeightInfo;

#[cfg(feature = "runtime-benchmarks")]
mod benchmarking;
pub mod migrations;
#[cfg(test)]
mod mock;
#[cfg(test)]
mod tests;
mod types;
pub mod weights;

pub use types::*;

/// What the benchmarks need from the runtime.
#[cfg(feature = "runtime-benchmarks")]
pub trait BenchmarkHelper {
	/// Makes a DataNet exist and returns its id; different `i` give different DataNets.
	fn create_datanet(i: u32) -> openledger_primitives::DataNetId;
}

#[polkadot_sdk::frame_support::pallet]
pub mod pallet {
	use super::*;
	use alloc::vec::Vec;
	use openledger_primitives::{
		traits::{AdapterView, DataNetsInspect, PromptView, RegistryInspect, ToolView},
		AdapterId, BaseModelId, ContentHash, DataNetId, PromptId, ToolId, PPM,
	};
	use polkadot_sdk::{
		frame_support::{
			pallet_prelude::*,
			traits::{
				fungible::{Mutate, MutateHold},
				tokens::Precision,
			},
		},
		frame_system::pallet_prelude::*,
		sp_core::H256,
		sp_io::hashing::blake2_256,
		sp_runtime::{
			traits::{Saturating, Zero},
			SaturatedConversion,
		},
	};

	/// Version 1 indexes adapters and prompt templates by their hash ([`migrations::v1`]).
	const STORAGE_VERSION: StorageVersion = StorageVersion::new(1);

	#[pallet::pallet]
	#[pallet::storage_version(STORAGE_VERSION)]
	pub struct Pallet<T>(_);

	/// Test defaults for [`Config`], so that the mocks of the pallets built on this one name only
	/// what their tests depend on.
	pub mod config_preludes {
		use super::*;
		use polkadot_sdk::{
			frame_support::{derive_impl, traits::ConstUint},
			frame_system,
		};

		pub struct TestDefaultConfig;

		#[derive_impl(frame_system::config_preludes::TestDefaultConfig, no_aggregated_types)]
		impl frame_system::DefaultConfig for TestDefaultConfig {}

		#[polkadot_sdk::frame_support::register_default_impl(TestDefaultConfig)]
		impl DefaultConfig for TestDefaultConfig {
			#[inject_runtime_type]
			type RuntimeHoldReason = ();
			type AdapterDeposit = ConstUint<1_000>;
			type PromptDeposit = ConstUint<1_000>;
			type ToolDeposit = ConstUint<1_000>;
			type MaxToolNameLen = ConstU32<16>;
			type MaxNameLen = ConstU32<16>;
			type MaxArchitectureLen = ConstU32<16>;
			type MaxUriLen = ConstU32<32>;
			type MaxRank = ConstU32<64>;
			type MaxProvenance = ConstU32<4>;
			type MaxCommitments = ConstU32<4>;
			type WeightInfo = ();
		}
	}

	#[pallet::config(with_default)]
	pub trait Config: polkadot_sdk::frame_system::Config<RuntimeEvent: From<Event<Self>>> {
		/// The OPEN token: deposits are held on it.
		#[pallet::no_default]
		type Currency: Mutate<Self::AccountId>
			+ MutateHold<Self::AccountId, Reason = Self::RuntimeHoldReason>;
		/// The runtime's hold reasons.
		#[pallet::no_default_bounds]
		type RuntimeHoldReason: From<HoldReason>;
		/// Registers and retires base models.
		#[pallet::no_default]
		type GovernanceOrigin: EnsureOrigin<Self::RuntimeOrigin>;
		/// Tells whether the DataNets an adapter's provenance names exist.
		#[pallet::no_default]
		type DataNets: DataNetsInspect<Self::AccountId>;
		/// Held from the caller for every adapter.
		#[pallet::constant]
		#[pallet::no_default_bounds]
		type AdapterDeposit: Get<BalanceOf<Self>>;
		/// Held from the caller for every prompt template.
		#[pallet::constant]
		#[pallet::no_default_bounds]
		type PromptDeposit: Get<BalanceOf<Self>>;
		/// Held from the caller for every MCP tool.
		#[pallet::constant]
		#[pallet::no_default_bounds]
		type ToolDeposit: Get<BalanceOf<Self>>;
		/// The longest MCP tool name.
		#[pallet::constant]
		type MaxToolNameLen: Get<u32>;
		/// The longest base model name.
		#[pallet::constant]
		type MaxNameLen: Get<u32>;
		/// The longest base model architecture.
		#[pallet::constant]
		type MaxArchitectureLen: Get<u32>;
		/// The longest adapter or prompt uri, or tool endpoint.
		#[pallet::constant]
		type MaxUriLen: Get<u32>;
		/// The highest LoRA rank an adapter may declare.
		#[pallet::constant]
		type MaxRank: Get<u32>;
		/// The most DataNets an adapter's provenance may name.
		#[pallet::constant]
		type MaxProvenance: Get<u32>;
		/// How long a price rise waits before it is charged (a fall is charged at once); at least
		/// a receipt's longest lifetime, so no receipt settles above the prices it was signed at.
		#[pallet::constant]
		#[pallet::no_default]
		type PriceHold: Get<BlockNumberFor<Self>>;
		/// How many blocks a registration waits after its commitment: at least one, so that a
		/// registration seen in the transaction pool cannot be committed to and made first.
		#[pallet::constant]
		#[pallet::no_default]
		type CommitmentDelay: Get<BlockNumberFor<Self>>;
		/// How long after it was made a commitment can be used.
		#[pallet::constant]
		#[pallet::no_default]
		type CommitmentLifetime: Get<BlockNumberFor<Self>>;
		/// The most commitments one account may have waiting.
		#[pallet::constant]
		type MaxCommitments: Get<u32>;
		type WeightInfo: WeightInfo;
		/// Creates the DataNets that benchmarks name in provenance.
		#[cfg(feature = "runtime-benchmarks")]
		#[pallet::no_default]
		type BenchmarkHelper: crate::BenchmarkHelper;
	}

	/// Why this pallet holds funds.
	#[pallet::composite_enum]
	pub enum HoldReason {
		/// The deposit of an adapter, held from whoever registered it.
		#[codec(index = 0)]
		AdapterDeposit,
		/// The deposit of a prompt template, held from whoever registered it.
		#[codec(index = 1)]
		PromptDeposit,
		/// The deposit of an MCP tool, held from whoever registered it.
		#[codec(index = 2)]
		ToolDeposit,
	}

	/// The id the next base model gets.
	#[pallet::storage]
	pub type NextBaseModelId<T> = StorageValue<_, BaseModelId, ValueQuery>;

	/// Base models; they are retired, never removed.
	#[pallet::storage]
	pub type BaseModels<T: Config> = StorageMap<_, Blake2_128Concat, BaseModelId, BaseModelOf<T>>;

	/// The id the next adapter gets.
	#[pallet::storage]
	pub type NextAdapterId<T> = StorageValue<_, AdapterId, ValueQuery>;

	#[pallet::storage]
	pub type Adapters<T: Config> = StorageMap<_, Blake2_128Concat, AdapterId, AdapterOf<T>>;

	/// The id the next prompt template gets.
	#[pallet::storage]
	pub type NextPromptId<T> = StorageValue<_, PromptId, ValueQuery>;

	#[pallet::storage]
	pub type Prompts<T: Config> = StorageMap<_, Blake2_128Concat, PromptId, PromptOf<T>>;

	/// The id the next MCP tool gets.
	#[pallet::storage]
	pub type NextToolId<T> = StorageValue<_, ToolId, ValueQuery>;

	/// Registered MCP tools.
	#[pallet::storage]
	pub type Tools<T: Config> = StorageMap<_, Blake2_128Concat, ToolId, ToolOf<T>>;

	/// Entries their owners retired, each with the block from which it can be removed: until
	/// then it still pays the receipts of requests served before its retirement, and workers no
	/// longer serve it.
	#[pallet::storage]
	pub type Retiring<T: Config> = StorageMap<_, Blake2_128Concat, Entry, BlockNumberFor<T>>;

	/// The adapter each weights hash names: one per hash.
	#[pallet::storage]
	pub type AdapterByHash<T> = StorageMap<_, Blake2_128Concat, ContentHash, AdapterId>;

	/// The prompt template each template hash names: one per hash.
	#[pallet::storage]
	pub type PromptByHash<T> = StorageMap<_, Blake2_128Concat, ContentHash, PromptId>;

	/// Each account's registration commitments not used yet, with the block each was made at.
	/// Expired ones are dropped when the account commits again.
	#[pallet::storage]
	pub type Commitments<T: Config> = StorageMap<
		_,
		Blake2_128Concat,
		T::AccountId,
		BoundedVec<(H256, BlockNumberFor<T>), T::MaxCommitments>,
	>;

	#[pallet::event]
	#[pallet::generate_deposit(pub(super) fn deposit_event)]
	pub enum Event<T: Config> {
		/// A base model was registered, active.
		BaseModelRegistered { base_model: BaseModelId, weights_hash: ContentHash },
		/// A base model was retired: it takes no new adapters.
		BaseModelRetired { base_model: BaseModelId },
		/// An adapter was registered and its deposit held from `owner`.
		AdapterRegistered {
			adapter: AdapterId,
			owner: T::AccountId,
			base_model: BaseModelId,
			weights_hash: ContentHash,
		},
		/// An adapter's price was changed.
		AdapterPriceSet { adapter: AdapterId, price_per_1k_tokens: BalanceOf<T> },
		/// An adapter changed owner; its deposit stays with its depositor.
		AdapterTransferred { adapter: AdapterId, from: T::AccountId, to: T::AccountId },
		/// An adapter's owner retired it: workers stop serving it, receipts naming it settle
		/// as before, and from block `until` the owner can remove it.
		AdapterRetiring { adapter: AdapterId, until: BlockNumberFor<T> },
		/// An adapter was removed and `deposit` released to `depositor`.
		AdapterRetired { adapter: AdapterId, depositor: T::AccountId, deposit: BalanceOf<T> },
		/// A prompt template was registered and its deposit held from `owner`.
		PromptRegistered { prompt: PromptId, owner: T::AccountId, template_hash: ContentHash },
		/// A prompt template's price was changed.
		PromptPriceSet { prompt: PromptId, price_per_call: BalanceOf<T> },
		/// A prompt template changed owner; its deposit stays with its depositor.
		PromptTransferred { prompt: PromptId, from: T::AccountId, to: T::AccountId },
		/// A prompt template's owner retired it (see `AdapterRetiring`).
		PromptRetiring { prompt: PromptId, until: BlockNumberFor<T> },
		/// A prompt template was removed and `deposit` released to `depositor`.
		PromptRetired { prompt: PromptId, depositor: T::AccountId, deposit: BalanceOf<T> },
		/// An MCP tool was registered and its deposit held from `owner`.
		ToolRegistered { tool: ToolId, owner: T::AccountId, definition_hash: ContentHash },
		/// An MCP tool's price per call was changed.
		ToolPriceSet { tool: ToolId, price_per_call: BalanceOf<T> },
		/// An MCP tool changed owner; its deposit stays with its depositor.
		ToolTransferred { tool: ToolId, from: T::AccountId, to: T::AccountId },
		/// An MCP tool's owner retired it (see `AdapterRetiring`).
		ToolRetiring { tool: ToolId, until: BlockNumberFor<T> },
		/// An MCP tool was removed and `deposit` released to `depositor`.
		ToolRetired { tool: ToolId, depositor: T::AccountId, deposit: BalanceOf<T> },
		/// `who` committed to a registration it can make from `CommitmentDelay` blocks on.
		RegistrationCommitted { who: T::AccountId, commitment: H256 },
	}

	#[pallet::error]
	pub enum Error<T> {
		/// No base model has this id.
		UnknownBaseModel,
		/// The base model is retired: it takes no new adapters and cannot be retired again.
		BaseModelRetired,
		/// No adapter has this id.
		UnknownAdapter,
		/// No prompt template has this id.
		UnknownPrompt,
		/// No MCP tool has this id.
		UnknownTool,
		/// The tool name is empty or longer than `MaxToolNameLen`.
		BadToolName,
		/// The tool endpoint is empty.
		EmptyEndpoint,
		/// Only the entry's owner may do this.
		NotOwner,
		/// The base model name is longer than `MaxNameLen`.
		NameTooLong,
		/// The base model architecture is longer than `MaxArchitectureLen`.
		ArchitectureTooLong,
		/// The uri is longer than `MaxUriLen`.
		UriTooLong,
		/// The adapter's rank is 0 or above `MaxRank`.
		RankOutOfRange,
		/// The provenance names more than `MaxProvenance` DataNets.
		TooManyProvenanceEntries,
		/// The provenance names a DataNet that does not exist or is closing.
		UnknownDataNet,
		/// The provenance names a DataNet twice.
		DuplicateProvenance,
		/// A provenance share is zero.
		ZeroShare,
		/// The provenance shares sum to more than 1 000 000 ppm (100 %).
		SharesOverHundredPercent,
		/// The account cannot pay the deposit.
		InsufficientBalance,
		/// No more ids can be issued.
		IdsExhausted,
		/// The entry is retiring: it can be removed once a receipt's lifetime has passed since
		/// its retirement, not before.
		StillRetiring,
		/// Another adapter has this weights hash, or another prompt template this template hash.
		HashTaken,
		/// The caller has no commitment to this registration (or it expired): commit first.
		NoCommitment,
		/// The commitment was made less than `CommitmentDelay` blocks ago.
		CommitmentTooRecent,
		/// The caller already has this commitment waiting.
		AlreadyCommitted,
		/// The caller has `MaxCommitments` commitments waiting.
		TooManyCommitments,
	}

	#[pallet::hooks]
	impl<T: Config> Hooks<BlockNumberFor<T>> for Pallet<T> {
		fn integrity_test() {
			assert!(T::MaxNameLen::get() > 0, "a base model must be able to have a name");
			assert!(T::MaxArchitectureLen::get() > 0, "a base model must have an architecture");
			assert!(T::MaxUriLen::get() > 0, "adapters and prompts must be able to have a uri");
			assert!(T::MaxRank::get() > 0, "some LoRA rank must be allowed");
			assert!(T::MaxProvenance::get() > 0, "an adapter must be able to name a DataNet");
			assert!(T::MaxProvenance::get() <= PPM, "every provenance share is at least 1 ppm");
			assert!(!T::AdapterDeposit::get().is_zero(), "adapters need a deposit");
			assert!(!T::PromptDeposit::get().is_zero(), "prompt templates need a deposit");
			assert!(!T::ToolDeposit::get().is_zero(), "MCP tools need a deposit");
			assert!(T::MaxToolNameLen::get() > 0, "an MCP tool must be able to have a name");
			assert!(
				!T::CommitmentDelay::get().is_zero(),
				"a registration must come at least a block after its commitment"
			);
			assert!(
				T::CommitmentLifetime::get() >= T::CommitmentDelay::get(),
				"a commitment must be usable before it expires"
			);
			assert!(T::MaxCommitments::get() > 0, "an account must be able to commit");
		}

		#[cfg(feature = "try-runtime")]
		fn try_state(
			_n: BlockNumberFor<T>,
		) -> Result<(), polkadot_sdk::sp_runtime::TryRuntimeError> {
			Self::do_try_state()
		}
	}

	#[pallet::call]
	impl<T: Config> Pallet<T> {
		/// Registers an active base model. `GovernanceOrigin` only.
		///
		/// - `name`: at most `MaxNameLen` bytes.
		/// - `architecture`: the model family, at most `MaxArchitectureLen` bytes.
		/// - `weights_hash`: blake2-256 of the weights file.
		///
		/// Emits `BaseModelRegistered`. Errors: `NameTooLong`, `ArchitectureTooLong`,
		/// `IdsExhausted`. O(1).
		#[pallet::call_index(0)]
		#[pallet::weight(T::WeightInfo::register_base_model())]
		pub fn register_base_model(
			origin: OriginFor<T>,
			name: Vec<u8>,
			architecture: Vec<u8>,
			weights_hash: ContentHash,
		) -> DispatchResult {
			T::GovernanceOrigin::ensure_origin(origin)?;
			let name: BoundedVec<u8, T::MaxNameLen> =
				name.try_into().map_err(|_| Error::<T>::NameTooLong)?;
			let architecture: BoundedVec<u8, T::MaxArchitectureLen> =
				architecture.try_into().map_err(|_| Error::<T>::ArchitectureTooLong)?;
			let id = NextBaseModelId::<T>::get();
			let next = id.checked_add(1).ok_or(Error::<T>::IdsExhausted)?;
			BaseModels::<T>::insert(
				id,
				BaseModel { name, architecture, weights_hash, active: true },
			);
			NextBaseModelId::<T>::put(next);
			Self::deposit_event(Event::BaseModelRegistered { base_model: id, weights_hash });
			Ok(())
		}

		/// Retires a base model: it takes no new adapters and receipts naming it are refused.
		/// Adapters already registered on it stay until their owners retire them.
		/// `GovernanceOrigin` only.
		///
		/// Emits `BaseModelRetired`. Errors: `UnknownBaseModel`, `BaseModelRetired`. O(1).
		#[pallet::call_index(1)]
		#[pallet::weight(T::WeightInfo::retire_base_model())]
		pub fn retire_base_model(origin: OriginFor<T>, base_model: BaseModelId) -> DispatchResult {
			T::GovernanceOrigin::ensure_origin(origin)?;
			BaseModels::<T>::try_mutate(base_model, |entry| {
				let model = entry.as_mut().ok_or(Error::<T>::UnknownBaseModel)?;
				ensure!(model.active, Error::<T>::BaseModelRetired);
				model.active = false;
				Ok::<_, DispatchError>(())
			})?;
			Self::deposit_event(Event::BaseModelRetired { base_model });
			Ok(())
		}

		/// Registers a LoRA adapter owned by the caller and holds `AdapterDeposit` from them.
		/// Any signed account.
		///
		/// - `base_model`: a registered, active base model.
		/// - `weights_hash`, `config_hash`: blake2-256 of `adapter_model.safetensors` and
		///   `adapter_config.json`.
		/// - `rank`: the LoRA rank, in `1..=MaxRank`.
		/// - `uri`: where the files can be fetched, at most `MaxUriLen` bytes.
		/// - `provenance`: (DataNet, share in ppm) for each training DataNet: at most
		///   `MaxProvenance` entries, each DataNet existing and named once, each share above zero,
		///   the shares summing to at most 1 000 000. May be empty.
		/// - `price_per_1k_tokens`: what a user pays the owner per 1000 tokens.
		/// - `salt`: the salt of the caller's commitment to this registration
		///   ([`Pallet::registration_commitment`] with `RegistrationKind::Adapter` and
		///   `weights_hash`), made with `commit_registration` at least `CommitmentDelay` blocks
		///   before; the commitment is used up.
		///
		/// Emits `AdapterRegistered`. Errors: `UriTooLong`, `RankOutOfRange`,
		/// `TooManyProvenanceEntries`, `ZeroShare`, `SharesOverHundredPercent`,
		/// `DuplicateProvenance`, `UnknownDataNet`, `UnknownBaseModel`, `BaseModelRetired`,
		/// `HashTaken`, `NoCommitment`, `CommitmentTooRecent`, `IdsExhausted`,
		/// `InsufficientBalance`. O(P log P) in the provenance length P, with P DataNet reads.
		#[pallet::call_index(2)]
		// The benchmark predates the hash index and the commitment: their reads and writes are
		// added until it is rerun.
		#[pallet::weight(T::WeightInfo::register_adapter(provenance.len().saturated_into())
			.saturating_add(T::DbWeight::get().reads_writes(2, 2)))]
		pub fn register_adapter(
			origin: OriginFor<T>,
			base_model: BaseModelId,
			weights_hash: ContentHash,
			config_hash: ContentHash,
			rank: u32,
			uri: Vec<u8>,
			provenance: Vec<(DataNetId, u32)>,
			price_per_1k_tokens: BalanceOf<T>,
			salt: [u8; 32],
		) -> DispatchResult {
			let owner = ensure_signed(origin)?;
			let uri: BoundedVec<u8, T::MaxUriLen> =
				uri.try_into().map_err(|_| Error::<T>::UriTooLong)?;
			ensure!((1..=T::MaxRank::get()).contains(&rank), Error::<T>::RankOutOfRange);
			let provenance = Self::checked_provenance(provenance)?;
			let model = BaseModels::<T>::get(base_model).ok_or(Error::<T>::UnknownBaseModel)?;
			ensure!(model.active, Error::<T>::BaseModelRetired);
			ensure!(!AdapterByHash::<T>::contains_key(weights_hash), Error::<T>::HashTaken);
			Self::use_commitment(&owner, RegistrationKind::Adapter, &weights_hash, &salt)?;
			let id = NextAdapterId::<T>::get();
			let next = id.checked_add(1).ok_or(Error::<T>::IdsExhausted)?;
			let deposit = T::AdapterDeposit::get();
			T::Currency::hold(&HoldReason::AdapterDeposit.into(), &owner, deposit)
				.map_err(|_| Error::<T>::InsufficientBalance)?;
			Adapters::<T>::insert(
				id,
				Adapter {
					owner: owner.clone(),
					depositor: owner.clone(),
					deposit,
					base_model,
					weights_hash,
					config_hash,
					rank,
					uri,
					provenance,
					price_per_1k_tokens,
					price_floor: Default::default(),
				},
			);
			AdapterByHash::<T>::insert(weights_hash, id);
			NextAdapterId::<T>::put(next);
			Self::deposit_event(Event::AdapterRegistered {
				adapter: id,
				owner,
				base_model,
				weights_hash,
			});
			Ok(())
		}

		/// Sets an adapter's price per 1000 tokens. The adapter's owner only. A fall is charged at
		/// once; a rise `PriceHold` blocks later, so receipts signed at the old price settle at it.
		///
		/// Emits `AdapterPriceSet`. Errors: `UnknownAdapter`, `NotOwner`. O(1).
		#[pallet::call_index(3)]
		#[pallet::weight(T::WeightInfo::set_adapter_price())]
		pub fn set_adapter_price(
			origin: OriginFor<T>,
			adapter: AdapterId,
			price_per_1k_tokens: BalanceOf<T>,
		) -> DispatchResult {
			let who = ensure_signed(origin)?;
			Adapters::<T>::try_mutate(adapter, |entry| {
				let a = entry.as_mut().ok_or(Error::<T>::UnknownAdapter)?;
				ensure!(a.owner == who, Error::<T>::NotOwner);
				a.price_floor.set(&mut a.price_per_1k_tokens, price_per_1k_tokens, Self::now(), T::PriceHold::get());
				Ok::<_, DispatchError>(())
			})?;
			Self::deposit_event(Event::AdapterPriceSet { adapter, price_per_1k_tokens });
			Ok(())
		}

		/// Makes `new_owner` the adapter's owner. The deposit stays held from the account that
		/// paid it. The adapter's owner only.
		///
		/// Emits `AdapterTransferred`. Errors: `UnknownAdapter`, `NotOwner`. O(1).
		#[pallet::call_index(4)]
		#[pallet::weight(T::WeightInfo::transfer_adapter())]
		pub fn transfer_adapter(
			origin: OriginFor<T>,
			adapter: AdapterId,
			new_owner: T::AccountId,
		) -> DispatchResult {
			let who = ensure_signed(origin)?;
			Adapters::<T>::try_mutate(adapter, |entry| {
				let a = entry.as_mut().ok_or(Error::<T>::UnknownAdapter)?;
				ensure!(a.owner == who, Error::<T>::NotOwner);
				a.owner = new_owner.clone();
				Ok::<_, DispatchError>(())
			})?;
			Self::deposit_event(Event::AdapterTransferred { adapter, from: who, to: new_owner });
			Ok(())
		}

		/// Retires an adapter. The adapter's owner only. The first call marks it retiring:
		/// workers stop serving it, and receipts naming it still settle, paying its owner, for
		/// `PriceHold` blocks. The same call once they have passed removes it and releases its
		/// deposit to the account that paid it.
		///
		/// Emits `AdapterRetiring`, then `AdapterRetired`. Errors: `UnknownAdapter`, `NotOwner`,
		/// `StillRetiring`. O(1).
		#[pallet::call_index(5)]
		// The benchmark predates the retirement mark: its read and write are added until it is
		// rerun.
		#[pallet::weight(T::WeightInfo::retire_adapter().saturating_add(T::DbWeight::get().reads_writes(1, 1)))]
		pub fn retire_adapter(origin: OriginFor<T>, adapter: AdapterId) -> DispatchResult {
			let who = ensure_signed(origin)?;
			let entry = Adapters::<T>::get(adapter).ok_or(Error::<T>::UnknownAdapter)?;
			ensure!(entry.owner == who, Error::<T>::NotOwner);
			match Self::retirement_step(Entry::Adapter(adapter), HoldReason::AdapterDeposit, &entry.depositor, entry.deposit)? {
				Some(until) => Self::deposit_event(Event::AdapterRetiring { adapter, until }),
				None => {
					Adapters::<T>::remove(adapter);
					// A chain older than the index may hold other adapters with this hash.
					AdapterByHash::<T>::mutate_exists(entry.weights_hash, |id| {
						if *id == Some(adapter) {
							*id = None;
						}
					});
					Self::deposit_event(Event::AdapterRetired {
						adapter,
						depositor: entry.depositor,
						deposit: entry.deposit,
					});
				},
			}
			Ok(())
		}

		/// Registers a prompt template owned by the caller and holds `PromptDeposit` from them.
		/// Any signed account.
		///
		/// - `template_hash`: blake2-256 of the template text.
		/// - `uri`: where the template can be fetched, at most `MaxUriLen` bytes.
		/// - `price_per_call`: what a user pays the owner per request that uses the template.
		/// - `salt`: the salt of the caller's commitment to this registration (as for
		///   `register_adapter`, with `RegistrationKind::Prompt` and `template_hash`).
		///
		/// Emits `PromptRegistered`. Errors: `UriTooLong`, `HashTaken`, `NoCommitment`,
		/// `CommitmentTooRecent`, `IdsExhausted`, `InsufficientBalance`. O(1).
		#[pallet::call_index(6)]
		// The benchmark predates the hash index and the commitment (see `register_adapter`).
		#[pallet::weight(T::WeightInfo::register_prompt().saturating_add(T::DbWeight::get().reads_writes(2, 2)))]
		pub fn register_prompt(
			origin: OriginFor<T>,
			template_hash: ContentHash,
			uri: Vec<u8>,
			price_per_call: BalanceOf<T>,
			salt: [u8; 32],
		) -> DispatchResult {
			let owner = ensure_signed(origin)?;
			let uri: BoundedVec<u8, T::MaxUriLen> =
				uri.try_into().map_err(|_| Error::<T>::UriTooLong)?;
			ensure!(!PromptByHash::<T>::contains_key(template_hash), Error::<T>::HashTaken);
			Self::use_commitment(&owner, RegistrationKind::Prompt, &template_hash, &salt)?;
			let id = NextPromptId::<T>::get();
			let next = id.checked_add(1).ok_or(Error::<T>::IdsExhausted)?;
			let deposit = T::PromptDeposit::get();
			T::Currency::hold(&HoldReason::PromptDeposit.into(), &owner, deposit)
				.map_err(|_| Error::<T>::InsufficientBalance)?;
			Prompts::<T>::insert(
				id,
				Prompt {
					owner: owner.clone(),
					depositor: owner.clone(),
					deposit,
					template_hash,
					uri,
					price_per_call,
					price_floor: Default::default(),
				},
			);
			PromptByHash::<T>::insert(template_hash, id);
			NextPromptId::<T>::put(next);
			Self::deposit_event(Event::PromptRegistered { prompt: id, owner, template_hash });
			Ok(())
		}

		/// Sets a prompt template's price per call. The template's owner only. A fall is charged
		/// at once; a rise `PriceHold` blocks later, so receipts signed at the old price settle at
		/// it.
		///
		/// Emits `PromptPriceSet`. Errors: `UnknownPrompt`, `NotOwner`. O(1).
		#[pallet::call_index(7)]
		#[pallet::weight(T::WeightInfo::set_prompt_price())]
		pub fn set_prompt_price(
			origin: OriginFor<T>,
			prompt: PromptId,
			price_per_call: BalanceOf<T>,
		) -> DispatchResult {
			let who = ensure_signed(origin)?;
			Prompts::<T>::try_mutate(prompt, |entry| {
				let p = entry.as_mut().ok_or(Error::<T>::UnknownPrompt)?;
				ensure!(p.owner == who, Error::<T>::NotOwner);
				p.price_floor.set(&mut p.price_per_call, price_per_call, Self::now(), T::PriceHold::get());
				Ok::<_, DispatchError>(())
			})?;
			Self::deposit_event(Event::PromptPriceSet { prompt, price_per_call });
			Ok(())
		}

		/// Makes `new_owner` the prompt template's owner. The deposit stays held from the account
		/// that paid it. The template's owner only.
		///
		/// Emits `PromptTransferred`. Errors: `UnknownPrompt`, `NotOwner`. O(1).
		#[pallet::call_index(8)]
		#[pallet::weight(T::WeightInfo::transfer_prompt())]
		pub fn transfer_prompt(
			origin: OriginFor<T>,
			prompt: PromptId,
			new_owner: T::AccountId,
		) -> DispatchResult {
			let who = ensure_signed(origin)?;
			Prompts::<T>::try_mutate(prompt, |entry| {
				let p = entry.as_mut().ok_or(Error::<T>::UnknownPrompt)?;
				ensure!(p.owner == who, Error::<T>::NotOwner);
				p.owner = new_owner.clone();
				Ok::<_, DispatchError>(())
			})?;
			Self::deposit_event(Event::PromptTransferred { prompt, from: who, to: new_owner });
			Ok(())
		}

		/// Retires a prompt template in two steps, as `retire_adapter` does an adapter. The
		/// template's owner only.
		///
		/// Emits `PromptRetiring`, then `PromptRetired`. Errors: `UnknownPrompt`, `NotOwner`,
		/// `StillRetiring`. O(1).
		#[pallet::call_index(9)]
		#[pallet::weight(T::WeightInfo::retire_prompt().saturating_add(T::DbWeight::get().reads_writes(1, 1)))]
		pub fn retire_prompt(origin: OriginFor<T>, prompt: PromptId) -> DispatchResult {
			let who = ensure_signed(origin)?;
			let entry = Prompts::<T>::get(prompt).ok_or(Error::<T>::UnknownPrompt)?;
			ensure!(entry.owner == who, Error::<T>::NotOwner);
			match Self::retirement_step(Entry::Prompt(prompt), HoldReason::PromptDeposit, &entry.depositor, entry.deposit)? {
				Some(until) => Self::deposit_event(Event::PromptRetiring { prompt, until }),
				None => {
					Prompts::<T>::remove(prompt);
					PromptByHash::<T>::mutate_exists(entry.template_hash, |id| {
						if *id == Some(prompt) {
							*id = None;
						}
					});
					Self::deposit_event(Event::PromptRetired {
						prompt,
						depositor: entry.depositor,
						deposit: entry.deposit,
					});
				},
			}
			Ok(())
		}

		/// Registers an MCP tool, owned by the caller, and holds `ToolDeposit` from them.
		///
		/// - `endpoint`: the MCP server's URL (Streamable HTTP), 1 to `MaxUriLen` bytes.
		/// - `name`: the tool's name on that server, 1 to `MaxToolNameLen` bytes.
		/// - `definition_hash`: blake2-256 of the tool's canonical JSON definition (its name,
		///   description and inputSchema): a worker refuses the tool when the server's differs.
		/// - `price_per_call`: charged in every receipt for each call made.
		///
		/// Emits `ToolRegistered`. Errors: `EmptyEndpoint`, `UriTooLong`, `BadToolName`,
		/// `IdsExhausted`, `InsufficientBalance`. O(1).
		#[pallet::call_index(10)]
		#[pallet::weight(T::WeightInfo::register_tool())]
		pub fn register_tool(
			origin: OriginFor<T>,
			endpoint: Vec<u8>,
			name: Vec<u8>,
			definition_hash: ContentHash,
			price_per_call: BalanceOf<T>,
		) -> DispatchResult {
			let owner = ensure_signed(origin)?;
			ensure!(!endpoint.is_empty(), Error::<T>::EmptyEndpoint);
			let endpoint: BoundedVec<u8, T::MaxUriLen> =
				endpoint.try_into().map_err(|_| Error::<T>::UriTooLong)?;
			ensure!(!name.is_empty(), Error::<T>::BadToolName);
			let name: BoundedVec<u8, T::MaxToolNameLen> =
				name.try_into().map_err(|_| Error::<T>::BadToolName)?;
			let id = NextToolId::<T>::get();
			let next = id.checked_add(1).ok_or(Error::<T>::IdsExhausted)?;
			let deposit = T::ToolDeposit::get();
			T::Currency::hold(&HoldReason::ToolDeposit.into(), &owner, deposit)
				.map_err(|_| Error::<T>::InsufficientBalance)?;
			Tools::<T>::insert(
				id,
				Tool {
					owner: owner.clone(),
					depositor: owner.clone(),
					deposit,
					endpoint,
					name,
					definition_hash,
					price_per_call,
					price_floor: Default::default(),
				},
			);
			NextToolId::<T>::put(next);
			Self::deposit_event(Event::ToolRegistered { tool: id, owner, definition_hash });
			Ok(())
		}

		/// Sets an MCP tool's price per call. The tool's owner only. A fall is charged at once; a
		/// rise `PriceHold` blocks later, so receipts signed at the old price settle at it.
		///
		/// Emits `ToolPriceSet`. Errors: `UnknownTool`, `NotOwner`. O(1).
		#[pallet::call_index(11)]
		#[pallet::weight(T::WeightInfo::set_tool_price())]
		pub fn set_tool_price(
			origin: OriginFor<T>,
			tool: ToolId,
			price_per_call: BalanceOf<T>,
		) -> DispatchResult {
			let who = ensure_signed(origin)?;
			Tools::<T>::try_mutate(tool, |entry| {
				let t = entry.as_mut().ok_or(Error::<T>::UnknownTool)?;
				ensure!(t.owner == who, Error::<T>::NotOwner);
				t.price_floor.set(&mut t.price_per_call, price_per_call, Self::now(), T::PriceHold::get());
				Ok::<_, DispatchError>(())
			})?;
			Self::deposit_event(Event::ToolPriceSet { tool, price_per_call });
			Ok(())
		}

		/// Makes `new_owner` the MCP tool's owner. The deposit stays held from the account that
		/// paid it. The tool's owner only.
		///
		/// Emits `ToolTransferred`. Errors: `UnknownTool`, `NotOwner`. O(1).
		#[pallet::call_index(12)]
		#[pallet::weight(T::WeightInfo::transfer_tool())]
		pub fn transfer_tool(origin: OriginFor<T>, tool: ToolId, new_owner: T::AccountId) -> DispatchResult {
			let who = ensure_signed(origin)?;
			Tools::<T>::try_mutate(tool, |entry| {
				let t = entry.as_mut().ok_or(Error::<T>::UnknownTool)?;
				ensure!(t.owner == who, Error::<T>::NotOwner);
				t.owner = new_owner.clone();
				Ok::<_, DispatchError>(())
			})?;
			Self::deposit_event(Event::ToolTransferred { tool, from: who, to: new_owner });
			Ok(())
		}

		/// Retires an MCP tool in two steps, as `retire_adapter` does an adapter. The tool's
		/// owner only.
		///
		/// Emits `ToolRetiring`, then `ToolRetired`. Errors: `UnknownTool`, `NotOwner`,
		/// `StillRetiring`. O(1).
		#[pallet::call_index(13)]
		#[pallet::weight(T::WeightInfo::retire_tool().saturating_add(T::DbWeight::get().reads_writes(1, 1)))]
		pub fn retire_tool(origin: OriginFor<T>, tool: ToolId) -> DispatchResult {
			let who = ensure_signed(origin)?;
			let entry = Tools::<T>::get(tool).ok_or(Error::<T>::UnknownTool)?;
			ensure!(entry.owner == who, Error::<T>::NotOwner);
			match Self::retirement_step(Entry::Tool(tool), HoldReason::ToolDeposit, &entry.depositor, entry.deposit)? {
				Some(until) => Self::deposit_event(Event::ToolRetiring { tool, until }),
				None => {
					Tools::<T>::remove(tool);
					Self::deposit_event(Event::ToolRetired { tool, depositor: entry.depositor, deposit: entry.deposit });
				},
			}
			Ok(())
		}

		/// Commits the caller to a registration without saying which:
		/// `commitment` is [`Pallet::registration_commitment`] of the registration's kind, the
		/// caller, the hash to register and a salt the caller keeps secret until it registers,
		/// at least `CommitmentDelay` blocks and at most `CommitmentLifetime` blocks from now.
		/// Any signed account. The caller's expired commitments are dropped first.
		///
		/// Emits `RegistrationCommitted`. Errors: `AlreadyCommitted`, `TooManyCommitments`.
		/// O(`MaxCommitments`).
		#[pallet::call_index(14)]
		#[pallet::weight(T::WeightInfo::commit_registration())]
		pub fn commit_registration(origin: OriginFor<T>, commitment: H256) -> DispatchResult {
			let who = ensure_signed(origin)?;
			let now = Self::now();
			Commitments::<T>::try_mutate(&who, |waiting| {
				let list = waiting.get_or_insert_with(Default::default);
				list.retain(|(_, made)| !Self::commitment_expired(*made, now));
				ensure!(list.iter().all(|(c, _)| *c != commitment), Error::<T>::AlreadyCommitted);
				list.try_push((commitment, now)).map_err(|_| Error::<T>::TooManyCommitments)?;
				Ok::<_, DispatchError>(())
			})?;
			Self::deposit_event(Event::RegistrationCommitted { who, commitment });
			Ok(())
		}
	}

	impl<T: Config> Pallet<T> {
		fn now() -> BlockNumberFor<T> {
			polkadot_sdk::frame_system::Pallet::<T>::block_number()
		}

		/// What `commit_registration` takes for a registration of `hash` by `who` with `salt`:
		/// blake2-256 of the SCALE encoding of `(kind, who, hash, salt)` — for an AccountId32
		/// chain, the kind's byte (0 adapter, 1 prompt template), the 32 account bytes, the 32
		/// hash bytes and the 32 salt bytes, concatenated.
		pub fn registration_commitment(
			kind: RegistrationKind,
			who: &T::AccountId,
			hash: &ContentHash,
			salt: &[u8; 32],
		) -> H256 {
			H256(blake2_256(&(kind, who, hash, salt).encode()))
		}

		fn commitment_expired(made: BlockNumberFor<T>, now: BlockNumberFor<T>) -> bool {
			now > made.saturating_add(T::CommitmentLifetime::get())
		}

		/// Uses up `who`'s commitment to registering `hash` with `salt`.
		fn use_commitment(
			who: &T::AccountId,
			kind: RegistrationKind,
			hash: &ContentHash,
			salt: &[u8; 32],
		) -> DispatchResult {
			let commitment = Self::registration_commitment(kind, who, hash, salt);
			let now = Self::now();
			Commitments::<T>::try_mutate_exists(who, |waiting| {
				let list = waiting.as_mut().ok_or(Error::<T>::NoCommitment)?;
				let at = list
					.iter()
					.position(|(c, made)| *c == commitment && !Self::commitment_expired(*made, now))
					.ok_or(Error::<T>::NoCommitment)?;
				ensure!(
					now >= list[at].1.saturating_add(T::CommitmentDelay::get()),
					Error::<T>::CommitmentTooRecent
				);
				list.remove(at);
				if list.is_empty() {
					*waiting = None;
				}
				Ok(())
			})
		}

		/// Makes `who`'s commitment to registering `hash` with `salt` usable now, as if made
		/// `CommitmentDelay` blocks ago (moving the block number up to `CommitmentDelay` if it
		/// is below): for the tests and benchmarks of the pallets that register adapters and
		/// prompts.
		#[cfg(any(feature = "std", feature = "runtime-benchmarks"))]
		pub fn commit_for_test(who: &T::AccountId, kind: RegistrationKind, hash: &ContentHash, salt: &[u8; 32]) {
			let delay = T::CommitmentDelay::get();
			if Self::now() < delay {
				polkadot_sdk::frame_system::Pallet::<T>::set_block_number(delay);
			}
			let commitment = Self::registration_commitment(kind, who, hash, salt);
			let made = Self::now().saturating_sub(delay);
			Commitments::<T>::mutate(who, |waiting| {
				let list = waiting.get_or_insert_with(Default::default);
				list.try_push((commitment, made)).expect("room for a test commitment");
			});
		}

		/// A retirement's step: the first marks `entry` retiring for `PriceHold` and gives the
		/// block it ends at; once that block is reached the next releases `deposit` to
		/// `depositor`, forgets the mark and gives `None`, for the caller to remove the entry.
		fn retirement_step(
			entry: Entry,
			reason: HoldReason,
			depositor: &T::AccountId,
			deposit: BalanceOf<T>,
		) -> Result<Option<BlockNumberFor<T>>, DispatchError> {
			match Retiring::<T>::get(entry) {
				None => {
					let until = Self::now().saturating_add(T::PriceHold::get());
					Retiring::<T>::insert(entry, until);
					Ok(Some(until))
				},
				Some(until) => {
					ensure!(Self::now() >= until, Error::<T>::StillRetiring);
					T::Currency::release(&reason.into(), depositor, deposit, Precision::Exact)?;
					Retiring::<T>::remove(entry);
					Ok(None)
				},
			}
		}

		/// Checks a provenance list, in order: its length, every share, their sum, duplicates,
		/// then that every DataNet exists (the only storage reads).
		fn checked_provenance(
			provenance: Vec<(DataNetId, u32)>,
		) -> Result<Provenance<T::MaxProvenance>, DispatchError> {
			let provenance: Provenance<T::MaxProvenance> =
				provenance.try_into().map_err(|_| Error::<T>::TooManyProvenanceEntries)?;
			let mut total: u32 = 0;
			for (_, share) in provenance.iter() {
				ensure!(*share > 0, Error::<T>::ZeroShare);
				total = total
					.checked_add(*share)
					.filter(|sum| *sum <= PPM)
					.ok_or(Error::<T>::SharesOverHundredPercent)?;
			}
			let mut ids: Vec<DataNetId> = provenance.iter().map(|(datanet, _)| *datanet).collect();
			ids.sort_unstable();
			ensure!(ids.windows(2).all(|pair| pair[0] != pair[1]), Error::<T>::DuplicateProvenance);
			ensure!(
				ids.iter().all(|datanet| T::DataNets::datanet_open(*datanet)),
				Error::<T>::UnknownDataNet
			);
			Ok(provenance)
		}

		/// Invariants: ids lie below their counters, adapters name registered base models, ranks
		/// and provenance respect their bounds, the hash indexes name entries with that hash
		/// (every entry registered since version 1 is indexed by construction; an older chain's
		/// duplicates are not, see [`migrations::v1`]), retirement marks name entries and end within
		/// `PriceHold`, and holds equal the deposits recorded.
		#[cfg(any(feature = "try-runtime", feature = "std"))]
		pub fn do_try_state() -> Result<(), polkadot_sdk::sp_runtime::TryRuntimeError> {
			use alloc::collections::btree_map::BTreeMap;
			use polkadot_sdk::frame_support::traits::fungible::InspectHold;
			for (id, _) in BaseModels::<T>::iter() {
				ensure!(id < NextBaseModelId::<T>::get(), "base model id at or above the next id");
			}
			// Per depositor: (adapter deposits, prompt deposits, tool deposits).
			let mut held: BTreeMap<T::AccountId, (BalanceOf<T>, BalanceOf<T>, BalanceOf<T>)> = BTreeMap::new();
			for (id, adapter) in Adapters::<T>::iter() {
				ensure!(id < NextAdapterId::<T>::get(), "adapter id at or above the next id");
				ensure!(
					BaseModels::<T>::contains_key(adapter.base_model),
					"adapter names an unregistered base model"
				);
				ensure!(
					(1..=T::MaxRank::get()).contains(&adapter.rank),
					"adapter rank out of range"
				);
				ensure!(
					adapter.price_floor.price <= adapter.price_per_1k_tokens &&
						adapter.price_floor.until <= Self::now().saturating_add(T::PriceHold::get()),
					"an adapter's price floor is above its price or held too long"
				);
				ensure!(
					adapter.provenance.len() as u32 <= T::MaxProvenance::get(),
					"provenance over its bound"
				);
				let mut total: u64 = 0;
				let mut ids = Vec::new();
				for (datanet, share) in adapter.provenance.iter() {
					ensure!(*share > 0, "zero provenance share");
					total += u64::from(*share);
					ids.push(*datanet);
				}
				ensure!(total <= u64::from(PPM), "provenance shares over 100 %");
				ids.sort_unstable();
				ensure!(
					ids.windows(2).all(|pair| pair[0] != pair[1]),
					"provenance names a DataNet twice"
				);
				held.entry(adapter.depositor).or_default().0 += adapter.deposit;
			}
			for (id, prompt) in Prompts::<T>::iter() {
				ensure!(id < NextPromptId::<T>::get(), "prompt id at or above the next id");
				ensure!(
					prompt.price_floor.price <= prompt.price_per_call &&
						prompt.price_floor.until <= Self::now().saturating_add(T::PriceHold::get()),
					"a prompt's price floor is above its price or held too long"
				);
				held.entry(prompt.depositor).or_default().1 += prompt.deposit;
			}
			for (id, tool) in Tools::<T>::iter() {
				ensure!(id < NextToolId::<T>::get(), "tool id at or above the next id");
				ensure!(!tool.endpoint.is_empty() && !tool.name.is_empty(), "a tool without endpoint or name");
				ensure!(
					tool.price_floor.price <= tool.price_per_call &&
						tool.price_floor.until <= Self::now().saturating_add(T::PriceHold::get()),
					"a tool's price floor is above its price or held too long"
				);
				held.entry(tool.depositor).or_default().2 += tool.deposit;
			}
			for (hash, id) in AdapterByHash::<T>::iter() {
				ensure!(
					Adapters::<T>::get(id).is_some_and(|a| a.weights_hash == hash),
					"a weights hash indexes an adapter without that hash"
				);
			}
			for (hash, id) in PromptByHash::<T>::iter() {
				ensure!(
					Prompts::<T>::get(id).is_some_and(|p| p.template_hash == hash),
					"a template hash indexes a prompt without that hash"
				);
			}
			for (_, waiting) in Commitments::<T>::iter() {
				ensure!(!waiting.is_empty(), "an empty commitment list is stored");
				ensure!(waiting.iter().all(|(_, made)| *made <= Self::now()), "a commitment made in the future");
			}
			for (entry, until) in Retiring::<T>::iter() {
				let exists = match entry {
					Entry::Adapter(id) => Adapters::<T>::contains_key(id),
					Entry::Prompt(id) => Prompts::<T>::contains_key(id),
					Entry::Tool(id) => Tools::<T>::contains_key(id),
				};
				ensure!(exists, "a retirement mark outlived its entry");
				ensure!(until <= Self::now().saturating_add(T::PriceHold::get()), "a retirement held too long");
			}
			for (who, (adapters, prompts, tools)) in held {
				ensure!(
					T::Currency::balance_on_hold(&HoldReason::AdapterDeposit.into(), &who) ==
						adapters,
					"adapter hold differs from recorded adapter deposits"
				);
				ensure!(
					T::Currency::balance_on_hold(&HoldReason::PromptDeposit.into(), &who) ==
						prompts,
					"prompt hold differs from recorded prompt deposits"
				);
				ensure!(
					T::Currency::balance_on_hold(&HoldReason::ToolDeposit.into(), &who) == tools,
					"tool hold differs from recorded tool deposits"
				);
			}
			Ok(())
		}
	}

	impl<T: Config> RegistryInspect<T::AccountId, BalanceOf<T>> for Pallet<T> {
		fn base_model_active(id: BaseModelId) -> bool {
			BaseModels::<T>::get(id).is_some_and(|model| model.active)
		}

		fn adapter(id: AdapterId) -> Option<AdapterView<T::AccountId, BalanceOf<T>>> {
			Adapters::<T>::get(id).map(|a| AdapterView {
				owner: a.owner,
				base_model: a.base_model,
				weights_hash: a.weights_hash,
				price_per_1k_tokens: a.price_floor.charged(a.price_per_1k_tokens, Self::now()),
				provenance: a.provenance.into_inner(),
			})
		}

		fn prompt(id: PromptId) -> Option<PromptView<T::AccountId, BalanceOf<T>>> {
			Prompts::<T>::get(id).map(|p| PromptView {
				owner: p.owner,
				template_hash: p.template_hash,
				price_per_call: p.price_floor.charged(p.price_per_call, Self::now()),
			})
		}

		fn tool(id: ToolId) -> Option<ToolView<T::AccountId, BalanceOf<T>>> {
			Tools::<T>::get(id).map(|t| ToolView {
				owner: t.owner,
				definition_hash: t.definition_hash,
				price_per_call: t.price_floor.charged(t.price_per_call, Self::now()),
			})
		}
	}
}
