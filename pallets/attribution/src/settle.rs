//! Settling a batch of receipts: each receipt is verified and judged alone, in order; what the
//! settled ones owe is added up and paid once per payer and recipient when the batch ends.
//!
//! Paying at the end makes a batch of receipts that share a worker, adapter and prompt cost a
//! handful of transfers instead of several per receipt. It changes no outcome: credit and
//! allowances are checked against what is left after the batch's earlier receipts, and a
//! recipient's ability to receive is checked against its running total, so every receipt is
//! settled or rejected exactly as if it had been paid on its own. Allowances are written back,
//! and the settled requests indexed by expiry, once per batch as well.

use crate::{
	Allowances, BalanceOf, Config, DataShare, HoldReason, NextBatch, Pallet, ProtocolShare,
	RejectReason, RetrievalPrice, Settled, SettledByExpiry, SignedReceiptOf,
};
use alloc::{
	collections::{btree_map::BTreeMap, btree_set::BTreeSet},
	vec::Vec,
};
use openledger_primitives::{
	fees::{split_fee, FeeInputs, Payee, TrainingSource, WeightedItem},
	traits::{AdapterView, DataNetsInspect, PromptView, RegistryInspect, TrainingRewards, WorkerView, WorkersInspect},
	AdapterId, AttributionSource, BaseModelId, DataNetId, ItemId, PromptId, Receipt, PPM,
};
use polkadot_sdk::{
	frame_support::{
		storage::with_storage_layer,
		BoundedVec,
		traits::{
			fungible::{Inspect, InspectHold, MutateHold},
			tokens::{DepositConsequence, Fortitude, Precision, Provenance, Restriction},
			Get,
		},
		dispatch::DispatchResult,
	},
	frame_system::{self, pallet_prelude::BlockNumberFor},
	sp_core::H256,
	sp_runtime::{
		traits::{Saturating, Zero},
		Permill, SaturatedConversion,
	},
};

/// What the receipts of a batch read from the sibling pallets, and the fee parameters, each read
/// once per batch. Settling a receipt changes none of it (training rewards are noted when the
/// batch ends), so later receipts reuse what earlier ones read instead of decoding it again.
#[derive(polkadot_sdk::frame_support::DefaultNoBound)]
pub(crate) struct Lookups<T: Config> {
	/// Retrieval price, protocol share, data share.
	fee_params: Option<(BalanceOf<T>, Permill, Permill)>,
	workers: BTreeMap<T::AccountId, Option<WorkerView<BalanceOf<T>>>>,
	base_models: BTreeMap<BaseModelId, bool>,
	/// Each adapter with its training DataNets' shares and accepted counts.
	adapters: BTreeMap<AdapterId, Option<(AdapterView<T::AccountId, BalanceOf<T>>, Vec<TrainingSource>)>>,
	prompts: BTreeMap<PromptId, Option<PromptView<T::AccountId, BalanceOf<T>>>>,
	/// Each accepted item's contributor.
	items: BTreeMap<(DataNetId, ItemId), Option<T::AccountId>>,
}

/// What the settled receipts of a batch owe, not yet paid.
pub(crate) struct Batch<T: Config> {
	genesis_hash: H256,
	lookups: Lookups<T>,
	/// Each payer's credit left after the fees of its settled receipts so far.
	credit_left: BTreeMap<T::AccountId, BalanceOf<T>>,
	/// Owed by payer to recipient.
	payouts: BTreeMap<(T::AccountId, T::AccountId), BalanceOf<T>>,
	/// Each recipient's total from the batch so far.
	received: BTreeMap<T::AccountId, BalanceOf<T>>,
	/// Recipients whose account was found able to take their running total.
	can_receive: BTreeSet<T::AccountId>,
	/// Training rewards per DataNet, noted once each.
	training: BTreeMap<DataNetId, BalanceOf<T>>,
	/// Each (payer, worker) allowance read so far (`None`: none set) and whether the batch
	/// spent from it.
	allowances: BTreeMap<(T::AccountId, T::AccountId), (Option<BalanceOf<T>>, bool)>,
	/// The settled requests by expiry, indexed once per batch.
	expiring: BTreeMap<BlockNumberFor<T>, Vec<(T::AccountId, H256)>>,
}

impl<T: Config> Batch<T> {
	pub(crate) fn new(genesis_hash: H256) -> Self {
		Self {
			genesis_hash,
			lookups: Lookups::default(),
			credit_left: BTreeMap::new(),
			payouts: BTreeMap::new(),
			received: BTreeMap::new(),
			can_receive: BTreeSet::new(),
			training: BTreeMap::new(),
			allowances: BTreeMap::new(),
			expiring: BTreeMap::new(),
		}
	}

	/// Verifies `signed` and adds what it owes to the batch, or changes nothing and says why
	/// not. Returns the fee and what each recipient gets from it.
	pub(crate) fn settle(&mut self, signed: &SignedReceiptOf<T>) -> Result<Settlement<T>, RejectReason> {
		let genesis_hash = self.genesis_hash;
		let mut lookups = core::mem::take(&mut self.lookups);
		let owed = with_storage_layer(|| {
			Pallet::<T>::judge(signed, &genesis_hash, &mut lookups, |receipt, authorisation, fee, to_pay| {
				self.check_payable(receipt, authorisation, fee, to_pay)
			})
		});
		self.lookups = lookups;
		let owed = owed?;
		let Owed { payer, fee, to_pay, training, request, expires_at, authorisation } = owed;
		let credit = self.credit_left.get_mut(&payer).expect("check_payable read the payer's credit");
		*credit = credit.saturating_sub(fee);
		if authorisation == Authorisation::Allowance {
			let (left, spent) = self
				.allowances
				.get_mut(&(payer.clone(), request.0.clone()))
				.expect("check_payable read the allowance");
			*left = left.map(|left| left.saturating_sub(fee));
			*spent = true;
		}
		self.expiring.entry(expires_at).or_default().push(request);
		let payouts: Vec<_> = to_pay.into_iter().collect();
		for (account, amount) in payouts.iter().cloned() {
			let received = self.received.entry(account.clone()).or_insert_with(Zero::zero);
			*received = received.saturating_add(amount);
			let owed = self.payouts.entry((payer.clone(), account)).or_insert_with(Zero::zero);
			*owed = owed.saturating_add(amount);
		}
		for (datanet, amount) in training {
			let total = self.training.entry(datanet).or_insert_with(Zero::zero);
			*total = total.saturating_add(amount);
		}
		Ok(Settlement { fee, payouts })
	}

	/// Whether the receipt's payer authorised `fee` (if by allowance, after the batch's earlier
	/// receipts), has that much left in credit, and every recipient in `to_pay` can take its
	/// running total plus this receipt's part.
	fn check_payable(
		&mut self,
		receipt: &Receipt<T::AccountId>,
		authorisation: Authorisation,
		fee: BalanceOf<T>,
		to_pay: &BTreeMap<T::AccountId, BalanceOf<T>>,
	) -> Result<(), RejectReason> {
		let payer = &receipt.payer;
		if authorisation == Authorisation::Allowance {
			let (left, _) = *self
				.allowances
				.entry((payer.clone(), receipt.worker.clone()))
				.or_insert_with(|| (Allowances::<T>::get(payer, &receipt.worker), false));
			match left {
				None => return Err(RejectReason::NotAuthorised),
				Some(left) if fee > left => return Err(RejectReason::FeeExceedsAuthorisation),
				Some(_) => {},
			}
		}
		let credit = *self
			.credit_left
			.entry(payer.clone())
			.or_insert_with(|| T::Currency::balance_on_hold(&HoldReason::Credit.into(), payer));
		if credit < fee {
			return Err(RejectReason::InsufficientCredit);
		}
		let mut checked = Vec::new();
		for (account, amount) in to_pay {
			// A payer paid as, say, a contributor gets the credit back; nothing is deposited.
			if account == payer || self.can_receive.contains(account) {
				continue;
			}
			let total = self.received.get(account).copied().unwrap_or_else(Zero::zero).saturating_add(*amount);
			if T::Currency::can_deposit(account, total, Provenance::Extant) != DepositConsequence::Success {
				return Err(RejectReason::PayoutFailed);
			}
			checked.push(account.clone());
		}
		// Totals only grow once this receipt settles, and a larger total stays above the
		// existential deposit, so these accounts need no check again in this batch.
		self.can_receive.extend(checked);
		Ok(())
	}

	/// Pays what the batch owes: one transfer from each payer's credit to each recipient, one
	/// training note per DataNet; writes back the allowances spent and indexes the settled
	/// requests, one list per expiry. Every transfer was checked when its receipts were judged,
	/// so a failure here is a broken invariant and fails the whole call (which reverts the
	/// batch).
	pub(crate) fn pay_out(self) -> DispatchResult {
		for ((payer, worker), (left, spent)) in self.allowances {
			if let (Some(left), true) = (left, spent) {
				Allowances::<T>::insert(&payer, &worker, left);
			}
		}
		if !self.expiring.is_empty() {
			let batch = NextBatch::<T>::mutate(|next| {
				let batch = *next;
				*next = next.wrapping_add(1);
				batch
			});
			for (expires_at, requests) in self.expiring {
				// A batch settles at most `MaxReceiptsPerBatch` receipts, so nothing is cut.
				SettledByExpiry::<T>::insert(expires_at, batch, BoundedVec::truncate_from(requests));
			}
		}
		let reason = HoldReason::Credit.into();
		for ((payer, account), amount) in self.payouts {
			if account != payer {
				T::Currency::transfer_on_hold(
					&reason,
					&payer,
					&account,
					amount,
					Precision::Exact,
					Restriction::Free,
					Fortitude::Polite,
				)?;
			} else {
				T::Currency::release(&reason, &payer, amount, Precision::Exact)?;
			}
		}
		for (datanet, amount) in self.training {
			T::DataNets::note_training_reward(datanet, amount);
		}
		Ok(())
	}
}

/// A settled receipt's fee and its payouts, one per recipient account (the payer's own part,
/// if any, goes back to its free balance).
pub(crate) struct Settlement<T: Config> {
	pub fee: BalanceOf<T>,
	pub payouts: Vec<(T::AccountId, BalanceOf<T>)>,
}

/// How a receipt's payer authorised its fee.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Authorisation {
	/// A voucher for this very request, checked by `judge`.
	Voucher,
	/// The payer's allowance for the worker, checked against what the batch left of it.
	Allowance,
}

/// What one settled receipt owes.
struct Owed<T: Config> {
	payer: T::AccountId,
	fee: BalanceOf<T>,
	to_pay: BTreeMap<T::AccountId, BalanceOf<T>>,
	training: Vec<(DataNetId, BalanceOf<T>)>,
	/// The settled request: (worker, request hash).
	request: (T::AccountId, H256),
	expires_at: BlockNumberFor<T>,
	authorisation: Authorisation,
}

impl<T: Config> Pallet<T> {
	/// Verifies one receipt and works out what it owes; `payable` says whether the batch can
	/// still pay that (and checks an allowance). Writes the replay record (inside the caller's
	/// storage layer, so a rejection leaves nothing behind).
	fn judge(
		signed: &SignedReceiptOf<T>,
		genesis_hash: &H256,
		lookups: &mut Lookups<T>,
		payable: impl FnOnce(
			&Receipt<T::AccountId>,
			Authorisation,
			BalanceOf<T>,
			&BTreeMap<T::AccountId, BalanceOf<T>>,
		) -> Result<(), RejectReason>,
	) -> Result<Owed<T>, RejectReason> {
		let receipt = &signed.receipt;
		let now = frame_system::Pallet::<T>::block_number();
		let expires_at: BlockNumberFor<T> = receipt.expires_at.saturated_into();
		if expires_at < now {
			return Err(RejectReason::Expired);
		}
		if expires_at > now.saturating_add(T::MaxReceiptLifetime::get()) {
			return Err(RejectReason::ExpiryTooFar);
		}
		let request = (receipt.worker.clone(), receipt.request_hash);
		if Settled::<T>::contains_key(&request) {
			return Err(RejectReason::AlreadySettled);
		}

		let worker = lookups
			.workers
			.entry(receipt.worker.clone())
			.or_insert_with(|| T::Workers::active_worker(&receipt.worker))
			.as_ref()
			.ok_or(RejectReason::UnknownWorker)?;
		if !receipt.verify(&signed.signature, &worker.session_key, genesis_hash) {
			return Err(RejectReason::InvalidSignature);
		}
		if !worker.serves.contains(&receipt.base_model) {
			return Err(RejectReason::ModelNotServed);
		}
		if !*lookups
			.base_models
			.entry(receipt.base_model)
			.or_insert_with(|| T::Registry::base_model_active(receipt.base_model))
		{
			return Err(RejectReason::UnknownBaseModel);
		}
		let (adapter, training) = match receipt.adapter {
			Some((id, weights_hash)) => {
				let (adapter, training) = lookups
					.adapters
					.entry(id)
					.or_insert_with(|| {
						T::Registry::adapter(id).map(|adapter| {
							let training = adapter
								.provenance
								.iter()
								.map(|(datanet, share_ppm)| TrainingSource {
									datanet: *datanet,
									share_ppm: *share_ppm,
									accepted_items: T::DataNets::accepted_count(*datanet),
								})
								.collect();
							(adapter, training)
						})
					})
					.as_ref()
					.ok_or(RejectReason::UnknownAdapter)?;
				if adapter.weights_hash != weights_hash {
					return Err(RejectReason::AdapterHashMismatch);
				}
				if adapter.base_model != receipt.base_model {
					return Err(RejectReason::AdapterBaseMismatch);
				}
				(Some(adapter), &training[..])
			},
			None => (None, &[][..]),
		};
		let prompt = match receipt.prompt {
			Some((id, template_hash)) => {
				let prompt = lookups
					.prompts
					.entry(id)
					.or_insert_with(|| T::Registry::prompt(id))
					.as_ref()
					.ok_or(RejectReason::UnknownPrompt)?;
				if prompt.template_hash != template_hash {
					return Err(RejectReason::PromptHashMismatch);
				}
				Some(prompt)
			},
			None => None,
		};

		// Attribution: weights sum to PPM; items are accepted; training names the provenance.
		if !receipt.attribution.is_empty() &&
			receipt.attribution.iter().map(|e| u64::from(e.weight_ppm)).sum::<u64>() !=
				u64::from(PPM)
		{
			return Err(RejectReason::InvalidAttribution);
		}
		let mut items: Vec<WeightedItem> = Vec::new();
		let mut contributors: BTreeMap<(u32, u32), T::AccountId> = BTreeMap::new();
		for entry in receipt.attribution.iter() {
			match (entry.source, entry.item) {
				(AttributionSource::Training, None) => {
					if !training.iter().any(|source| source.datanet == entry.datanet) {
						return Err(RejectReason::InvalidTrainingEntry);
					}
				},
				(AttributionSource::Training, Some(_)) =>
					return Err(RejectReason::InvalidTrainingEntry),
				(_, None) => return Err(RejectReason::InvalidAttribution),
				(_, Some(item)) => {
					if let Some(existing) =
						items.iter_mut().find(|i| i.datanet == entry.datanet && i.item == item)
					{
						existing.weight_ppm = existing.weight_ppm.saturating_add(entry.weight_ppm);
						continue;
					}
					let contributor = lookups
						.items
						.entry((entry.datanet, item))
						.or_insert_with(|| T::DataNets::accepted_item(entry.datanet, item).map(|(contributor, _)| contributor))
						.clone()
						.ok_or(RejectReason::UnacceptedItem)?;
					contributors.insert((entry.datanet, item), contributor);
					items.push(WeightedItem {
						datanet: entry.datanet,
						item,
						weight_ppm: entry.weight_ppm,
					});
				},
			}
		}
		let (retrieval_price, protocol_share, data_share) = *lookups
			.fee_params
			.get_or_insert_with(|| (RetrievalPrice::<T>::get(), ProtocolShare::<T>::get(), DataShare::<T>::get()));
		let split = split_fee(&FeeInputs {
			tokens: receipt.total_tokens(),
			worker_rate_per_1k: worker.compute_price_per_1k_tokens,
			adapter_rate_per_1k: adapter.map_or(Zero::zero(), |a| a.price_per_1k_tokens),
			prompt_price: prompt.map_or(Zero::zero(), |p| p.price_per_call),
			retrieval_price,
			items: &items,
			training,
			protocol_share,
			data_share,
		})
		.map_err(|_| RejectReason::FeeOverflow)?;
		let fee = split.fee;

		// Authorisation: the payer's voucher for this very request, or an allowance.
		let authorisation = match &signed.voucher {
			Some(signed_voucher) => {
				let voucher = &signed_voucher.voucher;
				if voucher.payer != receipt.payer ||
					voucher.worker != receipt.worker ||
					voucher.request_hash != receipt.request_hash
				{
					return Err(RejectReason::VoucherMismatch);
				}
				let voucher_expires_at: BlockNumberFor<T> = voucher.expires_at.saturated_into();
				if voucher_expires_at < now {
					return Err(RejectReason::VoucherExpired);
				}
				if voucher_expires_at > expires_at {
					return Err(RejectReason::VoucherOutlivesReceipt);
				}
				if !voucher.verify(&signed_voucher.signature, genesis_hash) {
					return Err(RejectReason::InvalidVoucherSignature);
				}
				if fee > voucher.max_fee {
					return Err(RejectReason::FeeExceedsAuthorisation);
				}
				Authorisation::Voucher
			},
			None => Authorisation::Allowance,
		};
		// One payout per recipient account, however many parts it receives.
		let mut to_pay: BTreeMap<T::AccountId, BalanceOf<T>> = BTreeMap::new();
		let mut training = Vec::new();
		for (payee, amount) in &split.payouts {
			let account = match payee {
				Payee::Worker => receipt.worker.clone(),
				Payee::AdapterOwner =>
					adapter.map(|a| a.owner.clone()).ok_or(RejectReason::PayoutFailed)?,
				Payee::PromptOwner =>
					prompt.map(|p| p.owner.clone()).ok_or(RejectReason::PayoutFailed)?,
				Payee::TrainingPool(datanet) => {
					training.push((*datanet, *amount));
					T::DataNets::reward_pool_account()
				},
				Payee::Contributor(datanet, item) => contributors
					.get(&(*datanet, *item))
					.cloned()
					.ok_or(RejectReason::PayoutFailed)?,
				Payee::Treasury => T::Treasury::get(),
			};
			let total = to_pay.entry(account).or_insert_with(Zero::zero);
			*total = total.saturating_add(*amount);
		}
		payable(receipt, authorisation, fee, &to_pay)?;

		Settled::<T>::insert(&request, expires_at);
		Ok(Owed { payer: receipt.payer.clone(), fee, to_pay, training, request, expires_at, authorisation })
	}
}
