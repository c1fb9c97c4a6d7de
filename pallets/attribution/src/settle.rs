//! Verifying one receipt and paying its fee out.

use crate::{
	BalanceOf, Config, HoldReason, Pallet, RejectReason, RetrievalPrice, Settled, SettledByExpiry,
	SignedReceiptOf, Allowances, DataShare, ProtocolShare,
};
use alloc::{collections::btree_map::BTreeMap, vec::Vec};
use openledger_primitives::{
	fees::{split_fee, FeeInputs, Payee, TrainingSource, WeightedItem},
	traits::{DataNetsInspect, RegistryInspect, TrainingRewards, WorkersInspect},
	AttributionSource, PPM,
};
use polkadot_sdk::{
	frame_support::{
		storage::with_storage_layer,
		traits::{
			fungible::{InspectHold, MutateHold},
			tokens::{Fortitude, Precision, Restriction},
			Get,
		},
	},
	frame_system::{self, pallet_prelude::BlockNumberFor},
	sp_core::H256,
	sp_runtime::{
		traits::{Saturating, Zero},
		SaturatedConversion,
	},
};

impl<T: Config> Pallet<T> {
	/// Verifies `signed` and pays its fee out, or changes nothing and says why not.
	pub(crate) fn settle(
		signed: &SignedReceiptOf<T>,
		genesis_hash: &H256,
	) -> Result<BalanceOf<T>, RejectReason> {
		with_storage_layer(|| Self::try_settle(signed, genesis_hash))
	}

	fn try_settle(
		signed: &SignedReceiptOf<T>,
		genesis_hash: &H256,
	) -> Result<BalanceOf<T>, RejectReason> {
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
				if voucher.expires_at.saturated_into::<BlockNumberFor<T>>() < now {
					return Err(RejectReason::VoucherExpired);
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
		let reason = HoldReason::Credit.into();
		if T::Currency::balance_on_hold(&reason, &receipt.payer) < fee {
			return Err(RejectReason::InsufficientCredit);
		}

		// One transfer per recipient account, however many parts it receives.
		let mut to_pay: BTreeMap<T::AccountId, BalanceOf<T>> = BTreeMap::new();
		for (payee, amount) in &split.payouts {
			let account = match payee {
				Payee::Worker => receipt.worker.clone(),
				Payee::AdapterOwner =>
					adapter.as_ref().map(|a| a.owner.clone()).ok_or(RejectReason::PayoutFailed)?,
				Payee::PromptOwner =>
					prompt.as_ref().map(|p| p.owner.clone()).ok_or(RejectReason::PayoutFailed)?,
				Payee::TrainingPool(datanet) => {
					T::DataNets::note_training_reward(*datanet, *amount);
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
		for (account, amount) in to_pay {
			if account != receipt.payer {
				T::Currency::transfer_on_hold(
					&reason,
					&receipt.payer,
					&account,
					amount,
					Precision::Exact,
					Restriction::Free,
					Fortitude::Polite,
				)?;
			} else {
				// A payer paid as, say, a contributor simply gets the credit back.
				T::Currency::release(&reason, &receipt.payer, amount, Precision::Exact)?;
			}
		}

		Settled::<T>::insert(&request, expires_at);
		SettledByExpiry::<T>::insert(expires_at, &request, ());
		Ok(fee)
	}
}
