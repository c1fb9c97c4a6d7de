//! # Workers pallet
//!
//! Off-chain inference workers. A worker registers an sr25519 session key (its receipts' signing
//! key, owned by it alone), an endpoint, the base models it serves and its compute price, and
//! stakes at least `MinStake` OPEN, held from its account. Only an active worker with enough stake
//! may sign receipts (`WorkersInspect::active_worker`). A worker leaves by unbonding: it stops
//! signing at once and its stake stays held, and slashable, for `UnbondingDelay` blocks before it
//! can be withdrawn.
//!
//! Two different receipts signed by a worker's session key for the same request are equivocation:
//! anyone may submit them, and `EquivocationSlash` of the stake goes to the treasury and the worker
//! is marked slashed (it may sign nothing more and can only unbond). Each (worker, request) can be
//! reported once. A key the worker rotated away from stays evidence for `UnbondingDelay`, so a
//! worker cannot settle a receipt, rotate, and settle another for the same request unpunished.
//! Evidence has an age limit too: `UnbondingDelay` after the later of its receipts expired, when
//! neither can settle any more, it proves nothing that could still cost a payer. A worker that
//! lost its records of what it signed is exposed for that long, and no longer.
//! Governance may also slash any amount of a stake.
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

pub use pallet::*;
pub use weights::WeightInfo;

#[cfg(feature = "runtime-benchmarks")]
mod benchmarking;
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
	use alloc::{boxed::Box, vec::Vec};
	use openledger_primitives::{
		traits::{RegistryInspect, WorkerView, WorkersInspect},
		BaseModelId,
	};
	use polkadot_sdk::{
		frame_support::{
			pallet_prelude::*,
			traits::{
				fungible::{Mutate, MutateHold},
				tokens::{Fortitude, Precision, Restriction},
			},
		},
		frame_system::{self, pallet_prelude::*},
		sp_core::{sr25519, H256},
		sp_runtime::{
			traits::{CheckedAdd, CheckedSub, SaturatedConversion, Saturating, Verify, Zero},
			ArithmeticError,
			Perbill,
		},
	};

	#[pallet::pallet]
	pub struct Pallet<T>(_);

	/// Test defaults for [`Config`], so that the mocks of the pallets built on this one name only
	/// what their tests depend on.
	pub mod config_preludes {
		use super::*;
		use polkadot_sdk::{
			frame_support::{derive_impl, parameter_types, traits::ConstUint},
			frame_system,
		};

		pub struct TestDefaultConfig;

		parameter_types! {
			pub const TestEquivocationSlash: Perbill = Perbill::from_percent(50);
		}

		#[derive_impl(frame_system::config_preludes::TestDefaultConfig, no_aggregated_types)]
		impl frame_system::DefaultConfig for TestDefaultConfig {}

		#[polkadot_sdk::frame_support::register_default_impl(TestDefaultConfig)]
		impl DefaultConfig for TestDefaultConfig {
			#[inject_runtime_type]
			type RuntimeHoldReason = ();
			type MinStake = ConstUint<10_000>;
			type UnbondingDelay = ConstUint<10>;
			type EquivocationSlash = TestEquivocationSlash;
			type MaxEndpointLen = ConstU32<64>;
			type MaxServedModels = ConstU32<4>;
			type MaxRetiredKeys = ConstU32<2>;
			type WeightInfo = ();
		}
	}

	#[pallet::config(with_default)]
	pub trait Config:
		polkadot_sdk::frame_system::Config<RuntimeEvent: From<Event<Self>>, Hash: Into<H256>>
	{
		/// The OPEN token: stakes are held on it.
		#[pallet::no_default]
		type Currency: Mutate<Self::AccountId>
			+ MutateHold<Self::AccountId, Reason = Self::RuntimeHoldReason>;
		/// The runtime's hold reasons.
		#[pallet::no_default_bounds]
		type RuntimeHoldReason: From<HoldReason>;
		/// Receives every slashed stake.
		#[pallet::no_default]
		type Treasury: Get<Self::AccountId>;
		/// Says which base models are registered and active.
		#[pallet::no_default]
		type Registry: RegistryInspect<Self::AccountId, BalanceOf<Self>>;
		/// May slash a worker's stake by any amount.
		#[pallet::no_default]
		type GovernanceOrigin: EnsureOrigin<Self::RuntimeOrigin>;
		/// The least stake a worker registers with, and needs to sign receipts.
		#[pallet::constant]
		#[pallet::no_default_bounds]
		type MinStake: Get<BalanceOf<Self>>;
		/// How long an unbonding worker's stake stays held (and slashable) before it can be
		/// withdrawn. Should be at least the longest a receipt may wait to be settled, so that
		/// equivocation can still be punished.
		#[pallet::constant]
		#[pallet::no_default_bounds]
		type UnbondingDelay: Get<BlockNumberFor<Self>>;
		/// How long a compute price rise waits before it is charged (a fall is charged at once);
		/// at least a receipt's longest lifetime, so no receipt settles above the prices it was
		/// signed at.
		#[pallet::constant]
		#[pallet::no_default]
		type PriceHold: Get<BlockNumberFor<Self>>;
		/// The part of its stake a worker loses for equivocating.
		#[pallet::constant]
		type EquivocationSlash: Get<Perbill>;
		/// The longest endpoint, in bytes.
		#[pallet::constant]
		type MaxEndpointLen: Get<u32>;
		/// The most base models one worker may serve.
		#[pallet::constant]
		type MaxServedModels: Get<u32>;
		/// The most retired session keys a worker may have that are still evidence of
		/// equivocation: it cannot rotate again until the oldest one's window has passed.
		#[pallet::constant]
		type MaxRetiredKeys: Get<u32>;
		type WeightInfo: WeightInfo;
		/// Makes base models active for the benchmarks.
		#[cfg(feature = "runtime-benchmarks")]
		#[pallet::no_default]
		type BenchmarkHelper: BenchmarkHelper;
	}

	/// Why this pallet holds funds.
	#[pallet::composite_enum]
	pub enum HoldReason {
		/// A worker's stake, held from its account.
		#[codec(index = 0)]
		Stake,
	}

	/// Registered workers, by account.
	#[pallet::storage]
	pub type Workers<T: Config> = StorageMap<_, Blake2_128Concat, T::AccountId, WorkerOf<T>>;

	/// Session key → the worker that owns it. A key belongs to one worker at most.
	#[pallet::storage]
	pub type SessionKeyOwner<T: Config> =
		StorageMap<_, Blake2_128Concat, sr25519::Public, T::AccountId>;

	/// Session keys each worker rotated away from, oldest first, each with the block from which
	/// receipts it signed no longer prove equivocation (`UnbondingDelay` after the rotation).
	///
	/// Stakes stay slashable that long after a worker stops signing, and so do old keys; without
	/// this a worker could sign one receipt, rotate its key and sign another for the same request
	/// with neither key proving anything. Removed with the worker.
	#[pallet::storage]
	pub type RetiredKeys<T: Config> = StorageMap<
		_,
		Blake2_128Concat,
		T::AccountId,
		BoundedVec<(sr25519::Public, BlockNumberFor<T>), T::MaxRetiredKeys>,
		ValueQuery,
	>;

	/// Equivocations already punished: (worker, request hash) → the block it was reported in.
	///
	/// Kept after the worker leaves, so one proof never slashes twice, not even a later
	/// registration of the same account and key. Every entry cost its worker a non-zero slash,
	/// which bounds how many there can be.
	#[pallet::storage]
	pub type ReportedEquivocations<T: Config> = StorageDoubleMap<
		_,
		Blake2_128Concat,
		T::AccountId,
		Blake2_128Concat,
		H256,
		BlockNumberFor<T>,
	>;

	#[pallet::event]
	#[pallet::generate_deposit(pub(super) fn deposit_event)]
	pub enum Event<T: Config> {
		/// A worker registered and its stake was held.
		WorkerRegistered { worker: T::AccountId, session_key: sr25519::Public, stake: BalanceOf<T> },
		/// A worker changed its endpoint, served base models or compute price.
		WorkerUpdated { worker: T::AccountId },
		/// A worker added `amount` to its stake, which is now `stake`.
		StakeBonded { worker: T::AccountId, amount: BalanceOf<T>, stake: BalanceOf<T> },
		/// A worker replaced its session key; the old key is free again.
		SessionKeyRotated { worker: T::AccountId, old_key: sr25519::Public, new_key: sr25519::Public },
		/// A worker stopped serving; its stake can be withdrawn from block `until`.
		Unbonded { worker: T::AccountId, until: BlockNumberFor<T> },
		/// An unbonded worker was removed and its stake `released`.
		WorkerRemoved { worker: T::AccountId, released: BalanceOf<T> },
		/// Governance moved `amount` of a worker's stake to the treasury.
		WorkerSlashed { worker: T::AccountId, amount: BalanceOf<T> },
		/// A worker signed two different receipts for one request; `slashed` of its stake went to
		/// the treasury and it may sign no more.
		WorkerEquivocated {
			worker: T::AccountId,
			request_hash: H256,
			slashed: BalanceOf<T>,
			reporter: T::AccountId,
		},
	}

	#[pallet::error]
	pub enum Error<T> {
		/// The account already has a registered worker.
		AlreadyRegistered,
		/// The account has no registered worker.
		UnknownWorker,
		/// The session key belongs to a worker already.
		SessionKeyInUse,
		/// The stake is below `MinStake`.
		StakeTooLow,
		/// The account cannot hold this much.
		InsufficientBalance,
		/// The endpoint is longer than `MaxEndpointLen`.
		EndpointTooLong,
		/// A worker must serve at least one base model.
		NoModelsServed,
		/// More base models than `MaxServedModels`.
		TooManyModels,
		/// A base model is named twice.
		DuplicateModel,
		/// A base model is not registered or not active.
		InactiveBaseModel,
		/// Only an active worker may do this.
		NotActive,
		/// The worker is unbonding already.
		AlreadyUnbonding,
		/// The worker is not unbonding.
		NotUnbonding,
		/// The unbonding delay has not passed yet.
		UnbondingNotOver,
		/// The amount must be above zero.
		ZeroAmount,
		/// The stake would overflow, or the unbonding block would.
		Overflow,
		/// The worker has no stake left to slash, or the slash rounds to zero.
		NothingToSlash,
		/// The receipts are the same, or name different workers or different requests.
		NotEquivocation,
		/// A receipt was not signed by the worker's session key for this chain.
		BadSignature,
		/// This worker's equivocation on this request was punished already.
		AlreadyReported,
		/// The worker has `MaxRetiredKeys` old session keys that are still evidence; it can
		/// rotate again once the oldest one's `UnbondingDelay` has passed.
		TooManyRetiredKeys,
		/// Both receipts expired more than `UnbondingDelay` ago: too old to prove anything.
		EvidenceExpired,
	}

	#[pallet::hooks]
	impl<T: Config> Hooks<BlockNumberFor<T>> for Pallet<T> {
		fn integrity_test() {
			assert!(!T::MinStake::get().is_zero(), "workers must stake something");
			assert!(T::MaxServedModels::get() > 0, "a worker must be able to serve a model");
			assert!(T::MaxEndpointLen::get() > 0, "a worker must be able to name an endpoint");
			assert!(T::MaxRetiredKeys::get() > 0, "a worker must be able to rotate its key");
			assert!(!T::UnbondingDelay::get().is_zero(), "stake must stay slashable a while");
			assert!(
				!T::EquivocationSlash::get().mul_floor(T::MinStake::get()).is_zero(),
				"equivocation must cost a worker with the minimum stake something"
			);
		}

		#[cfg(feature = "try-runtime")]
		fn try_state(_n: BlockNumberFor<T>) -> Result<(), polkadot_sdk::sp_runtime::TryRuntimeError> {
			Self::do_try_state()
		}
	}

	#[pallet::call]
	impl<T: Config> Pallet<T> {
		/// Registers the caller as a worker and holds `stake` from it. Any signed account that has
		/// no worker yet.
		///
		/// - `session_key`: the sr25519 key that will sign the worker's receipts; not another
		///   worker's.
		/// - `endpoint`: where clients reach the worker, at most `MaxEndpointLen` bytes.
		/// - `serves`: the base models served: one to `MaxServedModels`, each active, each once.
		/// - `compute_price_per_1k_tokens`: the worker's part of every fee, per 1000 tokens.
		/// - `stake`: at least `MinStake`.
		///
		/// Emits `WorkerRegistered`. Errors: `AlreadyRegistered`, `SessionKeyInUse`,
		/// `EndpointTooLong`, `NoModelsServed`, `TooManyModels`, `DuplicateModel`,
		/// `InactiveBaseModel`, `StakeTooLow`, `InsufficientBalance`. O(s log s), s = `serves`.
		#[pallet::call_index(0)]
		#[pallet::weight(T::WeightInfo::register(Pallet::<T>::served_weight_arg(serves)))]
		pub fn register(
			origin: OriginFor<T>,
			session_key: sr25519::Public,
			endpoint: Vec<u8>,
			serves: Vec<BaseModelId>,
			compute_price_per_1k_tokens: BalanceOf<T>,
			stake: BalanceOf<T>,
		) -> DispatchResult {
			let who = ensure_signed(origin)?;
			ensure!(!Workers::<T>::contains_key(&who), Error::<T>::AlreadyRegistered);
			ensure!(
				!SessionKeyOwner::<T>::contains_key(session_key),
				Error::<T>::SessionKeyInUse
			);
			let endpoint: BoundedVec<u8, T::MaxEndpointLen> =
				endpoint.try_into().map_err(|_| Error::<T>::EndpointTooLong)?;
			let serves = Self::checked_serves(serves)?;
			ensure!(stake >= T::MinStake::get(), Error::<T>::StakeTooLow);
			T::Currency::hold(&HoldReason::Stake.into(), &who, stake)
				.map_err(|_| Error::<T>::InsufficientBalance)?;
			Workers::<T>::insert(
				&who,
				Worker {
					session_key,
					endpoint,
					serves,
					compute_price_per_1k_tokens,
					price_floor: Default::default(),
					stake,
					status: WorkerStatus::Active,
				},
			);
			SessionKeyOwner::<T>::insert(session_key, &who);
			Self::deposit_event(Event::WorkerRegistered { worker: who, session_key, stake });
			Ok(())
		}

		/// Replaces the caller's endpoint, served base models and compute price. An active worker
		/// only. A lower price is charged at once; a higher one `PriceHold` blocks later, so
		/// receipts signed at the old price settle at it.
		///
		/// - `endpoint`, `serves`, `compute_price_per_1k_tokens`: as in `register`.
		///
		/// Emits `WorkerUpdated`. Errors: `UnknownWorker`, `NotActive`, `EndpointTooLong`,
		/// `NoModelsServed`, `TooManyModels`, `DuplicateModel`, `InactiveBaseModel`.
		/// O(s log s), s = `serves`.
		#[pallet::call_index(1)]
		#[pallet::weight(T::WeightInfo::update(Pallet::<T>::served_weight_arg(serves)))]
		pub fn update(
			origin: OriginFor<T>,
			endpoint: Vec<u8>,
			serves: Vec<BaseModelId>,
			compute_price_per_1k_tokens: BalanceOf<T>,
		) -> DispatchResult {
			let who = ensure_signed(origin)?;
			let mut worker = Self::active(&who)?;
			worker.endpoint = endpoint.try_into().map_err(|_| Error::<T>::EndpointTooLong)?;
			worker.serves = Self::checked_serves(serves)?;
			let now = frame_system::Pallet::<T>::block_number();
			let price = &mut worker.compute_price_per_1k_tokens;
			worker.price_floor.set(price, compute_price_per_1k_tokens, now, T::PriceHold::get());
			Workers::<T>::insert(&who, worker);
			Self::deposit_event(Event::WorkerUpdated { worker: who });
			Ok(())
		}

		/// Holds `amount` more from the caller as stake. An active worker only.
		///
		/// Emits `StakeBonded`. Errors: `UnknownWorker`, `NotActive`, `ZeroAmount`, `Overflow`,
		/// `InsufficientBalance`. O(1).
		#[pallet::call_index(2)]
		#[pallet::weight(T::WeightInfo::bond_extra())]
		pub fn bond_extra(origin: OriginFor<T>, amount: BalanceOf<T>) -> DispatchResult {
			let who = ensure_signed(origin)?;
			let mut worker = Self::active(&who)?;
			ensure!(!amount.is_zero(), Error::<T>::ZeroAmount);
			let stake = worker.stake.checked_add(&amount).ok_or(Error::<T>::Overflow)?;
			T::Currency::hold(&HoldReason::Stake.into(), &who, amount)
				.map_err(|_| Error::<T>::InsufficientBalance)?;
			worker.stake = stake;
			Workers::<T>::insert(&who, worker);
			Self::deposit_event(Event::StakeBonded { worker: who, amount, stake });
			Ok(())
		}

		/// Replaces the caller's session key with `new_key` and frees the old one. An active
		/// worker only: an unbonding or slashed worker keeps the key its misbehaviour can be
		/// proven against.
		///
		/// Receipts signed with the old key no longer settle, but for `UnbondingDelay` they
		/// still prove equivocation against this worker (as a stake stays slashable that long
		/// after unbonding). Rotating after a key leaked therefore does not end the worker's
		/// liability for what the leaked key signs until then.
		///
		/// Emits `SessionKeyRotated`. Errors: `UnknownWorker`, `NotActive`, `SessionKeyInUse`
		/// (including the worker's own current key), `TooManyRetiredKeys`, `Overflow`.
		/// O(`MaxRetiredKeys`).
		#[pallet::call_index(3)]
		#[pallet::weight(T::WeightInfo::rotate_key())]
		pub fn rotate_key(origin: OriginFor<T>, new_key: sr25519::Public) -> DispatchResult {
			let who = ensure_signed(origin)?;
			let mut worker = Self::active(&who)?;
			ensure!(!SessionKeyOwner::<T>::contains_key(new_key), Error::<T>::SessionKeyInUse);
			let now = frame_system::Pallet::<T>::block_number();
			let evidence_until =
				now.checked_add(&T::UnbondingDelay::get()).ok_or(Error::<T>::Overflow)?;
			let old_key = worker.session_key;
			let mut retired = RetiredKeys::<T>::get(&who);
			retired.retain(|(_, until)| now < *until);
			retired
				.try_push((old_key, evidence_until))
				.map_err(|_| Error::<T>::TooManyRetiredKeys)?;
			worker.session_key = new_key;
			SessionKeyOwner::<T>::remove(old_key);
			SessionKeyOwner::<T>::insert(new_key, &who);
			Workers::<T>::insert(&who, worker);
			RetiredKeys::<T>::insert(&who, retired);
			Self::deposit_event(Event::SessionKeyRotated { worker: who, old_key, new_key });
			Ok(())
		}

		/// Stops the caller serving: it signs nothing more, and its stake stays held, and
		/// slashable, for `UnbondingDelay` blocks. An active or slashed worker.
		///
		/// Emits `Unbonded`. Errors: `UnknownWorker`, `AlreadyUnbonding`, `Overflow`. O(1).
		#[pallet::call_index(4)]
		#[pallet::weight(T::WeightInfo::unbond())]
		pub fn unbond(origin: OriginFor<T>) -> DispatchResult {
			let who = ensure_signed(origin)?;
			let mut worker = Workers::<T>::get(&who).ok_or(Error::<T>::UnknownWorker)?;
			ensure!(
				!matches!(worker.status, WorkerStatus::Unbonding { .. }),
				Error::<T>::AlreadyUnbonding
			);
			let until = frame_system::Pallet::<T>::block_number()
				.checked_add(&T::UnbondingDelay::get())
				.ok_or(Error::<T>::Overflow)?;
			worker.status = WorkerStatus::Unbonding { until };
			Workers::<T>::insert(&who, worker);
			Self::deposit_event(Event::Unbonded { worker: who, until });
			Ok(())
		}

		/// Releases the caller's stake and removes its worker, freeing its session key. A worker
		/// whose unbonding delay has passed.
		///
		/// Emits `WorkerRemoved`. Errors: `UnknownWorker`, `NotUnbonding`, `UnbondingNotOver`.
		/// O(1).
		#[pallet::call_index(5)]
		#[pallet::weight(T::WeightInfo::withdraw_unbonded())]
		pub fn withdraw_unbonded(origin: OriginFor<T>) -> DispatchResult {
			let who = ensure_signed(origin)?;
			let worker = Workers::<T>::get(&who).ok_or(Error::<T>::UnknownWorker)?;
			let WorkerStatus::Unbonding { until } = worker.status else {
				return Err(Error::<T>::NotUnbonding.into());
			};
			ensure!(
				frame_system::Pallet::<T>::block_number() >= until,
				Error::<T>::UnbondingNotOver
			);
			if !worker.stake.is_zero() {
				T::Currency::release(&HoldReason::Stake.into(), &who, worker.stake, Precision::Exact)?;
			}
			Workers::<T>::remove(&who);
			SessionKeyOwner::<T>::remove(worker.session_key);
			// Rotation needs an active worker, so every retired key's window ended by now.
			RetiredKeys::<T>::remove(&who);
			Self::deposit_event(Event::WorkerRemoved { worker: who, released: worker.stake });
			Ok(())
		}

		/// Moves `amount` of `worker`'s stake (all of it, if the stake is smaller) to the
		/// treasury. `GovernanceOrigin` only. The worker's status is unchanged; below `MinStake`
		/// it signs nothing until it bonds more.
		///
		/// Emits `WorkerSlashed`. Errors: `BadOrigin`, `UnknownWorker`, `NothingToSlash`. O(1).
		#[pallet::call_index(6)]
		#[pallet::weight(T::WeightInfo::slash())]
		pub fn slash(
			origin: OriginFor<T>,
			worker: T::AccountId,
			amount: BalanceOf<T>,
		) -> DispatchResult {
			T::GovernanceOrigin::ensure_origin(origin)?;
			let mut record = Workers::<T>::get(&worker).ok_or(Error::<T>::UnknownWorker)?;
			let amount = amount.min(record.stake);
			ensure!(!amount.is_zero(), Error::<T>::NothingToSlash);
			Self::slash_stake(&worker, &mut record, amount)?;
			Workers::<T>::insert(&worker, record);
			Self::deposit_event(Event::WorkerSlashed { worker, amount });
			Ok(())
		}

		/// Punishes a worker for signing two different receipts for one request:
		/// `EquivocationSlash` of its stake goes to the treasury and it is marked slashed. Any
		/// signed account; the reporter gains nothing but pays only the fee.
		///
		/// - `first`, `second`: receipts naming the same worker and request hash, differing in
		///   any other field.
		/// - `first_signature`, `second_signature`: their signatures over
		///   `openledger_primitives::Receipt::signing_payload` with this chain's genesis hash, each
		///   by the worker's current session key or a key it retired less than `UnbondingDelay`
		///   ago (the two may differ).
		///
		/// Works on an active, unbonding or already slashed worker; each (worker, request) once;
		/// until `UnbondingDelay` after the later receipt's `expires_at`.
		///
		/// Emits `WorkerEquivocated`. Errors: `NotEquivocation`, `EvidenceExpired`,
		/// `UnknownWorker`, `AlreadyReported`, `BadSignature`, `NothingToSlash`.
		/// O(attribution entries × `MaxRetiredKeys`).
		#[pallet::call_index(7)]
		#[pallet::weight(T::WeightInfo::report_equivocation())]
		pub fn report_equivocation(
			origin: OriginFor<T>,
			first: Box<ReceiptOf<T>>,
			first_signature: sr25519::Signature,
			second: Box<ReceiptOf<T>>,
			second_signature: sr25519::Signature,
		) -> DispatchResult {
			let reporter = ensure_signed(origin)?;
			ensure!(
				first.worker == second.worker &&
					first.request_hash == second.request_hash &&
					first.id() != second.id(),
				Error::<T>::NotEquivocation
			);
			let last_expiry: BlockNumberFor<T> = first.expires_at.max(second.expires_at).saturated_into();
			ensure!(
				frame_system::Pallet::<T>::block_number() <= last_expiry.saturating_add(T::UnbondingDelay::get()),
				Error::<T>::EvidenceExpired
			);
			let (who, request_hash) = (first.worker.clone(), first.request_hash);
			let mut worker = Workers::<T>::get(&who).ok_or(Error::<T>::UnknownWorker)?;
			ensure!(
				!ReportedEquivocations::<T>::contains_key(&who, request_hash),
				Error::<T>::AlreadyReported
			);
			let keys = Self::evidence_keys(&who, &worker);
			let genesis_hash = Self::genesis_hash();
			// One payload per receipt, checked against each key.
			let signed_by_worker = |receipt: &ReceiptOf<T>, signature: &sr25519::Signature| {
				let payload = receipt.signing_payload(&genesis_hash);
				keys.iter().any(|key| signature.verify(&payload[..], key))
			};
			ensure!(
				signed_by_worker(&first, &first_signature) &&
					signed_by_worker(&second, &second_signature),
				Error::<T>::BadSignature
			);
			let slashed = T::EquivocationSlash::get().mul_floor(worker.stake);
			ensure!(!slashed.is_zero(), Error::<T>::NothingToSlash);
			Self::slash_stake(&who, &mut worker, slashed)?;
			worker.status = WorkerStatus::Slashed;
			Workers::<T>::insert(&who, worker);
			ReportedEquivocations::<T>::insert(
				&who,
				request_hash,
				frame_system::Pallet::<T>::block_number(),
			);
			Self::deposit_event(Event::WorkerEquivocated {
				worker: who,
				request_hash,
				slashed,
				reporter,
			});
			Ok(())
		}
	}

	impl<T: Config> Pallet<T> {
		/// The hash receipts are signed with: this chain's genesis block hash.
		pub fn genesis_hash() -> H256 {
			frame_system::Pallet::<T>::block_hash(BlockNumberFor::<T>::zero()).into()
		}

		/// The served-model count a call's weight is charged for: the number given, but no more
		/// than the bound, past which the call fails before reading any base model.
		fn served_weight_arg(serves: &[BaseModelId]) -> u32 {
			serves.len().min(T::MaxServedModels::get() as usize) as u32
		}

		/// The keys whose signatures prove `worker`'s equivocation now: its session key, then the
		/// keys it retired whose window has not passed, oldest first.
		fn evidence_keys(who: &T::AccountId, worker: &WorkerOf<T>) -> Vec<sr25519::Public> {
			let now = frame_system::Pallet::<T>::block_number();
			core::iter::once(worker.session_key)
				.chain(
					RetiredKeys::<T>::get(who)
						.into_iter()
						.filter(|(_, until)| now < *until)
						.map(|(key, _)| key),
				)
				.collect()
		}

		/// The caller's worker, which must be active.
		fn active(who: &T::AccountId) -> Result<WorkerOf<T>, DispatchError> {
			let worker = Workers::<T>::get(who).ok_or(Error::<T>::UnknownWorker)?;
			ensure!(worker.status == WorkerStatus::Active, Error::<T>::NotActive);
			Ok(worker)
		}

		/// Checks a served-model list: bounded, not empty, no model twice, every model active.
		fn checked_serves(
			serves: Vec<BaseModelId>,
		) -> Result<BoundedVec<BaseModelId, T::MaxServedModels>, DispatchError> {
			let serves: BoundedVec<BaseModelId, T::MaxServedModels> =
				serves.try_into().map_err(|_| Error::<T>::TooManyModels)?;
			ensure!(!serves.is_empty(), Error::<T>::NoModelsServed);
			let mut sorted = serves.to_vec();
			sorted.sort_unstable();
			ensure!(sorted.windows(2).all(|pair| pair[0] != pair[1]), Error::<T>::DuplicateModel);
			ensure!(
				serves.iter().all(|model| T::Registry::base_model_active(*model)),
				Error::<T>::InactiveBaseModel
			);
			Ok(serves)
		}

		/// Moves `amount` (at most the stake) from the worker's held stake to the treasury.
		fn slash_stake(
			who: &T::AccountId,
			worker: &mut WorkerOf<T>,
			amount: BalanceOf<T>,
		) -> DispatchResult {
			let remaining = worker.stake.checked_sub(&amount).ok_or(ArithmeticError::Underflow)?;
			T::Currency::transfer_on_hold(
				&HoldReason::Stake.into(),
				who,
				&T::Treasury::get(),
				amount,
				Precision::Exact,
				Restriction::Free,
				Fortitude::Force,
			)?;
			worker.stake = remaining;
			Ok(())
		}

		/// Invariants: each worker's held stake equals its recorded stake; the session-key index
		/// and the workers agree both ways; served-model lists are non-empty, duplicate-free and
		/// within their bounds; retired keys belong to registered workers, oldest first.
		#[cfg(any(feature = "try-runtime", feature = "std"))]
		pub fn do_try_state() -> Result<(), polkadot_sdk::sp_runtime::TryRuntimeError> {
			use polkadot_sdk::frame_support::traits::fungible::InspectHold;
			let mut workers = 0u32;
			let now = frame_system::Pallet::<T>::block_number();
			for (who, worker) in Workers::<T>::iter() {
				workers += 1;
				if let WorkerStatus::Unbonding { until } = worker.status {
					ensure!(until <= now.saturating_add(T::UnbondingDelay::get()), "an unbonding ends beyond its delay");
				}
				ensure!(
					T::Currency::balance_on_hold(&HoldReason::Stake.into(), &who) == worker.stake,
					"held stake differs from the recorded stake"
				);
				ensure!(
					SessionKeyOwner::<T>::get(worker.session_key).as_ref() == Some(&who),
					"a worker's session key is not indexed to it"
				);
				ensure!(!worker.serves.is_empty(), "a worker serves no base model");
				ensure!(
					worker.price_floor.price <= worker.compute_price_per_1k_tokens &&
						worker.price_floor.until <=
							frame_system::Pallet::<T>::block_number().saturating_add(T::PriceHold::get()),
					"a worker's price floor is above its price or held too long"
				);
				ensure!(
					worker.serves.len() as u32 <= T::MaxServedModels::get(),
					"a worker serves more base models than the bound"
				);
				ensure!(
					worker.endpoint.len() as u32 <= T::MaxEndpointLen::get(),
					"an endpoint is longer than the bound"
				);
				let mut sorted = worker.serves.to_vec();
				sorted.sort_unstable();
				ensure!(
					sorted.windows(2).all(|pair| pair[0] != pair[1]),
					"a worker serves a base model twice"
				);
			}
			let mut keys = 0u32;
			for (key, owner) in SessionKeyOwner::<T>::iter() {
				keys += 1;
				ensure!(
					Workers::<T>::get(&owner).map(|w| w.session_key) == Some(key),
					"an indexed session key is not its owner's key"
				);
			}
			ensure!(keys == workers, "session-key index and workers differ in number");
			for (who, retired) in RetiredKeys::<T>::iter() {
				ensure!(Workers::<T>::contains_key(&who), "retired keys of no registered worker");
				ensure!(!retired.is_empty(), "an empty retired-key list is stored");
				ensure!(
					retired.windows(2).all(|pair| pair[0].1 <= pair[1].1),
					"retired keys are not oldest first"
				);
				ensure!(
					retired.iter().all(|(_, until)| *until <= now.saturating_add(T::UnbondingDelay::get())),
					"a retired key stays evidence beyond the unbonding delay"
				);
			}
			Ok(())
		}
	}

	impl<T: Config> WorkersInspect<T::AccountId, BalanceOf<T>> for Pallet<T> {
		fn active_worker(who: &T::AccountId) -> Option<WorkerView<BalanceOf<T>>> {
			Workers::<T>::get(who)
				.filter(|w| w.status == WorkerStatus::Active && w.stake >= T::MinStake::get())
				.map(|w| WorkerView {
					session_key: w.session_key,
					compute_price_per_1k_tokens: w
						.price_floor
						.charged(w.compute_price_per_1k_tokens, frame_system::Pallet::<T>::block_number()),
					serves: w.serves.into_inner(),
				})
		}
	}
}
