//! Settling a batch of receipts: each receipt is verified and judged alone, in order; what the
//! settled ones owe is added up and paid once per payer and recipient when the batch ends.
//!
//! Paying at the end makes a batch of receipts that share a worker, adapter and prompt cost a
//! handful of transfers instead of several per receipt. It changes no outcome: credit and
//! allowances are checked against what is left after the batch's earlier receipts, and each
//! transfer is checked as it will be made (one payer's running total to one recipient, against
//! the recipient's account as the batch found it), so no transfer can fail when the batch pays
//! and a receipt that could not be paid is rejected alone. Allowances and each worker's
//! record set of settled requests are read once and written back once per batch as well.

use crate::{
	Allowances, BalanceOf, Config, DataShare, HoldReason, Pallet, ProtocolShare, RejectReason,
	RetrievalPrice, Settled, SignedReceiptOf, TotalCredit,
};
use alloc::{
	collections::{btree_map::BTreeMap, btree_set::BTreeSet},
	vec::Vec,
};
use openledger_primitives::{
	fees::{split_fee, FeeInputs, Payee, ToolCharge, TrainingSource, WeightedItem},
	traits::{
		AdapterView, DataNetsInspect, PromptView, RegistryInspect, ToolView, TrainingRewards, WorkerView, WorkersInspect,
	},
	AdapterId, AttributionSource, BaseModelId, DataNetId, ItemId, PromptId, Receipt, ToolId, PPM,
};
use polkadot_sdk::{
	frame_support::{
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
	tools: BTreeMap<ToolId, Option<ToolView<T::AccountId, BalanceOf<T>>>>,
	/// Each accepted item's contributor.
	items: BTreeMap<(DataNetId, ItemId), Option<T::AccountId>>,
}

/// What the settled receipts of a batch owe, not yet paid.
pub(crate) struct Batch<T: Config> {
	genesis_hash: H256,
	lookups: Lookups<T>,
	/// Each payer's credit left after the fees of its settled receipts so far.
	credit_left: BTreeMap<T::AccountId, BalanceOf<T>>,
	/// The fees of all receipts settled so far.
	charged: BalanceOf<T>,
	/// Owed by payer to recipient: one transfer each when the batch pays.
	payouts: BTreeMap<(T::AccountId, T::AccountId), BalanceOf<T>>,
	/// (payer, recipient) transfers found payable at their running total.
	can_receive: BTreeSet<(T::AccountId, T::AccountId)>,
	/// Training rewards per DataNet, noted once each.
	training: BTreeMap<DataNetId, BalanceOf<T>>,
	/// Each (payer, worker) allowance read so far (`None`: none set) and whether the batch
	/// spent from it.
	allowances: BTreeMap<(T::AccountId, T::AccountId), (Option<BalanceOf<T>>, bool)>,
	/// The record sets the batch's receipts were checked against and settled into, by expiry
	/// block and worker.
	settled: BTreeMap<(BlockNumberFor<T>, T::AccountId), RecordSet<T>>,
}

/// A worker's requests settled with one expiry block: the stored set, read once per batch, and
/// what the batch adds to it, merged and written back when the batch ends.
pub(crate) struct RecordSet<T: Config> {
	stored: BoundedVec<H256, T::MaxSettledPerExpiry>,
	added: BTreeSet<H256>,
}

impl<T: Config> RecordSet<T> {
	pub(crate) fn load(expires_at: BlockNumberFor<T>, worker: &T::AccountId) -> Self {
		Self { stored: Settled::<T>::get(expires_at, worker), added: BTreeSet::new() }
	}

	pub(crate) fn contains(&self, request: &H256) -> bool {
		self.stored.binary_search(request).is_ok() || self.added.contains(request)
	}

	pub(crate) fn is_full(&self) -> bool {
		self.stored.len() + self.added.len() >= T::MaxSettledPerExpiry::get() as usize
	}

	/// Adds a request the caller found neither in the set nor over its bound.
	pub(crate) fn insert(&mut self, request: H256) {
		self.added.insert(request);
	}

	/// Writes the set back, still sorted, if the batch added to it.
	pub(crate) fn store(self, expires_at: BlockNumberFor<T>, worker: &T::AccountId) {
		if self.added.is_empty() {
			return;
		}
		let mut merged = Vec::with_capacity(self.stored.len() + self.added.len());
		let mut added = self.added.into_iter().peekable();
		for request in self.stored {
			while let Some(new) = added.next_if(|new| *new < request) {
				merged.push(new);
			}
			merged.push(request);
		}
		merged.extend(added);
		// `is_full` kept the set within its bound, so nothing is cut.
		Settled::<T>::insert(expires_at, worker, BoundedVec::truncate_from(merged));
	}
}

impl<T: Config> Batch<T> {
	pub(crate) fn new(genesis_hash: H256) -> Self {
		Self {
			genesis_hash,
			lookups: Lookups::default(),
			credit_left: BTreeMap::new(),
			charged: Zero::zero(),
			payouts: BTreeMap::new(),
			can_receive: BTreeSet::new(),
			training: BTreeMap::new(),
			allowances: BTreeMap::new(),
			settled: BTreeMap::new(),
		}
	}

	/// Verifies `signed` and adds what it owes to the batch, or changes nothing and says why
	/// not. Returns the fee and what each recipient gets from it.
	pub(crate) fn settle(&mut self, signed: &SignedReceiptOf<T>) -> Result<Settlement<T>, RejectReason> {
		let receipt = &signed.receipt;
		let now = frame_system::Pallet::<T>::block_number();
		let expires_at: BlockNumberFor<T> = receipt.expires_at.saturated_into();
		if expires_at < now {
			return Err(RejectReason::Expired);
		}
		if expires_at > now.saturating_add(T::MaxReceiptLifetime::get()) {
			return Err(RejectReason::ExpiryTooFar);
		}
		let set_key = (expires_at, receipt.worker.clone());
		let set = self
			.settled
			.entry(set_key.clone())
			.or_insert_with(|| RecordSet::load(expires_at, &receipt.worker));
		// A replay carries the same expiry, so it is found in the same set.
		if set.contains(&receipt.request_hash) {
			return Err(RejectReason::AlreadySettled);
		}
		if set.is_full() {
			return Err(RejectReason::ExpiryFull);
		}
		let Owed { fee, to_pay, training, authorisation } =
			Pallet::<T>::judge(signed, expires_at, &self.genesis_hash, &mut self.lookups)?;
		self.check_payable(receipt, authorisation, fee, &to_pay)?;
		self.settled.get_mut(&set_key).expect("loaded above").insert(receipt.request_hash);

		let payer = &receipt.payer;
		let credit = self.credit_left.get_mut(payer).expect("check_payable read the payer's credit");
		*credit = credit.saturating_sub(fee);
		self.charged = self.charged.saturating_add(fee);
		if authorisation == Authorisation::Allowance {
			let (left, spent) = self
				.allowances
				.get_mut(&(payer.clone(), receipt.worker.clone()))
				.expect("check_payable read the allowance");
			*left = left.map(|left| left.saturating_sub(fee));
			*spent = true;
		}
		let payouts: Vec<_> = to_pay.into_iter().collect();
		for (account, amount) in payouts.iter().cloned() {
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
	/// receipts), has that much left in credit, and every recipient in `to_pay` can take the
	/// payer's transfer to it with this receipt's part added. Each transfer is checked alone
	/// against the account as it is before the batch: a recipient that does not exist yet must get
	/// at least the existential deposit from each payer, whatever others send it, so the batch's
	/// transfers can be made in any order.
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
				.or_insert_with(|| (Pallet::<T>::allowance(payer, &receipt.worker), false));
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
			let transfer = (payer.clone(), account.clone());
			// A payer paid as, say, a contributor gets the credit back; nothing is deposited.
			if account == payer || self.can_receive.contains(&transfer) {
				continue;
			}
			let total = self.payouts.get(&transfer).copied().unwrap_or_else(Zero::zero).saturating_add(*amount);
			if T::Currency::can_deposit(account, total, Provenance::Extant) != DepositConsequence::Success {
				return Err(RejectReason::PayoutFailed);
			}
			checked.push(transfer);
		}
		// Totals only grow once this receipt settles, and a larger total stays above the
		// existential deposit, so these transfers need no check again in this batch.
		self.can_receive.extend(checked);
		Ok(())
	}

	/// Pays what the batch owes: one transfer from each payer's credit to each recipient, one
	/// training note per DataNet; writes back the allowances spent, the record sets added to and
	/// the total credit left. Every transfer was checked when its receipts were judged,
	/// so a failure here is a broken invariant and fails the whole call (which reverts the
	/// batch).
	pub(crate) fn pay_out(self) -> DispatchResult {
		for ((payer, worker), (left, spent)) in self.allowances {
			if let (Some(left), true) = (left, spent) {
				Allowances::<T>::insert(&payer, &worker, left);
			}
		}
		for ((expires_at, worker), set) in self.settled {
			set.store(expires_at, &worker);
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
		if !self.charged.is_zero() {
			TotalCredit::<T>::mutate(|total| *total = total.saturating_sub(self.charged));
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
	fee: BalanceOf<T>,
	to_pay: BTreeMap<T::AccountId, BalanceOf<T>>,
	training: Vec<(DataNetId, BalanceOf<T>)>,
	authorisation: Authorisation,
}

impl<T: Config> Pallet<T> {
	/// Verifies one receipt, unexpired and not settled before, against the chain and works out
	/// what it owes. Reads only: whether the batch can pay it is the batch's to judge.
	fn judge(
		signed: &SignedReceiptOf<T>,
		expires_at: BlockNumberFor<T>,
		genesis_hash: &H256,
		lookups: &mut Lookups<T>,
	) -> Result<Owed<T>, RejectReason> {
		let receipt = &signed.receipt;
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
		// Tools: each named once, with at least one call, and registered.
		let mut tools: Vec<ToolCharge<BalanceOf<T>>> = Vec::with_capacity(receipt.tools.len());
		let mut tool_owners: BTreeMap<ToolId, T::AccountId> = BTreeMap::new();
		for used in receipt.tools.iter() {
			if used.calls == 0 || tool_owners.contains_key(&used.tool) {
				return Err(RejectReason::InvalidToolEntry);
			}
			let tool = lookups
				.tools
				.entry(used.tool)
				.or_insert_with(|| T::Registry::tool(used.tool))
				.as_ref()
				.ok_or(RejectReason::UnknownTool)?;
			tool_owners.insert(used.tool, tool.owner.clone());
			tools.push(ToolCharge { tool: used.tool, calls: used.calls, price_per_call: tool.price_per_call });
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
			tools: &tools,
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
				// Equal to the receipt's expiry, so the voucher is unexpired too.
				if BlockNumberFor::<T>::saturated_from(voucher.expires_at) != expires_at {
					return Err(RejectReason::ExpiryDiffersFromVoucher);
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
				Payee::ToolOwner(tool) => tool_owners.get(tool).cloned().ok_or(RejectReason::PayoutFailed)?,
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
		Ok(Owed { fee, to_pay, training, authorisation })
	}
}
