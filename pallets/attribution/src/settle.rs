//! Settling a batch of receipts: each receipt is verified and judged alone, in order; what the
//! settled ones owe is added up and paid once per payer and recipient when the batch ends.
//!
//! Paying at the end makes a batch of receipts that share a worker, adapter and prompt cost a
//! handful of transfers instead of several per receipt. It changes no outcome: credit is checked
//! against what the payer has left after the batch's earlier receipts, and a recipient's ability
//! to receive is checked against its running total, so every receipt is settled or rejected
//! exactly as if it had been paid on its own.

use crate::{
	BalanceOf, Config, HoldReason, Pallet, RejectReason, RetrievalPrice, Settled, SettledByExpiry,
	SignedReceiptOf, Allowances, DataShare, ProtocolShare,
};
use alloc::{
	collections::{btree_map::BTreeMap, btree_set::BTreeSet},
	vec::Vec,
};
use openledger_primitives::{
	fees::{split_fee, FeeInputs, Payee, TrainingSource, WeightedItem},
	traits::{DataNetsInspect, RegistryInspect, TrainingRewards, WorkersInspect},
	AttributionSource, DataNetId, PPM,
};
use polkadot_sdk::{
	frame_support::{
		storage::with_storage_layer,
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
		SaturatedConversion,
	},
};

/// What the settled receipts of a batch owe, not yet paid.
pub(crate) struct Batch<T: Config> {
	genesis_hash: H256,
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
}

impl<T: Config> Batch<T> {
	pub(crate) fn new(genesis_hash: H256) -> Self {
		Self {
			genesis_hash,
			credit_left: BTreeMap::new(),
			payouts: BTreeMap::new(),
			received: BTreeMap::new(),
			can_receive: BTreeSet::new(),
			training: BTreeMap::new(),
		}
	}

	/// Verifies `signed` and adds what it owes to the batch, or changes nothing and says why
	/// not. Returns the fee and what each recipient gets from it.
	pub(crate) fn settle(&mut self, signed: &SignedReceiptOf<T>) -> Result<Settlement<T>, RejectReason> {
		let genesis_hash = self.genesis_hash;
		let owed = with_storage_layer(|| {
			Pallet::<T>::judge(signed, &genesis_hash, |payer, fee, to_pay| self.check_payable(payer, fee, to_pay))
		})?;
		let Owed { payer, fee, to_pay, training } = owed;
		let credit = self.credit_left.get_mut(&payer).expect("check_payable read the payer's credit");
		*credit = credit.saturating_sub(fee);
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

	/// Whether `payer` has `fee` left in credit and every recipient in `to_pay` can take its
	/// running total plus this receipt's part.
	fn check_payable(
		&mut self,
		payer: &T::AccountId,
		fee: BalanceOf<T>,
		to_pay: &BTreeMap<T::AccountId, BalanceOf<T>>,
	) -> Result<(), RejectReason> {
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
	/// training note per DataNet. Every transfer was checked when its receipts were judged, so a
	/// failure here is a broken invariant and fails the whole call (which reverts the batch).
	pub(crate) fn pay_out(self) -> DispatchResult {
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

/// What one settled receipt owes.
struct Owed<T: Config> {
	payer: T::AccountId,
	fee: BalanceOf<T>,
	to_pay: BTreeMap<T::AccountId, BalanceOf<T>>,
	training: Vec<(DataNetId, BalanceOf<T>)>,
}

impl<T: Config> Pallet<T> {
	/// Verifies one receipt and works out what it owes; `payable` says whether the batch can
	/// still pay that. Writes the replay record and any allowance change (inside the caller's
	/// storage layer, so a rejection leaves nothing behind).
	fn judge(
		signed: &SignedReceiptOf<T>,
		genesis_hash: &H256,
		payable: impl FnOnce(&T::AccountId, BalanceOf<T>, &BTreeMap<T::AccountId, BalanceOf<T>>) -> Result<(), RejectReason>,
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

		let worker = T::Workers::active_worker(&receipt.worker).ok_or(RejectReason::UnknownWorker)?;
		if !receipt.verify(&signed.signature, &worker.session_key, genesis_hash) {
			return Err(RejectReason::InvalidSignature);
		}
		if !worker.serves.contains(&receipt.base_model) {
			return Err(RejectReason::ModelNotServed);
		}
		if !T::Registry::base_model_active(receipt.base_model) {
			return Err(RejectReason::UnknownBaseModel);
		}
		let adapter = match receipt.adapter {
			Some((id, weights_hash)) => {
				let adapter = T::Registry::adapter(id).ok_or(RejectReason::UnknownAdapter)?;
				if adapter.weights_hash != weights_hash {
					return Err(RejectReason::AdapterHashMismatch);
				}
				if adapter.base_model != receipt.base_model {
					return Err(RejectReason::AdapterBaseMismatch);
				}
				Some(adapter)
			},
			None => None,
		};
		let prompt = match receipt.prompt {
			Some((id, template_hash)) => {
				let prompt = T::Registry::prompt(id).ok_or(RejectReason::UnknownPrompt)?;
				if prompt.template_hash != template_hash {
					return Err(RejectReason::PromptHashMismatch);
				}
				Some(prompt)
			},
			None => None,
		};

		// Attribution: weights sum to PPM; items are accepted; training names the provenance.
		let provenance: &[(u32, u32)] = adapter.as_ref().map_or(&[], |a| &a.provenance[..]);
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
					if !provenance.iter().any(|(datanet, _)| *datanet == entry.datanet) {
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
					let (contributor, _) = T::DataNets::accepted_item(entry.datanet, item)
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
		let training: Vec<TrainingSource> = provenance
			.iter()
			.map(|(datanet, share_ppm)| TrainingSource {
				datanet: *datanet,
				share_ppm: *share_ppm,
				accepted_items: T::DataNets::accepted_count(*datanet),
			})
			.collect();

		let split = split_fee(&FeeInputs {
			tokens: receipt.total_tokens(),
			worker_rate_per_1k: worker.compute_price_per_1k_tokens,
			adapter_rate_per_1k: adapter.as_ref().map_or(Zero::zero(), |a| a.price_per_1k_tokens),
			prompt_price: prompt.as_ref().map_or(Zero::zero(), |p| p.price_per_call),
			retrieval_price: RetrievalPrice::<T>::get(),
			items: &items,
			training: &training,
			protocol_share: ProtocolShare::<T>::get(),
			data_share: DataShare::<T>::get(),
		})
		.map_err(|_| RejectReason::FeeOverflow)?;
		let fee = split.fee;

		// Authorisation: the payer's voucher for this very request, or an allowance.
		match &signed.voucher {
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
			},
			None => {
				let allowance = Allowances::<T>::get(&receipt.payer, &receipt.worker)
					.ok_or(RejectReason::NotAuthorised)?;
				if fee > allowance {
					return Err(RejectReason::FeeExceedsAuthorisation);
				}
				Allowances::<T>::insert(&receipt.payer, &receipt.worker, allowance - fee);
			},
		}
		// One payout per recipient account, however many parts it receives.
		let mut to_pay: BTreeMap<T::AccountId, BalanceOf<T>> = BTreeMap::new();
		let mut training = Vec::new();
		for (payee, amount) in &split.payouts {
			let account = match payee {
				Payee::Worker => receipt.worker.clone(),
				Payee::AdapterOwner =>
					adapter.as_ref().map(|a| a.owner.clone()).ok_or(RejectReason::PayoutFailed)?,
				Payee::PromptOwner =>
					prompt.as_ref().map(|p| p.owner.clone()).ok_or(RejectReason::PayoutFailed)?,
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
		payable(&receipt.payer, fee, &to_pay)?;

		Settled::<T>::insert(&request, expires_at);
		SettledByExpiry::<T>::insert(expires_at, &request, ());
		Ok(Owed { payer: receipt.payer.clone(), fee, to_pay, training })
	}
}
