//! # DataNets pallet
//!
//! Community datasets. An owner creates a DataNet and names curators; anyone contributes items
//! (by content hash, with a deposit held); curators accept or reject them. A rejected item forfeits
//! part of its deposit to the treasury; a pending item can be withdrawn. Accepted items earn the
//! training rewards the attribution pallet pays into the DataNet's pool, equally per item, and
//! their contributors claim them. Deposits stay held while the DataNet or item exists.
//!
//! An owner closes a DataNet in two steps when items are left: `close_datanet` stops
//! contributions and curation, then anyone reaps the items (`reap_item`: rewards paid, deposits
//! released in full), and the last item to go takes the DataNet with it and releases the owner's
//! deposit. A DataNet with no items closes at once.
//!
//! An accepted item leaves (withdrawn or reaped) in two steps too, so that its going never voids
//! the receipts of requests it served: the first call marks it leaving for `LeaveHold` blocks (a
//! receipt's longest lifetime), during which it still counts as accepted and workers stop
//! serving it; the same call once they have passed removes it. A pending item goes at once.
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

#[polkadot_sdk::frame_support::pallet]
pub mod pallet {
	use super::*;
	use openledger_primitives::{ContentHash, DataNetId, ItemId};
	use polkadot_sdk::{
		frame_support::{
			pallet_prelude::*,
			traits::{
				fungible::{Mutate, MutateHold},
				tokens::{Fortitude, Precision, Preservation, Restriction},
			},
			PalletId,
		},
		frame_system::pallet_prelude::*,
		sp_runtime::{
			traits::{AccountIdConversion, Saturating, Zero},
			Permill,
		},
	};

	/// Version 1: `ContentIndex` hashes its content-hash key ([`migrations::v1`]).
	const STORAGE_VERSION: StorageVersion = StorageVersion::new(1);

	#[pallet::pallet]
	#[pallet::storage_version(STORAGE_VERSION)]
	pub struct Pallet<T>(_);

	/// Test defaults for [`Config`], so that the mocks of the pallets built on this one name only
	/// what their tests depend on.
	pub mod config_preludes {
		use super::*;
		use polkadot_sdk::{
			frame_support::{
				derive_impl, parameter_types,
				traits::{ConstU64, ConstUint},
			},
			frame_system,
		};

		pub struct TestDefaultConfig;

		parameter_types! {
			pub const TestPalletId: PalletId = PalletId(*b"ol/dnets");
			pub const TestRejectionPenalty: Permill = Permill::from_percent(20);
		}

		#[derive_impl(frame_system::config_preludes::TestDefaultConfig, no_aggregated_types)]
		impl frame_system::DefaultConfig for TestDefaultConfig {}

		#[polkadot_sdk::frame_support::register_default_impl(TestDefaultConfig)]
		impl DefaultConfig for TestDefaultConfig {
			#[inject_runtime_type]
			type RuntimeHoldReason = ();
			type PalletId = TestPalletId;
			type DataNetDeposit = ConstUint<1_000>;
			type MinContributionDeposit = ConstUint<10>;
			type RejectionPenalty = TestRejectionPenalty;
			type MaxNameLen = ConstU32<16>;
			type MaxUriLen = ConstU32<32>;
			type MaxLicenseLen = ConstU32<8>;
			type MaxCurators = ConstU32<2>;
			type MaxItemsPerDataNet = ConstU32<64>;
			type MaxItemBytes = ConstU64<1_000>;
			type LeaveHold = ConstUint<10>;
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
		/// Receives forfeited deposits and reward remainders.
		#[pallet::no_default]
		type Treasury: Get<Self::AccountId>;
		/// Derives the account that holds unclaimed training rewards.
		#[pallet::constant]
		type PalletId: Get<PalletId>;
		/// Held from the owner for every DataNet.
		#[pallet::constant]
		#[pallet::no_default_bounds]
		type DataNetDeposit: Get<BalanceOf<Self>>;
		/// The lowest contribution deposit a DataNet may ask for.
		#[pallet::constant]
		#[pallet::no_default_bounds]
		type MinContributionDeposit: Get<BalanceOf<Self>>;
		/// The part of a rejected item's deposit that goes to the treasury.
		#[pallet::constant]
		type RejectionPenalty: Get<Permill>;
		#[pallet::constant]
		type MaxNameLen: Get<u32>;
		#[pallet::constant]
		type MaxUriLen: Get<u32>;
		#[pallet::constant]
		type MaxLicenseLen: Get<u32>;
		#[pallet::constant]
		type MaxCurators: Get<u32>;
		/// The most live items (pending or accepted) one DataNet may hold.
		#[pallet::constant]
		type MaxItemsPerDataNet: Get<u32>;
		/// The largest item, in bytes, a contribution may declare.
		#[pallet::constant]
		type MaxItemBytes: Get<u64>;
		/// How long an accepted item that is withdrawn or reaped still counts as accepted before
		/// it can be removed: at least a receipt's longest lifetime, so that every receipt of a
		/// request it served can still settle.
		#[pallet::constant]
		#[pallet::no_default_bounds]
		type LeaveHold: Get<BlockNumberFor<Self>>;
		type WeightInfo: WeightInfo;
	}

	/// Why this pallet holds funds.
	#[pallet::composite_enum]
	pub enum HoldReason {
		/// The deposit of a DataNet, held from its owner.
		#[codec(index = 0)]
		DataNetDeposit,
		/// The deposit of a contribution, held from its contributor.
		#[codec(index = 1)]
		ContributionDeposit,
	}

	/// The id the next DataNet gets.
	#[pallet::storage]
	pub type NextDataNetId<T> = StorageValue<_, DataNetId, ValueQuery>;

	#[pallet::storage]
	pub type DataNets<T: Config> = StorageMap<_, Blake2_128Concat, DataNetId, DataNetOf<T>>;

	#[pallet::storage]
	pub type Contributions<T: Config> = StorageDoubleMap<
		_,
		Blake2_128Concat,
		DataNetId,
		Twox64Concat,
		ItemId,
		ContributionOf<T>,
	>;

	/// Content hash → item, so a DataNet never holds the same content twice. Both keys are
	/// hashed: the content hash is the contributor's choice.
	#[pallet::storage]
	pub type ContentIndex<T> =
		StorageDoubleMap<_, Blake2_128Concat, DataNetId, Blake2_128Concat, ContentHash, ItemId>;

	/// Accepted items on their way out (withdrawn, or reaped from a closing DataNet), each with
	/// the block from which it can be removed. Until then it still counts as accepted.
	#[pallet::storage]
	pub type Leaving<T: Config> =
		StorageDoubleMap<_, Blake2_128Concat, DataNetId, Twox64Concat, ItemId, BlockNumberFor<T>>;

	/// Training reward paid so far to each accepted item of a DataNet (cumulative, per item).
	#[pallet::storage]
	pub type RewardPerItem<T: Config> =
		StorageMap<_, Blake2_128Concat, DataNetId, BalanceOf<T>, ValueQuery>;

	#[pallet::genesis_config]
	#[derive(polkadot_sdk::frame_support::DefaultNoBound)]
	pub struct GenesisConfig<T: Config> {
		#[serde(skip)]
		pub _config: core::marker::PhantomData<T>,
	}

	#[pallet::genesis_build]
	impl<T: Config> BuildGenesisConfig for GenesisConfig<T> {
		fn build(&self) {
			// The reward pool receives payments smaller than the existential deposit, which an
			// empty account refuses: it starts with the existential deposit, which it never pays out.
			use polkadot_sdk::frame_support::traits::fungible::Inspect;
			let pool = Pallet::<T>::reward_pool();
			if let Err(error) = T::Currency::mint_into(&pool, T::Currency::minimum_balance()) {
				panic!("cannot endow the DataNets reward pool: {error:?}");
			}
		}
	}

	#[pallet::event]
	#[pallet::generate_deposit(pub(super) fn deposit_event)]
	pub enum Event<T: Config> {
		/// A DataNet was created and its deposit held.
		DataNetCreated { datanet: DataNetId, owner: T::AccountId },
		/// A DataNet's name, metadata or license was changed.
		DataNetUpdated { datanet: DataNetId },
		CuratorAdded { datanet: DataNetId, curator: T::AccountId },
		CuratorRemoved { datanet: DataNetId, curator: T::AccountId },
		/// An item was contributed and its deposit held; it awaits curation.
		Contributed {
			datanet: DataNetId,
			item: ItemId,
			contributor: T::AccountId,
			content_hash: ContentHash,
		},
		ContributionAccepted { datanet: DataNetId, item: ItemId, curator: T::AccountId },
		/// An item was rejected and removed; `forfeited` of its deposit went to the treasury.
		ContributionRejected { datanet: DataNetId, item: ItemId, forfeited: BalanceOf<T> },
		/// An item was withdrawn by its contributor and its deposit released.
		ContributionWithdrawn { datanet: DataNetId, item: ItemId },
		/// An accepted item is leaving (withdrawn or reaped): it still counts as accepted until
		/// block `until`, from which the same call removes it.
		ContributionLeaving { datanet: DataNetId, item: ItemId, until: BlockNumberFor<T> },
		/// The owner began closing a DataNet that still holds `live_items` items.
		ClosingStarted { datanet: DataNetId, live_items: u32 },
		/// An item of a closing DataNet was removed and its deposit released in full.
		ContributionReaped { datanet: DataNetId, item: ItemId },
		/// A DataNet was removed and its deposit released to its owner.
		DataNetClosed { datanet: DataNetId, owner: T::AccountId, deposit: BalanceOf<T> },
		/// Training rewards of an accepted item were paid to its contributor.
		RewardsClaimed {
			datanet: DataNetId,
			item: ItemId,
			contributor: T::AccountId,
			amount: BalanceOf<T>,
		},
	}

	#[pallet::error]
	pub enum Error<T> {
		/// No DataNet has this id.
		UnknownDataNet,
		/// The DataNet has no item with this id.
		UnknownItem,
		/// Only the DataNet's owner may do this.
		NotOwner,
		/// Only the DataNet's owner or one of its curators may do this.
		NotCurator,
		/// Only the item's contributor may do this.
		NotContributor,
		/// The account is already a curator of the DataNet.
		AlreadyCurator,
		/// The DataNet has the most curators it may have.
		TooManyCurators,
		/// The DataNet already holds an item with this content hash.
		DuplicateContent,
		/// The DataNet holds the most items it may hold.
		TooManyItems,
		NameTooLong,
		UriTooLong,
		LicenseTooLong,
		/// An item must declare at least one byte.
		EmptyItem,
		/// The item is larger than `MaxItemBytes`.
		ItemTooLarge,
		/// The contribution deposit is below `MinContributionDeposit`.
		DepositTooLow,
		/// The item has already been curated.
		NotPending,
		/// The item has no unclaimed rewards.
		NothingToClaim,
		/// The account cannot pay the deposit.
		InsufficientBalance,
		/// No more ids can be issued.
		IdsExhausted,
		/// The DataNet is closing: it takes no contributions and curates nothing more.
		DataNetClosing,
		/// Only the items of a closing DataNet can be reaped.
		NotClosing,
		/// The accepted item is leaving: it can be removed once `LeaveHold` has passed since
		/// it was withdrawn or reaped, not before.
		StillLeaving,
	}

	#[pallet::hooks]
	impl<T: Config> Hooks<BlockNumberFor<T>> for Pallet<T> {
		fn integrity_test() {
			assert!(T::MaxCurators::get() > 0, "a DataNet must be able to have a curator");
			assert!(T::MaxItemsPerDataNet::get() > 0, "a DataNet must be able to hold items");
			assert!(!T::MinContributionDeposit::get().is_zero(), "contributions need a deposit");
		}

		#[cfg(feature = "try-runtime")]
		fn try_state(_n: BlockNumberFor<T>) -> Result<(), polkadot_sdk::sp_runtime::TryRuntimeError> {
			Self::do_try_state()
		}
	}

	#[pallet::call]
	impl<T: Config> Pallet<T> {
		/// Creates a DataNet owned by the caller and holds `DataNetDeposit` from them.
		///
		/// - `contribution_deposit`: held from every contributor, at least `MinContributionDeposit`.
		///
		/// Emits `DataNetCreated`. Errors: `NameTooLong`, `UriTooLong`, `LicenseTooLong`,
		/// `DepositTooLow`, `InsufficientBalance`, `IdsExhausted`. O(1).
		#[pallet::call_index(0)]
		#[pallet::weight(T::WeightInfo::create_datanet())]
		pub fn create_datanet(
			origin: OriginFor<T>,
			name: alloc::vec::Vec<u8>,
			metadata_hash: ContentHash,
			metadata_uri: alloc::vec::Vec<u8>,
			license: alloc::vec::Vec<u8>,
			contribution_deposit: BalanceOf<T>,
		) -> DispatchResult {
			let owner = ensure_signed(origin)?;
			let name: BoundedVec<u8, T::MaxNameLen> =
				name.try_into().map_err(|_| Error::<T>::NameTooLong)?;
			let metadata_uri: BoundedVec<u8, T::MaxUriLen> =
				metadata_uri.try_into().map_err(|_| Error::<T>::UriTooLong)?;
			let license: BoundedVec<u8, T::MaxLicenseLen> =
				license.try_into().map_err(|_| Error::<T>::LicenseTooLong)?;
			ensure!(
				contribution_deposit >= T::MinContributionDeposit::get(),
				Error::<T>::DepositTooLow
			);
			let id = NextDataNetId::<T>::get();
			let next = id.checked_add(1).ok_or(Error::<T>::IdsExhausted)?;
			let deposit = T::DataNetDeposit::get();
			T::Currency::hold(&HoldReason::DataNetDeposit.into(), &owner, deposit)
				.map_err(|_| Error::<T>::InsufficientBalance)?;
			DataNets::<T>::insert(
				id,
				DataNet {
					owner: owner.clone(),
					name,
					metadata_hash,
					metadata_uri,
					license,
					curators: BoundedVec::new(),
					contribution_deposit,
					deposit,
					next_item: 0,
					live_items: 0,
					accepted_items: 0,
					closing: false,
				},
			);
			NextDataNetId::<T>::put(next);
			Self::deposit_event(Event::DataNetCreated { datanet: id, owner });
			Ok(())
		}

		/// Replaces a DataNet's name, metadata and license. Owner only.
		///
		/// Emits `DataNetUpdated`. Errors: `UnknownDataNet`, `NotOwner`, `NameTooLong`,
		/// `UriTooLong`, `LicenseTooLong`. O(1).
		#[pallet::call_index(1)]
		#[pallet::weight(T::WeightInfo::update_metadata())]
		pub fn update_metadata(
			origin: OriginFor<T>,
			datanet: DataNetId,
			name: alloc::vec::Vec<u8>,
			metadata_hash: ContentHash,
			metadata_uri: alloc::vec::Vec<u8>,
			license: alloc::vec::Vec<u8>,
		) -> DispatchResult {
			let who = ensure_signed(origin)?;
			DataNets::<T>::try_mutate(datanet, |entry| {
				let net = entry.as_mut().ok_or(Error::<T>::UnknownDataNet)?;
				ensure!(net.owner == who, Error::<T>::NotOwner);
				net.name = name.try_into().map_err(|_| Error::<T>::NameTooLong)?;
				net.metadata_hash = metadata_hash;
				net.metadata_uri = metadata_uri.try_into().map_err(|_| Error::<T>::UriTooLong)?;
				net.license = license.try_into().map_err(|_| Error::<T>::LicenseTooLong)?;
				Ok::<_, DispatchError>(())
			})?;
			Self::deposit_event(Event::DataNetUpdated { datanet });
			Ok(())
		}

		/// Adds a curator. Owner only.
		///
		/// Emits `CuratorAdded`. Errors: `UnknownDataNet`, `NotOwner`, `AlreadyCurator`,
		/// `TooManyCurators`. O(MaxCurators).
		#[pallet::call_index(2)]
		#[pallet::weight(T::WeightInfo::add_curator())]
		pub fn add_curator(
			origin: OriginFor<T>,
			datanet: DataNetId,
			curator: T::AccountId,
		) -> DispatchResult {
			let who = ensure_signed(origin)?;
			DataNets::<T>::try_mutate(datanet, |entry| {
				let net = entry.as_mut().ok_or(Error::<T>::UnknownDataNet)?;
				ensure!(net.owner == who, Error::<T>::NotOwner);
				ensure!(!net.curators.contains(&curator), Error::<T>::AlreadyCurator);
				net.curators.try_push(curator.clone()).map_err(|_| Error::<T>::TooManyCurators)?;
				Ok::<_, DispatchError>(())
			})?;
			Self::deposit_event(Event::CuratorAdded { datanet, curator });
			Ok(())
		}

		/// Removes a curator. Owner only.
		///
		/// Emits `CuratorRemoved`. Errors: `UnknownDataNet`, `NotOwner`, `NotCurator`.
		/// O(MaxCurators).
		#[pallet::call_index(3)]
		#[pallet::weight(T::WeightInfo::remove_curator())]
		pub fn remove_curator(
			origin: OriginFor<T>,
			datanet: DataNetId,
			curator: T::AccountId,
		) -> DispatchResult {
			let who = ensure_signed(origin)?;
			DataNets::<T>::try_mutate(datanet, |entry| {
				let net = entry.as_mut().ok_or(Error::<T>::UnknownDataNet)?;
				ensure!(net.owner == who, Error::<T>::NotOwner);
				let position =
					net.curators.iter().position(|c| *c == curator).ok_or(Error::<T>::NotCurator)?;
				net.curators.remove(position);
				Ok::<_, DispatchError>(())
			})?;
			Self::deposit_event(Event::CuratorRemoved { datanet, curator });
			Ok(())
		}

		/// Contributes an item, identified by the blake2-256 of its normalised text
		/// (`openledger_primitives::item_hash`), and holds the DataNet's contribution deposit.
		///
		/// Emits `Contributed`. Errors: `UnknownDataNet`, `DataNetClosing`, `EmptyItem`,
		/// `ItemTooLarge`, `DuplicateContent`, `TooManyItems`, `InsufficientBalance`,
		/// `IdsExhausted`. O(1).
		#[pallet::call_index(4)]
		#[pallet::weight(T::WeightInfo::contribute())]
		pub fn contribute(
			origin: OriginFor<T>,
			datanet: DataNetId,
			content_hash: ContentHash,
			bytes: u64,
		) -> DispatchResult {
			let contributor = ensure_signed(origin)?;
			let mut net = DataNets::<T>::get(datanet).ok_or(Error::<T>::UnknownDataNet)?;
			ensure!(!net.closing, Error::<T>::DataNetClosing);
			ensure!(bytes > 0, Error::<T>::EmptyItem);
			ensure!(bytes <= T::MaxItemBytes::get(), Error::<T>::ItemTooLarge);
			ensure!(
				!ContentIndex::<T>::contains_key(datanet, content_hash),
				Error::<T>::DuplicateContent
			);
			ensure!(net.live_items < T::MaxItemsPerDataNet::get(), Error::<T>::TooManyItems);
			let item = net.next_item;
			net.next_item = item.checked_add(1).ok_or(Error::<T>::IdsExhausted)?;
			net.live_items += 1;
			let deposit = net.contribution_deposit;
			T::Currency::hold(&HoldReason::ContributionDeposit.into(), &contributor, deposit)
				.map_err(|_| Error::<T>::InsufficientBalance)?;
			Contributions::<T>::insert(
				datanet,
				item,
				Contribution {
					contributor: contributor.clone(),
					content_hash,
					bytes,
					status: ContributionStatus::Pending,
					deposit,
					reward_index: Zero::zero(),
				},
			);
			ContentIndex::<T>::insert(datanet, content_hash, item);
			DataNets::<T>::insert(datanet, net);
			Self::deposit_event(Event::Contributed { datanet, item, contributor, content_hash });
			Ok(())
		}

		/// Accepts a pending item. The owner or a curator only.
		///
		/// Emits `ContributionAccepted`. Errors: `UnknownDataNet`, `NotCurator`, `DataNetClosing`,
		/// `UnknownItem`, `NotPending`. O(MaxCurators).
		#[pallet::call_index(5)]
		#[pallet::weight(T::WeightInfo::accept())]
		pub fn accept(origin: OriginFor<T>, datanet: DataNetId, item: ItemId) -> DispatchResult {
			let curator = ensure_signed(origin)?;
			let mut net = Self::curated_datanet(datanet, &curator)?;
			ensure!(!net.closing, Error::<T>::DataNetClosing);
			let mut contribution = Self::pending_item(datanet, item)?;
			contribution.status = ContributionStatus::Accepted;
			// The item shares only in rewards paid from now on.
			contribution.reward_index = RewardPerItem::<T>::get(datanet);
			net.accepted_items += 1;
			Contributions::<T>::insert(datanet, item, contribution);
			DataNets::<T>::insert(datanet, net);
			Self::deposit_event(Event::ContributionAccepted { datanet, item, curator });
			Ok(())
		}

		/// Rejects a pending item and removes it: `RejectionPenalty` of its deposit goes to the
		/// treasury and the rest is released. The owner or a curator only.
		///
		/// Emits `ContributionRejected`. Errors: `UnknownDataNet`, `NotCurator`, `DataNetClosing`,
		/// `UnknownItem`, `NotPending`. O(MaxCurators).
		#[pallet::call_index(6)]
		#[pallet::weight(T::WeightInfo::reject())]
		pub fn reject(origin: OriginFor<T>, datanet: DataNetId, item: ItemId) -> DispatchResult {
			let curator = ensure_signed(origin)?;
			let mut net = Self::curated_datanet(datanet, &curator)?;
			// A closing DataNet's pending items are reaped with their whole deposit; a rejection
			// now would only take the penalty from contributors who did nothing wrong.
			ensure!(!net.closing, Error::<T>::DataNetClosing);
			let contribution = Self::pending_item(datanet, item)?;
			let forfeited = T::RejectionPenalty::get().mul_floor(contribution.deposit);
			let reason = HoldReason::ContributionDeposit.into();
			T::Currency::transfer_on_hold(
				&reason,
				&contribution.contributor,
				&T::Treasury::get(),
				forfeited,
				Precision::Exact,
				Restriction::Free,
				Fortitude::Force,
			)?;
			T::Currency::release(
				&reason,
				&contribution.contributor,
				contribution.deposit.saturating_sub(forfeited),
				Precision::Exact,
			)?;
			Self::remove_item(&mut net, datanet, item, &contribution);
			DataNets::<T>::insert(datanet, net);
			Self::deposit_event(Event::ContributionRejected { datanet, item, forfeited });
			Ok(())
		}

		/// Withdraws an item: its deposit is released and it is removed. For an accepted item the
		/// unclaimed training rewards are paid first. The contributor only. The last item of a
		/// closing DataNet takes the DataNet with it (`DataNetClosed`).
		///
		/// A pending item goes at once. An accepted item goes in two steps: the first call marks
		/// it leaving (`ContributionLeaving`) for `LeaveHold` blocks, during which it still counts
		/// as accepted, so receipts of requests it served settle and pay its contributor, and
		/// workers stop serving it; the same call once they have passed removes it.
		///
		/// Emits `ContributionLeaving`, or `ContributionWithdrawn` (and `RewardsClaimed` when
		/// rewards were paid). Errors: `UnknownDataNet`, `UnknownItem`, `NotContributor`,
		/// `StillLeaving`. O(1).
		#[pallet::call_index(7)]
		// The benchmark predates the leaving mark: its read and write are added until it is rerun.
		#[pallet::weight(T::WeightInfo::withdraw_contribution().saturating_add(T::DbWeight::get().reads_writes(1, 1)))]
		pub fn withdraw_contribution(
			origin: OriginFor<T>,
			datanet: DataNetId,
			item: ItemId,
		) -> DispatchResult {
			let who = ensure_signed(origin)?;
			let mut net = DataNets::<T>::get(datanet).ok_or(Error::<T>::UnknownDataNet)?;
			let mut contribution =
				Contributions::<T>::get(datanet, item).ok_or(Error::<T>::UnknownItem)?;
			ensure!(contribution.contributor == who, Error::<T>::NotContributor);
			if !Self::leave_step(datanet, item, &contribution)? {
				return Ok(());
			}
			Self::settle_and_remove(&mut net, datanet, item, &mut contribution)?;
			Self::deposit_event(Event::ContributionWithdrawn { datanet, item });
			Self::store_or_close(datanet, net)
		}

		/// Pays an accepted item's unclaimed training rewards to its contributor. Anyone may call
		/// it; the rewards always go to the contributor.
		///
		/// Emits `RewardsClaimed`. Errors: `UnknownItem`, `NothingToClaim` (not accepted, or no
		/// reward accrued since the last claim). O(1).
		#[pallet::call_index(8)]
		#[pallet::weight(T::WeightInfo::claim_rewards())]
		pub fn claim_rewards(origin: OriginFor<T>, datanet: DataNetId, item: ItemId) -> DispatchResult {
			ensure_signed(origin)?;
			let mut contribution =
				Contributions::<T>::get(datanet, item).ok_or(Error::<T>::UnknownItem)?;
			ensure!(
				contribution.status == ContributionStatus::Accepted,
				Error::<T>::NothingToClaim
			);
			let paid = Self::pay_rewards(datanet, item, &mut contribution)?;
			ensure!(!paid.is_zero(), Error::<T>::NothingToClaim);
			Contributions::<T>::insert(datanet, item, contribution);
			Ok(())
		}

		/// Closes a DataNet. Owner only. Without items it is removed at once and its deposit
		/// released; otherwise it stops taking contributions and accepting items, and is removed
		/// when its last item goes (reaped by anyone, or withdrawn).
		///
		/// Emits `DataNetClosed`, or `ClosingStarted`. Errors: `UnknownDataNet`, `NotOwner`,
		/// `DataNetClosing`. O(1).
		#[pallet::call_index(9)]
		#[pallet::weight(T::WeightInfo::close_datanet())]
		pub fn close_datanet(origin: OriginFor<T>, datanet: DataNetId) -> DispatchResult {
			let who = ensure_signed(origin)?;
			let mut net = DataNets::<T>::get(datanet).ok_or(Error::<T>::UnknownDataNet)?;
			ensure!(net.owner == who, Error::<T>::NotOwner);
			ensure!(!net.closing, Error::<T>::DataNetClosing);
			net.closing = true;
			if net.live_items > 0 {
				Self::deposit_event(Event::ClosingStarted { datanet, live_items: net.live_items });
			}
			Self::store_or_close(datanet, net)
		}

		/// Removes an item of a closing DataNet: its unclaimed training rewards are paid to its
		/// contributor and its deposit is released in full (the contributor did nothing wrong).
		/// Anyone may call it. The last item takes the DataNet with it (`DataNetClosed`). An
		/// accepted item goes in two steps, as in `withdraw_contribution`.
		///
		/// Emits `ContributionLeaving`, or `ContributionReaped` (and `RewardsClaimed` when
		/// rewards were paid). Errors: `UnknownDataNet`, `NotClosing`, `UnknownItem`,
		/// `StillLeaving`. O(1).
		#[pallet::call_index(10)]
		#[pallet::weight(T::WeightInfo::reap_item().saturating_add(T::DbWeight::get().reads_writes(1, 1)))]
		pub fn reap_item(origin: OriginFor<T>, datanet: DataNetId, item: ItemId) -> DispatchResult {
			ensure_signed(origin)?;
			let mut net = DataNets::<T>::get(datanet).ok_or(Error::<T>::UnknownDataNet)?;
			ensure!(net.closing, Error::<T>::NotClosing);
			let mut contribution =
				Contributions::<T>::get(datanet, item).ok_or(Error::<T>::UnknownItem)?;
			if !Self::leave_step(datanet, item, &contribution)? {
				return Ok(());
			}
			Self::settle_and_remove(&mut net, datanet, item, &mut contribution)?;
			Self::deposit_event(Event::ContributionReaped { datanet, item });
			Self::store_or_close(datanet, net)
		}
	}

	impl<T: Config> Pallet<T> {
		/// The account that holds unclaimed training rewards.
		pub fn reward_pool() -> T::AccountId {
			T::PalletId::get().into_account_truncating()
		}

		/// The unclaimed training rewards of an item.
		pub fn unclaimed_rewards(datanet: DataNetId, item: ItemId) -> BalanceOf<T> {
			match Contributions::<T>::get(datanet, item) {
				Some(c) if c.status == ContributionStatus::Accepted =>
					RewardPerItem::<T>::get(datanet).saturating_sub(c.reward_index),
				_ => Zero::zero(),
			}
		}

		fn curated_datanet(
			datanet: DataNetId,
			who: &T::AccountId,
		) -> Result<DataNetOf<T>, DispatchError> {
			let net = DataNets::<T>::get(datanet).ok_or(Error::<T>::UnknownDataNet)?;
			ensure!(net.owner == *who || net.curators.contains(who), Error::<T>::NotCurator);
			Ok(net)
		}

		fn pending_item(datanet: DataNetId, item: ItemId) -> Result<ContributionOf<T>, DispatchError> {
			let contribution =
				Contributions::<T>::get(datanet, item).ok_or(Error::<T>::UnknownItem)?;
			ensure!(contribution.status == ContributionStatus::Pending, Error::<T>::NotPending);
			Ok(contribution)
		}

		fn pay_rewards(
			datanet: DataNetId,
			item: ItemId,
			contribution: &mut ContributionOf<T>,
		) -> Result<BalanceOf<T>, DispatchError> {
			let index = RewardPerItem::<T>::get(datanet);
			let amount = index.saturating_sub(contribution.reward_index);
			if !amount.is_zero() {
				T::Currency::transfer(
					&Self::reward_pool(),
					&contribution.contributor,
					amount,
					Preservation::Preserve,
				)?;
				Self::deposit_event(Event::RewardsClaimed {
					datanet,
					item,
					contributor: contribution.contributor.clone(),
					amount,
				});
			}
			contribution.reward_index = index;
			Ok(amount)
		}

		fn remove_item(
			net: &mut DataNetOf<T>,
			datanet: DataNetId,
			item: ItemId,
			contribution: &ContributionOf<T>,
		) {
			net.live_items = net.live_items.saturating_sub(1);
			if contribution.status == ContributionStatus::Accepted {
				net.accepted_items = net.accepted_items.saturating_sub(1);
			}
			Contributions::<T>::remove(datanet, item);
			ContentIndex::<T>::remove(datanet, contribution.content_hash);
		}

		/// A leaving step for the item: whether it may be removed now. A pending item may; an
		/// accepted one is first marked leaving until `LeaveHold` from now (false), and may be
		/// removed from that block on, when the mark goes.
		fn leave_step(datanet: DataNetId, item: ItemId, contribution: &ContributionOf<T>) -> Result<bool, DispatchError> {
			if contribution.status != ContributionStatus::Accepted {
				return Ok(true);
			}
			let now = polkadot_sdk::frame_system::Pallet::<T>::block_number();
			match Leaving::<T>::get(datanet, item) {
				None => {
					let until = now.saturating_add(T::LeaveHold::get());
					Leaving::<T>::insert(datanet, item, until);
					Self::deposit_event(Event::ContributionLeaving { datanet, item, until });
					Ok(false)
				},
				Some(until) => {
					ensure!(now >= until, Error::<T>::StillLeaving);
					Leaving::<T>::remove(datanet, item);
					Ok(true)
				},
			}
		}

		/// Removes an item its contributor is owed nothing more for: an accepted item's unclaimed
		/// rewards are paid, and the whole deposit is released.
		fn settle_and_remove(
			net: &mut DataNetOf<T>,
			datanet: DataNetId,
			item: ItemId,
			contribution: &mut ContributionOf<T>,
		) -> DispatchResult {
			if contribution.status == ContributionStatus::Accepted {
				Self::pay_rewards(datanet, item, contribution)?;
			}
			T::Currency::release(
				&HoldReason::ContributionDeposit.into(),
				&contribution.contributor,
				contribution.deposit,
				Precision::Exact,
			)?;
			Self::remove_item(net, datanet, item, contribution);
			Ok(())
		}

		/// Writes `net` back, or, when it is closing and holds no item, removes it with its
		/// reward index and releases its deposit to the owner.
		fn store_or_close(datanet: DataNetId, net: DataNetOf<T>) -> DispatchResult {
			if !(net.closing && net.live_items == 0) {
				DataNets::<T>::insert(datanet, net);
				return Ok(());
			}
			T::Currency::release(
				&HoldReason::DataNetDeposit.into(),
				&net.owner,
				net.deposit,
				Precision::Exact,
			)?;
			DataNets::<T>::remove(datanet);
			RewardPerItem::<T>::remove(datanet);
			Self::deposit_event(Event::DataNetClosed { datanet, owner: net.owner, deposit: net.deposit });
			Ok(())
		}

		/// Invariants: item counters match storage, every content hash indexes its item, holds
		/// equal the deposits recorded, leaving marks name accepted items and end within
		/// `LeaveHold`, and the reward pool covers every unclaimed reward.
		#[cfg(any(feature = "try-runtime", feature = "std"))]
		pub fn do_try_state() -> Result<(), polkadot_sdk::sp_runtime::TryRuntimeError> {
			use alloc::collections::btree_map::BTreeMap;
			use polkadot_sdk::frame_support::traits::fungible::{Inspect, InspectHold};
			let mut held: BTreeMap<T::AccountId, BalanceOf<T>> = BTreeMap::new();
			let mut unclaimed: BalanceOf<T> = Zero::zero();
			for (id, net) in DataNets::<T>::iter() {
				ensure!(id < NextDataNetId::<T>::get(), "DataNet id at or above the next id");
				*held.entry(net.owner.clone()).or_default() += net.deposit;
				let (mut live, mut accepted) = (0u32, 0u32);
				for (item, c) in Contributions::<T>::iter_prefix(id) {
					live += 1;
					ensure!(item < net.next_item, "item id at or above the next id");
					ensure!(
						ContentIndex::<T>::get(id, c.content_hash) == Some(item),
						"content index does not point at its item"
					);
					if c.status == ContributionStatus::Accepted {
						accepted += 1;
						unclaimed += RewardPerItem::<T>::get(id).saturating_sub(c.reward_index);
					}
					*held.entry(c.contributor.clone()).or_default() += c.deposit;
				}
				ensure!(live == net.live_items, "live item count differs from storage");
				ensure!(!net.closing || live > 0, "a closing DataNet with no items was not removed");
				ensure!(accepted == net.accepted_items, "accepted item count differs from storage");
				ensure!(live <= T::MaxItemsPerDataNet::get(), "DataNet over its item bound");
				ensure!(
					ContentIndex::<T>::iter_prefix(id).count() as u32 == live,
					"content index has stale entries"
				);
			}
			ensure!(
				RewardPerItem::<T>::iter_keys().all(DataNets::<T>::contains_key),
				"a reward index outlived its DataNet"
			);
			let hold_ends = polkadot_sdk::frame_system::Pallet::<T>::block_number().saturating_add(T::LeaveHold::get());
			for (id, item, until) in Leaving::<T>::iter() {
				ensure!(
					Contributions::<T>::get(id, item).is_some_and(|c| c.status == ContributionStatus::Accepted),
					"a leaving mark names no accepted item"
				);
				ensure!(until <= hold_ends, "an item leaving for longer than LeaveHold");
			}
			for (who, deposits) in held {
				let on_hold = T::Currency::balance_on_hold(&HoldReason::DataNetDeposit.into(), &who) +
					T::Currency::balance_on_hold(&HoldReason::ContributionDeposit.into(), &who);
				ensure!(on_hold == deposits, "held balance differs from recorded deposits");
			}
			// The pool keeps the existential deposit it was endowed with, which it never pays out.
			ensure!(
				T::Currency::balance(&Self::reward_pool()) >= unclaimed.saturating_add(T::Currency::minimum_balance()),
				"reward pool does not cover unclaimed rewards and its existential deposit"
			);
			Ok(())
		}
	}

	impl<T: Config> openledger_primitives::traits::DataNetsInspect<T::AccountId> for Pallet<T> {
		fn datanet_open(datanet: DataNetId) -> bool {
			DataNets::<T>::get(datanet).is_some_and(|net| !net.closing)
		}

		fn accepted_item(datanet: DataNetId, item: ItemId) -> Option<(T::AccountId, ContentHash)> {
			Contributions::<T>::get(datanet, item)
				.filter(|c| c.status == ContributionStatus::Accepted)
				.map(|c| (c.contributor, c.content_hash))
		}

		fn accepted_count(datanet: DataNetId) -> u32 {
			DataNets::<T>::get(datanet).map_or(0, |net| net.accepted_items)
		}
	}

	impl<T: Config> openledger_primitives::traits::TrainingRewards<T::AccountId, BalanceOf<T>>
		for Pallet<T>
	{
		fn reward_pool_account() -> T::AccountId {
			Self::reward_pool()
		}

		fn note_training_reward(datanet: DataNetId, amount: BalanceOf<T>) {
			let accepted = DataNets::<T>::get(datanet).map_or(0, |net| net.accepted_items);
			if accepted == 0 {
				return;
			}
			let per_item = amount / BalanceOf::<T>::from(accepted);
			RewardPerItem::<T>::mutate(datanet, |index| *index = index.saturating_add(per_item));
		}
	}

}
