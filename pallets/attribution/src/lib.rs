//! # Attribution pallet
//!
//! Payers hold credit and authorise workers, by a per-request voucher or an on-chain allowance.
//! Workers submit signed receipts in batches; each receipt is verified alone (signature, worker,
//! referenced ids and hashes, attribution, expiry, replay, authorisation), its fee is computed
//! from on-chain prices and split between worker, adapter owner, prompt owner, data contributors
//! and treasury (`openledger_primitives::fees`). A receipt is settled at most once per
//! (worker, request); settled records expire and are pruned.
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

pub use pallet::*;
pub use types::*;
pub use weights::WeightInfo;

#[cfg(feature = "runtime-benchmarks")]
pub mod benchmarking;
#[cfg(test)]
mod mock;
#[cfg(test)]
mod tests;
mod settle;
mod types;
pub mod weights;

#[polkadot_sdk::frame_support::pallet]
pub mod pallet {
	use super::*;
	use openledger_primitives::traits::{
		DataNetsInspect, RegistryInspect, TrainingRewards, WorkersInspect,
	};
	use polkadot_sdk::{
		frame_support::{
			pallet_prelude::*,
			traits::{
				fungible::{Mutate, MutateHold},
				tokens::Precision,
			},
		},
		frame_system::{self, pallet_prelude::*},
		sp_core::H256,
		sp_runtime::{
			traits::{Saturating, Zero},
			AccountId32, Permill,
		},
	};

	#[pallet::pallet]
	pub struct Pallet<T>(_);

	#[pallet::config]
	pub trait Config:
		polkadot_sdk::frame_system::Config<
		AccountId = AccountId32,
		Hash = H256,
		RuntimeEvent: From<Event<Self>>,
	>
	{
		/// The OPEN token: payer credit is held on it.
		type Currency: Mutate<Self::AccountId>
			+ MutateHold<Self::AccountId, Reason = Self::RuntimeHoldReason>;
		type RuntimeHoldReason: From<HoldReason>;
		/// Receives the protocol share and every rounding remainder.
		type Treasury: Get<Self::AccountId>;
		type DataNets: DataNetsInspect<Self::AccountId>
			+ TrainingRewards<Self::AccountId, BalanceOf<Self>>;
		type Registry: RegistryInspect<Self::AccountId, BalanceOf<Self>>;
		type Workers: WorkersInspect<Self::AccountId, BalanceOf<Self>>;
		/// May set the fee parameters.
		type GovernanceOrigin: EnsureOrigin<Self::RuntimeOrigin>;
		/// The most receipts one `submit_receipts` call may carry.
		#[pallet::constant]
		type MaxReceiptsPerBatch: Get<u32>;
		/// How far ahead of the current block a receipt may expire; bounds how long settled
		/// records are kept.
		#[pallet::constant]
		type MaxReceiptLifetime: Get<BlockNumberFor<Self>>;
		/// How long a credit withdrawal waits before it can be claimed.
		#[pallet::constant]
		type WithdrawalDelay: Get<BlockNumberFor<Self>>;
		/// The most workers one payer may give an allowance to.
		#[pallet::constant]
		type MaxAllowances: Get<u32>;
		/// The most expired settled records pruned in one block. Whole batch lists are pruned,
		/// so it must be at least `MaxReceiptsPerBatch`; to keep storage bounded it must be at
		/// least the receipts a block can settle.
		#[pallet::constant]
		type MaxPrunePerBlock: Get<u32>;
		type WeightInfo: WeightInfo;
		/// Builds the sibling pallets' state the benchmarks need.
		#[cfg(feature = "runtime-benchmarks")]
		type BenchmarkHelper: crate::benchmarking::BenchmarkHelper<Self::AccountId>;
	}

	#[pallet::composite_enum]
	pub enum HoldReason {
		/// A payer's credit, from which receipts are paid.
		#[codec(index = 0)]
		Credit,
	}

	/// The protocol's share of every fee part, paid to the treasury.
	#[pallet::storage]
	pub type ProtocolShare<T> = StorageValue<_, Permill, ValueQuery>;

	/// The share of the adapter part paid to the adapter's training DataNets.
	#[pallet::storage]
	pub type DataShare<T> = StorageValue<_, Permill, ValueQuery>;

	/// The price of each attributed item, paid to its contributors.
	#[pallet::storage]
	pub type RetrievalPrice<T: Config> = StorageValue<_, BalanceOf<T>, ValueQuery>;

	/// Remaining allowance of a payer for a worker.
	#[pallet::storage]
	pub type Allowances<T: Config> = StorageDoubleMap<
		_,
		Blake2_128Concat,
		T::AccountId,
		Blake2_128Concat,
		T::AccountId,
		BalanceOf<T>,
	>;

	/// How many allowances each payer has set.
	#[pallet::storage]
	pub type AllowanceCount<T: Config> =
		StorageMap<_, Blake2_128Concat, T::AccountId, u32, ValueQuery>;

	#[pallet::storage]
	pub type PendingWithdrawals<T: Config> =
		StorageMap<_, Blake2_128Concat, T::AccountId, PendingWithdrawalOf<T>>;

	/// Settled requests: (worker, request hash) → the receipt's expiry. Replay protection.
	#[pallet::storage]
	pub type Settled<T: Config> =
		StorageMap<_, Blake2_128Concat, (T::AccountId, H256), BlockNumberFor<T>>;

	/// The same records by expiry, so they can be pruned once no receipt can name them: one
	/// list per batch and expiry (expiry → batch number → requests), which makes indexing a
	/// record one write per batch rather than one per receipt.
	#[pallet::storage]
	pub type SettledByExpiry<T: Config> = StorageDoubleMap<
		_,
		Twox64Concat,
		BlockNumberFor<T>,
		Twox64Concat,
		u64,
		BoundedVec<(T::AccountId, H256), T::MaxReceiptsPerBatch>,
	>;

	/// The number of the next batch that settles a receipt; keys its expiry lists.
	#[pallet::storage]
	pub type NextBatch<T: Config> = StorageValue<_, u64, ValueQuery>;

	/// The next expiry block whose records have not all been pruned.
	#[pallet::storage]
	pub type PruneCursor<T: Config> = StorageValue<_, BlockNumberFor<T>, ValueQuery>;

	#[pallet::genesis_config]
	#[derive(polkadot_sdk::frame_support::DefaultNoBound)]
	pub struct GenesisConfig<T: Config> {
		pub protocol_share: Permill,
		pub data_share: Permill,
		pub retrieval_price: BalanceOf<T>,
	}

	#[pallet::genesis_build]
	impl<T: Config> BuildGenesisConfig for GenesisConfig<T> {
		fn build(&self) {
			ProtocolShare::<T>::put(self.protocol_share);
			DataShare::<T>::put(self.data_share);
			RetrievalPrice::<T>::put(self.retrieval_price);
		}
	}

	#[pallet::event]
	#[pallet::generate_deposit(pub(super) fn deposit_event)]
	pub enum Event<T: Config> {
		/// Credit was held from the payer.
		CreditDeposited { payer: T::AccountId, amount: BalanceOf<T> },
		/// A withdrawal of credit was scheduled.
		WithdrawalScheduled { payer: T::AccountId, amount: BalanceOf<T>, unlock_at: BlockNumberFor<T> },
		/// Credit was released to the payer.
		CreditWithdrawn { payer: T::AccountId, amount: BalanceOf<T> },
		/// A payer set (or, with zero, removed) a worker's allowance.
		AllowanceSet { payer: T::AccountId, worker: T::AccountId, amount: BalanceOf<T> },
		/// A receipt was verified and its fee paid out: `payouts` is what each recipient got from
		/// the payer's credit (the batch pays them in one transfer per recipient when it ends).
		ReceiptSettled {
			receipt_id: H256,
			worker: T::AccountId,
			payer: T::AccountId,
			fee: BalanceOf<T>,
			payouts: alloc::vec::Vec<(T::AccountId, BalanceOf<T>)>,
		},
		/// A receipt was rejected and paid nothing.
		ReceiptRejected { receipt_id: H256, reason: RejectReason },
		/// A batch was processed.
		BatchProcessed { settled: u32, rejected: u32 },
		/// Governance changed the fee parameters.
		FeeParamsSet { protocol_share: Permill, data_share: Permill, retrieval_price: BalanceOf<T> },
	}

	#[pallet::error]
	pub enum Error<T> {
		/// The amount must be above zero.
		ZeroAmount,
		/// The account cannot pay this much.
		InsufficientBalance,
		/// The payer's credit is smaller than the amount.
		InsufficientCredit,
		/// The payer has no withdrawal scheduled.
		NoPendingWithdrawal,
		/// The scheduled withdrawal is still locked.
		WithdrawalLocked,
		/// The payer has set the most allowances allowed.
		TooManyAllowances,
		/// A batch must carry at least one receipt.
		EmptyBatch,
	}

	#[pallet::hooks]
	impl<T: Config> Hooks<BlockNumberFor<T>> for Pallet<T> {
		fn on_initialize(now: BlockNumberFor<T>) -> Weight {
			Self::prune_expired(now)
		}

		fn integrity_test() {
			assert!(T::MaxReceiptsPerBatch::get() > 0, "a batch must fit a receipt");
			assert!(!T::MaxReceiptLifetime::get().is_zero(), "receipts need a lifetime");
			assert!(
				T::MaxPrunePerBlock::get() >= T::MaxReceiptsPerBatch::get(),
				"a block must be able to prune a whole batch's records"
			);
			// Otherwise a payer could withdraw the credit a signed, unexpired receipt will draw on.
			assert!(
				T::WithdrawalDelay::get() >= T::MaxReceiptLifetime::get(),
				"a withdrawal must wait at least as long as a receipt lives"
			);
		}

		#[cfg(feature = "try-runtime")]
		fn try_state(_n: BlockNumberFor<T>) -> Result<(), polkadot_sdk::sp_runtime::TryRuntimeError> {
			Self::do_try_state()
		}
	}

	#[pallet::call]
	impl<T: Config> Pallet<T> {
		/// Holds `amount` of the caller's balance as credit for inference.
		///
		/// Emits `CreditDeposited`. Errors: `ZeroAmount`, `InsufficientBalance`. O(1).
		#[pallet::call_index(0)]
		#[pallet::weight(T::WeightInfo::deposit())]
		pub fn deposit(origin: OriginFor<T>, amount: BalanceOf<T>) -> DispatchResult {
			let payer = ensure_signed(origin)?;
			ensure!(!amount.is_zero(), Error::<T>::ZeroAmount);
			T::Currency::hold(&HoldReason::Credit.into(), &payer, amount)
				.map_err(|_| Error::<T>::InsufficientBalance)?;
			Self::deposit_event(Event::CreditDeposited { payer, amount });
			Ok(())
		}

		/// Schedules the release of `amount` of credit after `WithdrawalDelay`; receipts can
		/// still be paid from it until then. Replaces a withdrawal already scheduled.
		///
		/// Emits `WithdrawalScheduled`. Errors: `ZeroAmount`, `InsufficientCredit`. O(1).
		#[pallet::call_index(1)]
		#[pallet::weight(T::WeightInfo::withdraw())]
		pub fn withdraw(origin: OriginFor<T>, amount: BalanceOf<T>) -> DispatchResult {
			let payer = ensure_signed(origin)?;
			ensure!(!amount.is_zero(), Error::<T>::ZeroAmount);
			ensure!(Self::credit(&payer) >= amount, Error::<T>::InsufficientCredit);
			let unlock_at =
				frame_system::Pallet::<T>::block_number().saturating_add(T::WithdrawalDelay::get());
			PendingWithdrawals::<T>::insert(&payer, PendingWithdrawal { amount, unlock_at });
			Self::deposit_event(Event::WithdrawalScheduled { payer, amount, unlock_at });
			Ok(())
		}

		/// Releases a scheduled withdrawal once unlocked: the amount, or all remaining credit if
		/// receipts have drawn it lower.
		///
		/// Emits `CreditWithdrawn`. Errors: `NoPendingWithdrawal`, `WithdrawalLocked`. O(1).
		#[pallet::call_index(2)]
		#[pallet::weight(T::WeightInfo::claim_withdrawal())]
		pub fn claim_withdrawal(origin: OriginFor<T>) -> DispatchResult {
			let payer = ensure_signed(origin)?;
			let pending =
				PendingWithdrawals::<T>::get(&payer).ok_or(Error::<T>::NoPendingWithdrawal)?;
			ensure!(
				frame_system::Pallet::<T>::block_number() >= pending.unlock_at,
				Error::<T>::WithdrawalLocked
			);
			let amount = pending.amount.min(Self::credit(&payer));
			T::Currency::release(&HoldReason::Credit.into(), &payer, amount, Precision::Exact)?;
			PendingWithdrawals::<T>::remove(&payer);
			Self::deposit_event(Event::CreditWithdrawn { payer, amount });
			Ok(())
		}

		/// Sets how much `worker` may charge the caller's credit without a voucher; zero removes
		/// the allowance.
		///
		/// Emits `AllowanceSet`. Errors: `TooManyAllowances`. O(1).
		#[pallet::call_index(3)]
		#[pallet::weight(T::WeightInfo::set_allowance())]
		pub fn set_allowance(
			origin: OriginFor<T>,
			worker: T::AccountId,
			amount: BalanceOf<T>,
		) -> DispatchResult {
			let payer = ensure_signed(origin)?;
			let existed = Allowances::<T>::contains_key(&payer, &worker);
			if amount.is_zero() {
				if existed {
					Allowances::<T>::remove(&payer, &worker);
					AllowanceCount::<T>::mutate(&payer, |n| *n = n.saturating_sub(1));
				}
			} else {
				if !existed {
					let count = AllowanceCount::<T>::get(&payer);
					ensure!(count < T::MaxAllowances::get(), Error::<T>::TooManyAllowances);
					AllowanceCount::<T>::insert(&payer, count + 1);
				}
				Allowances::<T>::insert(&payer, &worker, amount);
			}
			Self::deposit_event(Event::AllowanceSet { payer, worker, amount });
			Ok(())
		}

		/// Settles a batch of signed receipts. Anyone may submit; each receipt is judged alone
		/// and either settled (`ReceiptSettled`) or rejected with its reason (`ReceiptRejected`),
		/// so one bad receipt does not sink the batch.
		///
		/// `receipts` is bounded by `MaxReceiptsPerBatch` when decoded. The call's weight comes
		/// from the call data ([`Pallet::batch_weight`]): receipts that share a worker, payer,
		/// adapter and prompt with an earlier one in the batch cost only what they add.
		///
		/// Emits one event per receipt, then `BatchProcessed`. Errors: `EmptyBatch`.
		/// O(receipts × attribution entries).
		#[pallet::call_index(4)]
		#[pallet::weight(Pallet::<T>::batch_weight(receipts))]
		pub fn submit_receipts(
			origin: OriginFor<T>,
			receipts: BoundedVec<SignedReceiptOf<T>, T::MaxReceiptsPerBatch>,
		) -> DispatchResult {
			ensure_signed(origin)?;
			ensure!(!receipts.is_empty(), Error::<T>::EmptyBatch);
			let genesis_hash = frame_system::Pallet::<T>::block_hash(BlockNumberFor::<T>::zero());
			let (mut settled, mut rejected) = (0u32, 0u32);
			let mut batch = settle::Batch::<T>::new(genesis_hash);
			for signed in receipts {
				let receipt_id = signed.receipt.id();
				match batch.settle(&signed) {
					Ok(settle::Settlement { fee, payouts }) => {
						settled += 1;
						Self::deposit_event(Event::ReceiptSettled {
							receipt_id,
							worker: signed.receipt.worker,
							payer: signed.receipt.payer,
							fee,
							payouts,
						});
					},
					Err(reason) => {
						rejected += 1;
						Self::deposit_event(Event::ReceiptRejected { receipt_id, reason });
					},
				}
			}
			batch.pay_out()?;
			Self::deposit_event(Event::BatchProcessed { settled, rejected });
			Ok(())
		}

		/// Sets the protocol share, the data share and the retrieval price. Governance only.
		///
		/// Emits `FeeParamsSet`. O(1).
		#[pallet::call_index(5)]
		#[pallet::weight(T::WeightInfo::set_fee_params())]
		pub fn set_fee_params(
			origin: OriginFor<T>,
			protocol_share: Permill,
			data_share: Permill,
			retrieval_price: BalanceOf<T>,
		) -> DispatchResult {
			T::GovernanceOrigin::ensure_origin(origin)?;
			ProtocolShare::<T>::put(protocol_share);
			DataShare::<T>::put(data_share);
			RetrievalPrice::<T>::put(retrieval_price);
			Self::deposit_event(Event::FeeParamsSet { protocol_share, data_share, retrieval_price });
			Ok(())
		}
	}

	impl<T: Config> Pallet<T> {
		/// The payer's credit: what is held for receipts.
		pub fn credit(payer: &T::AccountId) -> BalanceOf<T> {
			use polkadot_sdk::frame_support::traits::fungible::InspectHold;
			T::Currency::balance_on_hold(&HoldReason::Credit.into(), payer)
		}

		/// The weight of settling `receipts`, from the call data alone.
		///
		/// The first receipt of each context (worker, payer, adapter, prompt) is charged as a
		/// receipt alone ([`WeightInfo::submit_receipt`], which carries a voucher and reads that
		/// context cold); paid from an allowance instead, it also reads the allowance and writes
		/// it back when the batch ends, and checks one signature fewer. Every further receipt of
		/// the context is charged what it adds to a batch that already read the context (the
		/// slope of [`WeightInfo::submit_receipts_shared`] for allowance receipts, of
		/// [`WeightInfo::submit_receipts_shared_vouchers`] for voucher receipts) plus its
		/// attribution entries at the cold per-entry rate of `submit_receipt`, since its items
		/// may be new. Each expiry after the first adds a list to the expiry index.
		pub fn batch_weight(receipts: &[SignedReceiptOf<T>]) -> Weight {
			let db = T::DbWeight::get();
			let alone = |entries: u32| T::WeightInfo::submit_receipt(entries);
			let slope = |weight: fn(u32) -> Weight| weight(2).saturating_sub(weight(1));
			let with_allowance = slope(T::WeightInfo::submit_receipts_shared);
			let with_voucher = slope(T::WeightInfo::submit_receipts_shared_vouchers);
			let mut contexts = alloc::collections::BTreeSet::new();
			let mut expiries = alloc::collections::BTreeSet::new();
			let total = receipts.iter().fold(Weight::zero(), |total, signed| {
				let receipt = &signed.receipt;
				let entries = receipt.attribution.len() as u32;
				let context = (
					&receipt.worker,
					&receipt.payer,
					receipt.adapter.map(|(id, _)| id),
					receipt.prompt.map(|(id, _)| id),
				);
				let mut weight = match (contexts.insert(context), signed.voucher.is_some()) {
					(true, true) => alone(entries),
					(true, false) => alone(entries).saturating_add(db.reads_writes(1, 1)),
					(false, voucher) => (if voucher { with_voucher } else { with_allowance })
						.saturating_add(alone(entries).saturating_sub(alone(0))),
				};
				if expiries.insert(receipt.expires_at) && expiries.len() > 1 {
					weight = weight.saturating_add(db.writes(1));
				}
				total.saturating_add(weight)
			});
			if receipts.is_empty() {
				alone(0)
			} else {
				total
			}
		}

		/// Removes the settled records that expired before `now`, a batch's list at a time.
		///
		/// `MaxPrunePerBlock` bounds the work: each record, each list and each expiry block
		/// found empty counts one against it.
		pub(crate) fn prune_expired(now: BlockNumberFor<T>) -> Weight {
			let budget = T::MaxPrunePerBlock::get();
			let mut cursor = PruneCursor::<T>::get();
			let (mut lists, mut records, mut empty) = (0u32, 0u32, 0u32);
			let mut used = 0u32;
			// Records expiring at block `b` can be removed from block `b + 1` on.
			while cursor < now && used < budget {
				match SettledByExpiry::<T>::iter_prefix(cursor).next() {
					Some((batch, requests)) => {
						let cost = requests.len() as u32 + 1;
						if used.saturating_add(cost) > budget {
							break;
						}
						for request in &requests {
							Settled::<T>::remove(request);
						}
						SettledByExpiry::<T>::remove(cursor, batch);
						lists += 1;
						records += requests.len() as u32;
						used += cost;
					},
					None => {
						cursor = cursor.saturating_add(One::one());
						empty += 1;
						used += 1;
					},
				}
			}
			PruneCursor::<T>::put(cursor);
			Self::prune_weight(lists, records, empty)
		}

		/// The weight of pruning `records` settled records in `lists` lists, after passing
		/// `empty` expiry blocks with none: [`WeightInfo::prune_lists`] prices lists of one record
		/// each, and every further record in a list costs the slope of [`WeightInfo::prune`].
		pub fn prune_weight(lists: u32, records: u32, empty: u32) -> Weight {
			let per_record = T::WeightInfo::prune(2).saturating_sub(T::WeightInfo::prune(1));
			T::WeightInfo::prune_lists(lists)
				.saturating_add(per_record.saturating_mul(u64::from(records.saturating_sub(lists))))
				.saturating_add(T::DbWeight::get().reads(u64::from(empty)))
		}

		/// Invariants: every settled record is indexed by its expiry and nothing else is; records
		/// before the prune cursor are gone; pending withdrawals belong to payers with credit or
		/// are claimable.
		#[cfg(any(feature = "try-runtime", feature = "std"))]
		pub fn do_try_state() -> Result<(), polkadot_sdk::sp_runtime::TryRuntimeError> {
			let mut indexed = alloc::collections::BTreeMap::new();
			for (expires_at, _, requests) in SettledByExpiry::<T>::iter() {
				for request in requests {
					ensure!(indexed.insert(request, expires_at).is_none(), "a record is indexed twice");
				}
			}
			let mut count = 0usize;
			for (key, expires_at) in Settled::<T>::iter() {
				count += 1;
				ensure!(
					indexed.get(&key) == Some(&expires_at),
					"settled record missing from the expiry index"
				);
				ensure!(expires_at >= PruneCursor::<T>::get(), "settled record behind the cursor");
			}
			ensure!(indexed.len() == count, "expiry index has stale entries");
			for (payer, n) in AllowanceCount::<T>::iter() {
				ensure!(n <= T::MaxAllowances::get(), "payer over the allowance bound");
				ensure!(
					Allowances::<T>::iter_prefix(&payer).count() as u32 == n,
					"allowance count differs from storage"
				);
			}
			Ok(())
		}
	}
}
