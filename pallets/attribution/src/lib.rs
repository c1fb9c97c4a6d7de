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
				fungible::{InspectHold, Mutate, MutateHold},
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
		/// Held from a payer for each allowance it sets, and released when it removes the
		/// allowance: what pays for the allowance's storage.
		#[pallet::constant]
		type AllowanceDeposit: Get<BalanceOf<Self>>;
		/// The most requests one worker may settle with one expiry block: bounds a record set.
		#[pallet::constant]
		type MaxSettledPerExpiry: Get<u32>;
		/// The most expired record sets (one per expiry block and worker) pruned in one block.
		/// To keep storage bounded it must be at least the sets a block can create.
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
		/// The deposits for a payer's allowances.
		#[codec(index = 1)]
		AllowanceDeposit,
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

	/// Allowance cuts waiting out a receipt's lifetime: (payer, worker) → the lowered amount and
	/// the block from which receipts settle against it. Until then they settle against the
	/// allowance as it was, so a payer cannot lower it between being served and the receipt
	/// settling; workers serve new requests within the lowered amount at once.
	#[pallet::storage]
	pub type AllowanceCuts<T: Config> = StorageDoubleMap<
		_,
		Blake2_128Concat,
		T::AccountId,
		Blake2_128Concat,
		T::AccountId,
		(BalanceOf<T>, BlockNumberFor<T>),
	>;

	/// How many allowances each payer has set; no entry for none.
	#[pallet::storage]
	pub type AllowanceCount<T: Config> =
		StorageMap<_, Blake2_128Concat, T::AccountId, u32, ValueQuery>;

	#[pallet::storage]
	pub type PendingWithdrawals<T: Config> =
		StorageMap<_, Blake2_128Concat, T::AccountId, PendingWithdrawalOf<T>>;

	/// Replay protection: the request hashes each worker settled, by the receipts' expiry block
	/// (expiry → worker → sorted hashes). A receipt is looked up under its own expiry, which a
	/// replay shares; a set is read and written once per batch, and pruned whole once its block
	/// has passed, when no receipt can name it any more.
	#[pallet::storage]
	pub type Settled<T: Config> = StorageDoubleMap<
		_,
		Twox64Concat,
		BlockNumberFor<T>,
		Blake2_128Concat,
		T::AccountId,
		BoundedVec<H256, T::MaxSettledPerExpiry>,
		ValueQuery,
	>;

	/// All payers' credit together: deposits, less claimed withdrawals, less the fees charged.
	///
	/// Fees leave the payers' credit as the payouts of their split, so `try_state` finding the
	/// credit holds summing to anything else would mean some split paid out more or less than
	/// its fee.
	#[pallet::storage]
	pub type TotalCredit<T: Config> = StorageValue<_, BalanceOf<T>, ValueQuery>;

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
		/// A payer lowered a worker's allowance: receipts settle against `amount` from block
		/// `from` on, against the allowance as it was until then.
		AllowanceCutScheduled {
			payer: T::AccountId,
			worker: T::AccountId,
			amount: BalanceOf<T>,
			from: BlockNumberFor<T>,
		},
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
				T::MaxSettledPerExpiry::get() >= T::MaxReceiptsPerBatch::get(),
				"a full batch of one worker and expiry must fit a record set"
			);
			assert!(T::MaxPrunePerBlock::get() > 0, "pruning must make progress");
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
			TotalCredit::<T>::mutate(|total| *total = total.saturating_add(amount));
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
			TotalCredit::<T>::mutate(|total| *total = total.saturating_sub(amount));
			PendingWithdrawals::<T>::remove(&payer);
			Self::deposit_event(Event::CreditWithdrawn { payer, amount });
			Ok(())
		}

		/// Sets how much `worker` may charge the caller's credit without a voucher; zero removes
		/// the allowance. A new allowance holds `AllowanceDeposit` from the caller, and removing
		/// it releases its share of what is held for allowances.
		///
		/// A raise (or a new allowance) applies at once and drops a scheduled cut. A cut (any
		/// amount below what is left, zero included) waits out `MaxReceiptLifetime`: receipts of
		/// requests served before it still settle against the allowance as it was. Once the cut
		/// binds, setting the same amount again makes it the allowance (zero: removes it and
		/// releases its deposit).
		///
		/// Emits `AllowanceSet` or `AllowanceCutScheduled`. Errors: `TooManyAllowances`,
		/// `InsufficientBalance`. O(1).
		#[pallet::call_index(3)]
		// The benchmark predates the cuts: their read and write are added until it is rerun.
		#[pallet::weight(T::WeightInfo::set_allowance().saturating_add(T::DbWeight::get().reads_writes(1, 1)))]
		pub fn set_allowance(
			origin: OriginFor<T>,
			worker: T::AccountId,
			amount: BalanceOf<T>,
		) -> DispatchResult {
			let payer = ensure_signed(origin)?;
			let current = Self::allowance(&payer, &worker);
			if let Some(left) = current {
				if amount < left {
					let from = frame_system::Pallet::<T>::block_number()
						.saturating_add(T::MaxReceiptLifetime::get());
					AllowanceCuts::<T>::insert(&payer, &worker, (amount, from));
					Self::deposit_event(Event::AllowanceCutScheduled { payer, worker, amount, from });
					return Ok(());
				}
			}
			AllowanceCuts::<T>::remove(&payer, &worker);
			let existed = current.is_some();
			let count = AllowanceCount::<T>::get(&payer);
			let deposit = HoldReason::AllowanceDeposit.into();
			if amount.is_zero() {
				if existed {
					// An equal share of what is held, and the rest with the last allowance, so a
					// changed `AllowanceDeposit` strands nothing.
					let held = T::Currency::balance_on_hold(&deposit, &payer);
					let share = if count <= 1 { held } else { held / count.into() };
					T::Currency::release(&deposit, &payer, share, Precision::Exact)?;
					Allowances::<T>::remove(&payer, &worker);
					if count <= 1 {
						AllowanceCount::<T>::remove(&payer);
					} else {
						AllowanceCount::<T>::insert(&payer, count - 1);
					}
				}
			} else {
				if !existed {
					ensure!(count < T::MaxAllowances::get(), Error::<T>::TooManyAllowances);
					T::Currency::hold(&deposit, &payer, T::AllowanceDeposit::get())
						.map_err(|_| Error::<T>::InsufficientBalance)?;
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
		/// O(receipts × (attribution entries + tool entries)).
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
		/// What is left of the payer's allowance for `worker` for settling receipts now: a
		/// scheduled cut counts once it binds. `None`: no allowance.
		pub fn allowance(payer: &T::AccountId, worker: &T::AccountId) -> Option<BalanceOf<T>> {
			let left = Allowances::<T>::get(payer, worker)?;
			Some(match AllowanceCuts::<T>::get(payer, worker) {
				Some((cut, from)) if frame_system::Pallet::<T>::block_number() >= from => left.min(cut),
				_ => left,
			})
		}

		/// The payer's credit: what is held for receipts.
		pub fn credit(payer: &T::AccountId) -> BalanceOf<T> {
			T::Currency::balance_on_hold(&HoldReason::Credit.into(), payer)
		}

		/// The weight of settling `receipts`, from the call data alone.
		///
		/// The first receipt of each context (worker, payer, adapter, prompt) is charged as a
		/// receipt alone ([`WeightInfo::submit_receipt`], which carries a voucher and reads that
		/// context cold). The first receipt of each (payer, worker) paid from an allowance, in
		/// whatever context and position, is also charged reading the allowance and writing it
		/// back when the batch ends (the batch keeps it from then on). Every further receipt of
		/// the context is charged what it adds to a batch that already read the context (the
		/// slope of [`WeightInfo::submit_receipts_shared`] for allowance receipts, of
		/// [`WeightInfo::submit_receipts_shared_vouchers`] for voucher receipts) plus its
		/// attribution and tool entries at the cold per-entry rates of `submit_receipt`, since
		/// its items and tools may be new. Each (expiry, worker) record set the batch touches is charged reading and
		/// writing a full set ([`WeightInfo::record_settled`]) and removing it when it expires
		/// (pruning is paid for when its work is made, so it always fits the block that does it).
		pub fn batch_weight(receipts: &[SignedReceiptOf<T>]) -> Weight {
			let db = T::DbWeight::get();
			let alone = |entries: u32, tools: u32| T::WeightInfo::submit_receipt(entries, tools);
			let slope = |weight: fn(u32) -> Weight| weight(2).saturating_sub(weight(1));
			let with_allowance = slope(T::WeightInfo::submit_receipts_shared);
			let with_voucher = slope(T::WeightInfo::submit_receipts_shared_vouchers);
			let record_set = Self::record_set_weight();
			let mut contexts = alloc::collections::BTreeSet::new();
			let mut allowances = alloc::collections::BTreeSet::new();
			let mut record_sets = alloc::collections::BTreeSet::new();
			let total = receipts.iter().fold(Weight::zero(), |total, signed| {
				let receipt = &signed.receipt;
				let entries = receipt.attribution.len() as u32;
				let tools = receipt.tools.len() as u32;
				let context = (
					&receipt.worker,
					&receipt.payer,
					receipt.adapter.map(|(id, _)| id),
					receipt.prompt.map(|(id, _)| id),
				);
				let voucher = signed.voucher.is_some();
				let mut weight = if contexts.insert(context) {
					alone(entries, tools)
				} else {
					(if voucher { with_voucher } else { with_allowance })
						.saturating_add(alone(entries, tools).saturating_sub(alone(0, 0)))
				};
				// The allowance and a scheduled cut read, the allowance written back.
				if !voucher && allowances.insert((&receipt.payer, &receipt.worker)) {
					weight = weight.saturating_add(db.reads_writes(2, 1));
				}
				if record_sets.insert((receipt.expires_at, &receipt.worker)) {
					weight = weight.saturating_add(record_set);
				}
				total.saturating_add(weight)
			});
			if receipts.is_empty() {
				alone(0, 0)
			} else {
				total
			}
		}

		/// What a batch is charged for each (expiry, worker) record set it touches: reading and
		/// writing a full set, and removing it when it expires.
		pub fn record_set_weight() -> Weight {
			T::WeightInfo::record_settled(T::MaxSettledPerExpiry::get())
				.saturating_add(Self::prune_weight(1, 0).saturating_sub(Self::prune_weight(0, 0)))
		}

		/// Removes the record sets that expired before `now`.
		///
		/// `MaxPrunePerBlock` bounds the work: each set removed and each expiry block passed
		/// counts one against it.
		pub(crate) fn prune_expired(now: BlockNumberFor<T>) -> Weight {
			let budget = T::MaxPrunePerBlock::get();
			let mut cursor = PruneCursor::<T>::get();
			let (mut sets, mut blocks) = (0u32, 0u32);
			// Sets expiring at block `b` can be removed from block `b + 1` on.
			'blocks: while cursor < now {
				// One iterator per block, each set removed as it is passed: a fresh iterator
				// after each removal would seek past every key already removed in this block.
				let mut workers = Settled::<T>::iter_key_prefix(cursor);
				loop {
					if sets + blocks >= budget {
						break 'blocks;
					}
					match workers.next() {
						Some(worker) => {
							Settled::<T>::remove(cursor, &worker);
							sets += 1;
						},
						None => break,
					}
				}
				cursor = cursor.saturating_add(One::one());
				blocks += 1;
			}
			PruneCursor::<T>::put(cursor);
			Self::prune_weight(sets, blocks)
		}

		/// The weight of removing `sets` record sets and passing `blocks` expiry blocks.
		pub fn prune_weight(sets: u32, blocks: u32) -> Weight {
			let per_block = T::WeightInfo::prune(0);
			T::WeightInfo::prune(sets).saturating_add(per_block.saturating_mul(u64::from(blocks)))
		}

		/// Invariants: every record set is sorted, without duplicates, not empty, and expires no
		/// earlier than the prune cursor; allowance counts match the allowances, and a payer has
		/// allowance deposits held exactly when it has allowances; the credit held
		/// from all accounts is `TotalCredit`, so every fee charged was paid out exactly.
		#[cfg(any(feature = "try-runtime", feature = "std"))]
		pub fn do_try_state() -> Result<(), polkadot_sdk::sp_runtime::TryRuntimeError> {
			let cursor = PruneCursor::<T>::get();
			// A receipt expires at most `MaxReceiptLifetime` ahead, so no record set is kept for a
			// later block.
			let latest = frame_system::Pallet::<T>::block_number().saturating_add(T::MaxReceiptLifetime::get());
			for (expires_at, _, requests) in Settled::<T>::iter() {
				ensure!(!requests.is_empty(), "an empty record set is stored");
				ensure!(requests.windows(2).all(|w| w[0] < w[1]), "a record set is not strictly sorted");
				ensure!(expires_at >= cursor, "a record set is behind the prune cursor");
				ensure!(expires_at <= latest, "a record set expires beyond the receipt lifetime");
			}
			for (payer, n) in AllowanceCount::<T>::iter() {
				ensure!(n > 0, "a zero allowance count is stored");
				ensure!(n <= T::MaxAllowances::get(), "payer over the allowance bound");
				ensure!(
					Allowances::<T>::iter_prefix(&payer).count() as u32 == n,
					"allowance count differs from storage"
				);
			}
			for (payer, _) in Allowances::<T>::iter_keys() {
				ensure!(AllowanceCount::<T>::contains_key(&payer), "allowances without a count");
			}
			let hold_ends = frame_system::Pallet::<T>::block_number().saturating_add(T::MaxReceiptLifetime::get());
			for (payer, worker, (_, from)) in AllowanceCuts::<T>::iter() {
				ensure!(Allowances::<T>::contains_key(&payer, &worker), "a cut outlived its allowance");
				ensure!(from <= hold_ends, "a cut waits longer than a receipt's lifetime");
			}
			// One pass over every account for both kinds of hold.
			let mut credit_held = BalanceOf::<T>::zero();
			for who in frame_system::Account::<T>::iter_keys() {
				credit_held = credit_held.saturating_add(Self::credit(&who));
				let deposits = T::Currency::balance_on_hold(&HoldReason::AllowanceDeposit.into(), &who);
				let count = AllowanceCount::<T>::get(&who);
				ensure!(count > 0 || deposits.is_zero(), "an allowance deposit is held without allowances");
				ensure!(
					count == 0 || !deposits.is_zero() || T::AllowanceDeposit::get().is_zero(),
					"allowances without their deposit"
				);
			}
			ensure!(
				credit_held == TotalCredit::<T>::get(),
				"the credit held differs from deposits less withdrawals and fees"
			);
			Ok(())
		}
	}
}
