//! Behaviour of the attribution pallet: credit, authorisation, and every way a receipt is
//! settled or rejected, with balances asserted after each step.

use crate::{
	mock::*, AllowanceCuts, Allowances, AllowanceCount, DataShare, Error, Event, HoldReason, PendingWithdrawals,
	PruneCursor, RejectReason, RetrievalPrice, Settled, TotalCredit,
};
use openledger_primitives::{
	content_hash, signing_payload, Receipt, SignedReceipt,
	SignedVoucher, ToolUse, Voucher, RECEIPT_DOMAIN, VOUCHER_DOMAIN,
};
use polkadot_sdk::{
	frame_support::{
		assert_noop, assert_ok,
		traits::{
			fungible::{Inspect, InspectHold, MutateHold},
			tokens::{Fortitude, Precision, Restriction},
			Hooks,
		},
		BoundedVec,
	},
	sp_core::{sr25519, Pair, H256},
	sp_runtime::{DispatchError, Permill},
};

fn credit(who: &AccountId) -> Balance {
	Balances::balance_on_hold(&HoldReason::Credit.into(), who)
}

fn batch(receipts: Vec<SignedReceipt<AccountId, Balance>>) -> BoundedVec<SignedReceipt<AccountId, Balance>, MaxReceiptsPerBatch> {
	BoundedVec::truncate_from(receipts)
}

fn submit(who: &AccountId, receipts: Vec<SignedReceipt<AccountId, Balance>>) {
	assert_ok!(Attribution::submit_receipts(RuntimeOrigin::signed(who.clone()), batch(receipts)));
}

fn last_reason() -> Option<RejectReason> {
	System::events().into_iter().rev().find_map(|record| match record.event {
		RuntimeEvent::Attribution(Event::ReceiptRejected { reason, .. }) => Some(reason),
		_ => None,
	})
}

/// Balances of everyone a receipt could pay, to check that a rejected one paid nothing.
fn snapshot() -> Vec<Balance> {
	everyone().iter().map(|who| Balances::total_balance(who)).collect()
}

#[test]
fn deposit_holds_credit() {
	run(|| {
		let payer = account(Role::Payer);
		let before = Balances::balance(&payer);
		assert_ok!(Attribution::deposit(RuntimeOrigin::signed(payer.clone()), 500));
		assert_eq!(credit(&payer), CREDIT + 500);
		assert_eq!(Balances::balance(&payer), before - 500);
		System::assert_last_event(Event::CreditDeposited { payer: payer.clone(), amount: 500 }.into());
		assert_noop!(Attribution::deposit(RuntimeOrigin::none(), 5), DispatchError::BadOrigin);
		assert_noop!(Attribution::deposit(RuntimeOrigin::signed(payer.clone()), 0), Error::<Test>::ZeroAmount);
		assert_noop!(Attribution::deposit(RuntimeOrigin::signed(payer), ENDOWMENT * 10), Error::<Test>::InsufficientBalance);
	});
}

#[test]
fn withdrawal_waits_out_the_delay() {
	run(|| {
		let payer = account(Role::Payer);
		let signed = RuntimeOrigin::signed(payer.clone());
		assert_noop!(Attribution::withdraw(RuntimeOrigin::none(), 5), DispatchError::BadOrigin);
		assert_noop!(Attribution::withdraw(signed.clone(), 0), Error::<Test>::ZeroAmount);
		assert_noop!(Attribution::withdraw(signed.clone(), CREDIT + 1), Error::<Test>::InsufficientCredit);
		assert_noop!(Attribution::claim_withdrawal(signed.clone()), Error::<Test>::NoPendingWithdrawal);
		assert_ok!(Attribution::withdraw(signed.clone(), 1_000));
		let unlock_at = 1 + WITHDRAWAL_DELAY;
		System::assert_last_event(Event::WithdrawalScheduled { payer: payer.clone(), amount: 1_000, unlock_at }.into());
		assert_noop!(Attribution::claim_withdrawal(signed.clone()), Error::<Test>::WithdrawalLocked);
		assert_noop!(Attribution::claim_withdrawal(RuntimeOrigin::none()), DispatchError::BadOrigin);
		System::set_block_number(unlock_at);
		let free = Balances::balance(&payer);
		assert_ok!(Attribution::claim_withdrawal(signed));
		assert_eq!(credit(&payer), CREDIT - 1_000);
		assert_eq!(Balances::balance(&payer), free + 1_000);
		assert!(PendingWithdrawals::<Test>::get(&payer).is_none());
		System::assert_last_event(Event::CreditWithdrawn { payer, amount: 1_000 }.into());
	});
}

#[test]
fn credit_withdrawal_still_pays_receipts_during_the_delay() {
	run(|| {
		let payer = account(Role::Payer);
		assert_ok!(Attribution::withdraw(RuntimeOrigin::signed(payer.clone()), CREDIT));
		submit(&account(Role::Worker), vec![sign(receipt(1))]);
		assert_eq!(credit(&payer), CREDIT - EXPECTED_FEE);
		System::set_block_number(1 + WITHDRAWAL_DELAY);
		assert_ok!(Attribution::claim_withdrawal(RuntimeOrigin::signed(payer.clone())));
		// Only what was left is released.
		assert_eq!(credit(&payer), 0);
		System::assert_last_event(Event::CreditWithdrawn { payer, amount: CREDIT - EXPECTED_FEE }.into());
	});
}

#[test]
fn allowances_are_set_removed_and_bounded() {
	run(|| {
		let payer = account(Role::Payer);
		let signed = RuntimeOrigin::signed(payer.clone());
		assert_noop!(Attribution::set_allowance(RuntimeOrigin::none(), account(Role::Worker), 5), DispatchError::BadOrigin);
		assert_ok!(Attribution::set_allowance(signed.clone(), account(Role::Other), 5));
		System::assert_last_event(Event::AllowanceSet { payer: payer.clone(), worker: account(Role::Other), amount: 5 }.into());
		assert_eq!(AllowanceCount::<Test>::get(&payer), 2);
		assert_noop!(Attribution::set_allowance(signed.clone(), account(Role::Treasury), 5), Error::<Test>::TooManyAllowances);
		// Changing an existing allowance is not a new one.
		assert_ok!(Attribution::set_allowance(signed.clone(), account(Role::Other), 7));
		assert_eq!(deposits(&payer), 2 * ALLOWANCE_DEPOSIT);
		cut_allowance(&payer, account(Role::Other), 0);
		assert!(Allowances::<Test>::get(&payer, account(Role::Other)).is_none());
		assert_eq!(AllowanceCount::<Test>::get(&payer), 1);
		assert_eq!(deposits(&payer), ALLOWANCE_DEPOSIT);
		// Removing one that is not there changes nothing.
		assert_ok!(Attribution::set_allowance(signed.clone(), account(Role::Other), 0));
		assert_eq!((AllowanceCount::<Test>::get(&payer), deposits(&payer)), (1, ALLOWANCE_DEPOSIT));
		assert_ok!(Attribution::set_allowance(signed, account(Role::Treasury), 5));
	});
}

/// Lowers `payer`'s allowance for `worker` to `amount` and lets the cut bind: a receipt's lifetime
/// later the same call makes it the allowance (zero: removes it). The clock then goes back, so
/// the test's receipts are still live.
fn cut_allowance(payer: &AccountId, worker: AccountId, amount: Balance) {
	let origin = || RuntimeOrigin::signed(payer.clone());
	assert_ok!(Attribution::set_allowance(origin(), worker.clone(), amount));
	let now = System::block_number();
	System::set_block_number(now + MAX_LIFETIME);
	assert_ok!(Attribution::set_allowance(origin(), worker.clone(), amount));
	assert!(!AllowanceCuts::<Test>::contains_key(payer, &worker));
	System::set_block_number(now);
}

/// A payer served from its allowance lowers it to zero before the receipt settles: the receipt
/// still settles against the allowance as it was. Once the cut binds (a receipt's lifetime
/// later) receipts settle against the lowered amount, and the same call removes the allowance.
#[test]
fn an_allowance_cut_waits_out_the_receipt_lifetime() {
	run(|| {
		let (payer, worker) = (account(Role::Payer), account(Role::Worker));
		let origin = || RuntimeOrigin::signed(payer.clone());
		let served = sign(receipt(1));
		let cut_at = System::block_number();
		assert_ok!(Attribution::set_allowance(origin(), worker.clone(), 0));
		System::assert_last_event(
			Event::AllowanceCutScheduled { payer: payer.clone(), worker: worker.clone(), amount: 0, from: cut_at + MAX_LIFETIME }
				.into(),
		);
		assert_eq!(Allowances::<Test>::get(&payer, &worker), Some(ALLOWANCE));
		submit(&worker, vec![served]);
		assert_eq!(last_fee(), Some(EXPECTED_FEE), "{:?}", last_reason());
		assert_eq!(Allowances::<Test>::get(&payer, &worker), Some(ALLOWANCE - EXPECTED_FEE));

		System::set_block_number(cut_at + MAX_LIFETIME);
		let mut later = receipt(2);
		later.expires_at = (cut_at + MAX_LIFETIME + 10) as u32;
		assert_rejected(sign(later), RejectReason::FeeExceedsAuthorisation);
		assert_ok!(Attribution::set_allowance(origin(), worker.clone(), 0));
		assert_eq!(Allowances::<Test>::get(&payer, &worker), None);
		assert!(!AllowanceCuts::<Test>::contains_key(&payer, &worker));
		assert_eq!(deposits(&payer), 0);
	});
}

#[test]
fn a_raise_applies_at_once_and_drops_a_scheduled_cut() {
	run(|| {
		let (payer, worker) = (account(Role::Payer), account(Role::Worker));
		let origin = || RuntimeOrigin::signed(payer.clone());
		assert_ok!(Attribution::set_allowance(origin(), worker.clone(), 1));
		assert!(AllowanceCuts::<Test>::contains_key(&payer, &worker));
		// A second cut replaces the first, and its hold starts again.
		System::set_block_number(5);
		assert_ok!(Attribution::set_allowance(origin(), worker.clone(), 2));
		assert_eq!(AllowanceCuts::<Test>::get(&payer, &worker), Some((2, 5 + MAX_LIFETIME)));
		assert_ok!(Attribution::set_allowance(origin(), worker.clone(), 2 * ALLOWANCE));
		System::assert_last_event(Event::AllowanceSet { payer: payer.clone(), worker: worker.clone(), amount: 2 * ALLOWANCE }.into());
		assert_eq!(Allowances::<Test>::get(&payer, &worker), Some(2 * ALLOWANCE));
		assert!(!AllowanceCuts::<Test>::contains_key(&payer, &worker));
	});
}

#[test]
fn try_state_catches_a_cut_without_its_allowance() {
	run(|| {
		let (payer, worker) = (account(Role::Payer), account(Role::Worker));
		AllowanceCuts::<Test>::insert(&payer, account(Role::Other), (0, 1));
		assert!(Attribution::do_try_state().is_err());
		AllowanceCuts::<Test>::remove(&payer, account(Role::Other));
		AllowanceCuts::<Test>::insert(&payer, &worker, (0, System::block_number() + MAX_LIFETIME + 1));
		assert!(Attribution::do_try_state().is_err());
		AllowanceCuts::<Test>::remove(&payer, &worker);
	});
}

fn deposits(who: &AccountId) -> Balance {
	Balances::balance_on_hold(&HoldReason::AllowanceDeposit.into(), who)
}

#[test]
fn an_allowance_holds_a_deposit_until_it_is_removed() {
	run(|| {
		let payer = account(Role::Other);
		let signed = || RuntimeOrigin::signed(payer.clone());
		let free = Balances::balance(&payer);
		assert_ok!(Attribution::set_allowance(signed(), account(Role::Worker), 5));
		assert_eq!((deposits(&payer), Balances::balance(&payer)), (ALLOWANCE_DEPOSIT, free - ALLOWANCE_DEPOSIT));
		cut_allowance(&payer, account(Role::Worker), 0);
		assert_eq!((deposits(&payer), Balances::balance(&payer)), (0, free));
		assert!(!AllowanceCount::<Test>::contains_key(&payer), "no count is left behind");
		// Whoever cannot pay the deposit gets no allowance.
		let poor = AccountId::new([7; 32]);
		assert_ok!(Balances::transfer_allow_death(signed(), poor.clone(), ALLOWANCE_DEPOSIT));
		assert_noop!(
			Attribution::set_allowance(RuntimeOrigin::signed(poor.clone()), account(Role::Worker), 5),
			Error::<Test>::InsufficientBalance
		);
		// Deposits held under an older, different `AllowanceDeposit` all come back.
		let free = Balances::balance(&payer);
		assert_ok!(Attribution::set_allowance(signed(), account(Role::Worker), 5));
		assert_ok!(Attribution::set_allowance(signed(), account(Role::Treasury), 5));
		assert_ok!(Balances::hold(&HoldReason::AllowanceDeposit.into(), &payer, 3));
		cut_allowance(&payer, account(Role::Worker), 0);
		cut_allowance(&payer, account(Role::Treasury), 0);
		assert_eq!((deposits(&payer), Balances::balance(&payer)), (0, free));
	});
}

#[test]
fn fee_params_are_set_by_governance_only() {
	run(|| {
		assert_noop!(
			Attribution::set_fee_params(RuntimeOrigin::signed(account(Role::Payer)), Permill::zero(), Permill::zero(), 1),
			DispatchError::BadOrigin
		);
		assert_ok!(Attribution::set_fee_params(RuntimeOrigin::root(), Permill::from_percent(1), Permill::from_percent(2), 3));
		assert_eq!((DataShare::<Test>::get(), RetrievalPrice::<Test>::get()), (Permill::from_percent(2), 3));
		System::assert_last_event(
			Event::FeeParamsSet { protocol_share: Permill::from_percent(1), data_share: Permill::from_percent(2), retrieval_price: 3 }.into(),
		);
	});
}

#[test]
fn valid_receipt_pays_everyone_their_share() {
	run(|| {
		let before: Vec<(Role, Balance)> = ROLES.iter().map(|r| (*r, Balances::total_balance(&account(*r)))).collect();
		let pool_before = Balances::total_balance(&pool());
		let issuance = Balances::total_issuance();
		let signed = sign(receipt(1));
		let id = signed.receipt.id();
		submit(&account(Role::Worker), vec![signed]);
		// The event names each recipient once, in account order, with what it got.
		let mut payouts: Vec<(AccountId, Balance)> = ROLES
			.iter()
			.map(|r| (account(*r), expected_payout(*r)))
			.filter(|(_, amount)| *amount > 0)
			.chain([(pool(), EXPECTED_TRAINING_POOL)])
			.collect();
		payouts.sort();
		System::assert_has_event(
			Event::ReceiptSettled { receipt_id: id, worker: account(Role::Worker), payer: account(Role::Payer), fee: EXPECTED_FEE, payouts }.into(),
		);
		System::assert_last_event(Event::BatchProcessed { settled: 1, rejected: 0 }.into());
		// Computed by hand in `mock::EXPECTED_*`, independently of the fee code.
		for (role, was) in before {
			let expected_gain = expected_payout(role);
			let now = Balances::total_balance(&account(role));
			if role == Role::Payer {
				assert_eq!(was - now, EXPECTED_FEE, "payer");
			} else {
				assert_eq!(now - was, expected_gain, "{role:?}");
			}
		}
		assert_eq!(Balances::total_balance(&pool()) - pool_before, EXPECTED_TRAINING_POOL);
		assert_eq!(DataNets::unclaimed_rewards(DATANET, ITEM_A), EXPECTED_TRAINING_POOL / 2);
		assert_eq!(Balances::total_issuance(), issuance);
		assert_eq!(Allowances::<Test>::get(account(Role::Payer), account(Role::Worker)), Some(ALLOWANCE - EXPECTED_FEE));
	});
}

fn with_tools(mut r: Receipt<AccountId>, tools: &[(u32, u32)]) -> Receipt<AccountId> {
	r.tools = BoundedVec::truncate_from(tools.iter().map(|&(tool, calls)| ToolUse { tool, calls }).collect());
	r
}

/// A receipt naming 3 calls of the tool costs 3 × its price more; the owner gets that less the
/// protocol share (10 %), the treasury the share, and nobody else's payout changes.
#[test]
fn a_tool_owner_is_paid_price_times_calls() {
	run(|| {
		let before: Vec<(Role, Balance)> = ROLES.iter().map(|r| (*r, Balances::total_balance(&account(*r)))).collect();
		let issuance = Balances::total_issuance();
		submit(&account(Role::Worker), vec![sign(with_tools(receipt(1), &[(TOOL, 3)]))]);
		System::assert_last_event(Event::BatchProcessed { settled: 1, rejected: 0 }.into());
		let tool_fee = 3 * TOOL_PRICE;
		assert_eq!(last_fee(), Some(EXPECTED_FEE + tool_fee));
		for (role, was) in before {
			let now = Balances::total_balance(&account(role));
			match role {
				Role::Payer => assert_eq!(was - now, EXPECTED_FEE + tool_fee),
				Role::ToolOwner => assert_eq!(now - was, tool_fee - tool_fee / 10),
				Role::Treasury => assert_eq!(now - was, expected_payout(role) + tool_fee / 10),
				_ => assert_eq!(now - was, expected_payout(role), "{role:?}"),
			}
		}
		assert_eq!(Balances::total_issuance(), issuance);
		Attribution::do_try_state().unwrap();
	});
}

#[test]
fn receipt_naming_an_unknown_repeated_or_uncalled_tool_is_rejected() {
	run(|| {
		assert_rejected(sign(with_tools(receipt(1), &[(TOOL + 9, 1)])), RejectReason::UnknownTool);
		assert_rejected(sign(with_tools(receipt(2), &[(TOOL, 1), (TOOL, 2)])), RejectReason::InvalidToolEntry);
		assert_rejected(sign(with_tools(receipt(3), &[(TOOL, 0)])), RejectReason::InvalidToolEntry);
		// A retired tool pays what was served before until it is removed, then no more.
		paid_until_removed(
			|| Registry::retire_tool(RuntimeOrigin::signed(account(Role::ToolOwner)), TOOL),
			|n| with_tools(receipt(n), &[(TOOL, 1)]),
			RejectReason::UnknownTool,
		);
	});
}

/// Retires an entry with `retire` and checks both halves: a receipt (`receipt(4)`) of a request
/// served before settles while the entry retires, paying as before; once the entry is removed
/// (the same call a receipt's lifetime later) a receipt naming it (`receipt(5)`) is refused with
/// `reason`.
fn paid_until_removed(
	retire: impl Fn() -> polkadot_sdk::sp_runtime::DispatchResult,
	receipt: impl Fn(u8) -> Receipt<AccountId>,
	reason: RejectReason,
) {
	assert_ok!(retire());
	System::reset_events();
	submit(&account(Role::Worker), vec![sign(receipt(4))]);
	assert!(last_fee().is_some(), "a receipt served before the retirement settles: {:?}", last_reason());
	let removable = System::block_number() + MAX_LIFETIME;
	System::set_block_number(removable);
	assert_ok!(retire());
	let mut later = receipt(5);
	later.expires_at = (removable + 10) as u32;
	assert_rejected(sign(later), reason);
}

/// The fee of the last receipt settled.
fn last_fee() -> Option<Balance> {
	System::events().into_iter().rev().find_map(|e| match e.event {
		RuntimeEvent::Attribution(Event::ReceiptSettled { fee, .. }) => Some(fee),
		_ => None,
	})
}

/// The worker, the adapter owner and the prompt owner raise their prices between a request and
/// its settlement: the receipt still settles at the prices it was signed at, so nobody can
/// raise what an allowance-paid request costs once it is served. A receipt settled once the
/// hold (a receipt's longest lifetime) has passed pays the new prices.
#[test]
fn prices_raised_after_a_receipt_is_signed_do_not_raise_its_fee() {
	run(|| {
		let signed = sign(receipt(1));
		let raised_at = System::block_number();
		set_prices(3_000, 4_000, 900);
		System::set_block_number(signed.receipt.expires_at.into());
		submit(&account(Role::Worker), vec![signed]);
		assert_eq!(last_fee(), Some(EXPECTED_FEE));

		System::set_block_number(raised_at + MAX_LIFETIME);
		let mut later = receipt(2);
		later.expires_at = (raised_at + MAX_LIFETIME + 10) as u32;
		submit(&account(Role::Worker), vec![sign(later)]);
		assert_eq!(last_fee(), Some(3_000 + 4_000 + 900 + 200), "{:?}", last_reason());
	});
}

#[test]
fn replayed_receipt_is_not_paid() {
	run(|| {
		let signed = sign(receipt(1));
		submit(&account(Role::Worker), vec![signed.clone()]);
		let before = snapshot();
		submit(&account(Role::Worker), vec![signed.clone()]);
		assert_eq!(last_reason(), Some(RejectReason::AlreadySettled));
		// A copy submitted by a third party is refused too.
		submit(&account(Role::Other), vec![signed]);
		assert_eq!(last_reason(), Some(RejectReason::AlreadySettled));
		assert_eq!(snapshot(), before);
	});
}

/// Records are kept under each receipt's expiry, so a second, different receipt for a settled
/// request that expires at another block is not found there. Paid by voucher it is refused (a
/// voucher's receipt expires with it); paid from an allowance it is equivocation, which the
/// two settled receipts prove: the worker's stake is slashed and it signs nothing more.
#[test]
fn a_second_receipt_for_a_request_under_another_expiry_is_slashable() {
	run(|| {
		let first = sign(receipt(1));
		submit(&account(Role::Worker), vec![first.clone()]);
		let mut again = receipt(1);
		again.expires_at += 1;
		let again = sign(again);
		submit(&account(Role::Worker), vec![again.clone()]);
		System::assert_last_event(Event::BatchProcessed { settled: 1, rejected: 0 }.into());
		assert_ok!(Workers::report_equivocation(
			RuntimeOrigin::signed(account(Role::Other)),
			Box::new(first.receipt),
			first.signature,
			Box::new(again.receipt),
			again.signature,
		));
		assert_rejected(sign(receipt(2)), RejectReason::UnknownWorker);
	});
}

#[test]
fn receipt_submitted_by_a_third_party_pays_the_right_people() {
	run(|| {
		let worker_before = Balances::total_balance(&account(Role::Worker));
		let other_before = Balances::total_balance(&account(Role::Other));
		submit(&account(Role::Other), vec![sign(receipt(1))]);
		assert_eq!(Balances::total_balance(&account(Role::Worker)) - worker_before, expected_payout(Role::Worker));
		// The submitter pays only its transaction fee, which the mock does not charge.
		assert_eq!(Balances::total_balance(&account(Role::Other)), other_before);
	});
}

/// Submits `signed` and asserts it is rejected for `reason` and pays nothing.
fn assert_rejected(signed: SignedReceipt<AccountId, Balance>, reason: RejectReason) {
	let before = snapshot();
	let pool_before = Balances::total_balance(&pool());
	let id = signed.receipt.id();
	// Only this submission's events count: an earlier rejection of the same receipt is no proof.
	System::reset_events();
	submit(&account(Role::Other), vec![signed]);
	System::assert_has_event(Event::ReceiptRejected { receipt_id: id, reason }.into());
	assert_eq!(snapshot(), before, "a rejected receipt ({reason:?}) paid someone");
	assert_eq!(Balances::total_balance(&pool()), pool_before);
}

#[test]
fn expired_receipt_is_rejected() {
	run(|| {
		System::set_block_number(50);
		let mut r = receipt(1);
		r.expires_at = 49;
		assert_rejected(sign(r), RejectReason::Expired);
		let mut far = receipt(2);
		far.expires_at = (50 + MAX_LIFETIME + 1) as u32;
		assert_rejected(sign(far), RejectReason::ExpiryTooFar);
	});
}

#[test]
fn signature_from_another_chain_domain_or_key_is_rejected() {
	run(|| {
		let r = receipt(1);
		let wrong_genesis = session_pair().sign(&r.signing_payload(&H256::repeat_byte(1)));
		assert_rejected(SignedReceipt { receipt: r.clone(), signature: wrong_genesis, voucher: None }, RejectReason::InvalidSignature);
		let wrong_domain = session_pair().sign(&signing_payload(VOUCHER_DOMAIN, &genesis_hash(), &r));
		assert_rejected(SignedReceipt { receipt: r.clone(), signature: wrong_domain, voucher: None }, RejectReason::InvalidSignature);
		let wrong_key = sr25519::Pair::from_string("//NotTheSessionKey", None).unwrap()
			.sign(&signing_payload(RECEIPT_DOMAIN, &genesis_hash(), &r));
		assert_rejected(SignedReceipt { receipt: r.clone(), signature: wrong_key, voucher: None }, RejectReason::InvalidSignature);
		// A tampered receipt no longer matches its signature.
		let mut signed = sign(r);
		signed.receipt.completion_tokens += 1;
		assert_rejected(signed, RejectReason::InvalidSignature);
	});
}

#[test]
fn receipt_from_unregistered_worker_is_rejected() {
	run(|| {
		let mut r = receipt(1);
		r.worker = account(Role::Other);
		assert_rejected(sign(r), RejectReason::UnknownWorker);
	});
}

#[test]
fn receipt_naming_unknown_or_mismatched_entries_is_rejected() {
	run(|| {
		let mut r = receipt(1);
		r.adapter = Some((ADAPTER + 9, adapter_hash()));
		assert_rejected(sign(r), RejectReason::UnknownAdapter);
		let mut r = receipt(2);
		r.adapter = Some((ADAPTER, content_hash(b"other weights")));
		assert_rejected(sign(r), RejectReason::AdapterHashMismatch);
		let mut r = receipt(3);
		r.prompt = Some((PROMPT + 9, template_hash()));
		assert_rejected(sign(r), RejectReason::UnknownPrompt);
		let mut r = receipt(4);
		r.prompt = Some((PROMPT, content_hash(b"other template")));
		assert_rejected(sign(r), RejectReason::PromptHashMismatch);
		let mut r = receipt(5);
		r.base_model = 2;
		assert_rejected(sign(r), RejectReason::ModelNotServed);
	});
}

/// The worker serves base models 0 and 1, and the adapter is trained on 0: a receipt naming
/// the adapter over base 1 is refused, and so is any receipt for base 0 once governance has
/// retired it, though the worker still lists it.
#[test]
fn receipt_naming_an_adapter_of_another_base_or_a_retired_base_is_rejected() {
	run(|| {
		let mut r = receipt(1);
		r.base_model = 1;
		assert_rejected(sign(r), RejectReason::AdapterBaseMismatch);
		assert_ok!(Registry::retire_base_model(RuntimeOrigin::root(), BASE_MODEL));
		assert_rejected(sign(receipt(2)), RejectReason::UnknownBaseModel);
		let mut no_adapter = receipt(3);
		no_adapter.adapter = None;
		assert_rejected(sign(no_adapter), RejectReason::UnknownBaseModel);
	});
}

#[test]
fn receipt_naming_unaccepted_item_is_rejected() {
	run(|| {
		let mut r = receipt(1);
		r.attribution[1].item = Some(ITEM_PENDING);
		assert_rejected(sign(r), RejectReason::UnacceptedItem);
		let mut r = receipt(2);
		r.attribution[1].item = Some(999);
		assert_rejected(sign(r), RejectReason::UnacceptedItem);
	});
}

/// A retired adapter or prompt, and a withdrawn accepted item, pay the receipts of requests
/// served before until they are removed, a receipt's lifetime later. What is gone by settlement
/// is refused: a removed adapter, prompt or item, a worker that started unbonding, a session key
/// rotated away. (Each on a fresh chain: each change is for good.)
#[test]
fn receipt_naming_what_was_removed_withdrawn_or_rotated_away_is_rejected() {
	let signed = |role| RuntimeOrigin::signed(account(role));
	run(|| {
		paid_until_removed(|| Registry::retire_adapter(signed(Role::AdapterOwner), ADAPTER), receipt, RejectReason::UnknownAdapter);
	});
	run(|| {
		paid_until_removed(|| Registry::retire_prompt(signed(Role::PromptOwner), PROMPT), receipt, RejectReason::UnknownPrompt);
	});
	run(|| {
		paid_until_removed(|| DataNets::withdraw_contribution(signed(Role::ContributorA), DATANET, ITEM_A), receipt, RejectReason::UnacceptedItem);
	});
	run(|| {
		assert_ok!(Workers::unbond(signed(Role::Worker)));
		assert_rejected(sign(receipt(1)), RejectReason::UnknownWorker);
	});
	run(|| {
		let new_key = sr25519::Pair::from_string("//RotatedSession", None).unwrap();
		assert_ok!(Workers::rotate_key(signed(Role::Worker), new_key.public()));
		assert_rejected(sign(receipt(1)), RejectReason::InvalidSignature);
		let r = receipt(2);
		let by_new_key = new_key.sign(&r.signing_payload(&genesis_hash()));
		submit(&account(Role::Worker), vec![SignedReceipt { receipt: r, signature: by_new_key, voucher: None }]);
		assert_eq!(last_fee(), Some(EXPECTED_FEE), "the new key signs: {:?}", last_reason());
	});
}

#[test]
fn receipt_with_bad_attribution_is_rejected() {
	run(|| {
		let mut r = receipt(1);
		r.attribution[1].weight_ppm += 1;
		assert_rejected(sign(r), RejectReason::InvalidAttribution);
		let mut r = receipt(2);
		r.attribution[1].item = None;
		assert_rejected(sign(r), RejectReason::InvalidAttribution);
		let mut r = receipt(3);
		r.attribution[0].datanet = DATANET + 1;
		assert_rejected(sign(r), RejectReason::InvalidTrainingEntry);
		let mut r = receipt(4);
		r.attribution[0].item = Some(ITEM_A);
		assert_rejected(sign(r), RejectReason::InvalidTrainingEntry);
	});
}

#[test]
fn receipt_without_authorisation_is_rejected() {
	run(|| {
		cut_allowance(&account(Role::Payer), account(Role::Worker), 0);
		assert_rejected(sign(receipt(1)), RejectReason::NotAuthorised);
		assert_ok!(Attribution::set_allowance(RuntimeOrigin::signed(account(Role::Payer)), account(Role::Worker), EXPECTED_FEE - 1));
		assert_rejected(sign(receipt(2)), RejectReason::FeeExceedsAuthorisation);
	});
}

fn voucher(r: &Receipt<AccountId>, max_fee: Balance) -> Voucher<AccountId, Balance> {
	Voucher { payer: r.payer.clone(), worker: r.worker.clone(), request_hash: r.request_hash, max_fee, expires_at: r.expires_at }
}

fn with_voucher(r: Receipt<AccountId>, v: Voucher<AccountId, Balance>, signer: &sr25519::Pair) -> SignedReceipt<AccountId, Balance> {
	let signature = signer.sign(&v.signing_payload(&genesis_hash())).into();
	SignedReceipt { voucher: Some(SignedVoucher { voucher: v, signature }), ..sign(r) }
}

#[test]
fn voucher_authorises_exactly_its_request() {
	run(|| {
		// No allowance: only vouchers authorise.
		cut_allowance(&account(Role::Payer), account(Role::Worker), 0);
		let payer = payer_pair();
		let r = receipt(1);
		assert_rejected(with_voucher(r.clone(), voucher(&r, EXPECTED_FEE - 1), &payer), RejectReason::FeeExceedsAuthorisation);
		let mut other_request = voucher(&r, EXPECTED_FEE);
		other_request.request_hash = content_hash(b"another request");
		assert_rejected(with_voucher(r.clone(), other_request, &payer), RejectReason::VoucherMismatch);
		assert_rejected(with_voucher(r.clone(), voucher(&r, EXPECTED_FEE), &session_pair()), RejectReason::InvalidVoucherSignature);
		// A voucher binds its payer and its worker: the payer's own voucher charges no other
		// payer's receipt, nor pays another worker's.
		let mut someone_elses = r.clone();
		someone_elses.payer = account(Role::Other);
		assert_rejected(with_voucher(someone_elses, voucher(&r, EXPECTED_FEE), &payer), RejectReason::VoucherMismatch);
		let mut other_worker = voucher(&r, EXPECTED_FEE);
		other_worker.worker = account(Role::Other);
		assert_rejected(with_voucher(r.clone(), other_worker, &payer), RejectReason::VoucherMismatch);
		// The payer's signature counts for vouchers on this chain only.
		let v = voucher(&r, EXPECTED_FEE);
		for payload in [signing_payload(RECEIPT_DOMAIN, &genesis_hash(), &v), v.signing_payload(&H256::repeat_byte(1))] {
			let signature = payer.sign(&payload).into();
			let signed = SignedReceipt { voucher: Some(SignedVoucher { voucher: v.clone(), signature }), ..sign(r.clone()) };
			assert_rejected(signed, RejectReason::InvalidVoucherSignature);
		}
		// The request's record is kept under the receipt's expiry: a receipt expiring at another
		// block than its voucher would be looked up elsewhere, and could pay the voucher twice.
		for expires_at in [0, r.expires_at - 1, r.expires_at + 1] {
			let mut other_expiry = voucher(&r, EXPECTED_FEE);
			other_expiry.expires_at = expires_at;
			assert_rejected(with_voucher(r.clone(), other_expiry, &payer), RejectReason::ExpiryDiffersFromVoucher);
		}
		let before = credit(&account(Role::Payer));
		submit(&account(Role::Worker), vec![with_voucher(r.clone(), voucher(&r, EXPECTED_FEE), &payer)]);
		assert_eq!(before - credit(&account(Role::Payer)), EXPECTED_FEE);
	});
}

#[test]
fn receipt_beyond_payer_credit_is_rejected() {
	run(|| {
		let payer = account(Role::Payer);
		assert_ok!(Attribution::withdraw(RuntimeOrigin::signed(payer.clone()), CREDIT - EXPECTED_FEE + 1));
		System::set_block_number(1 + WITHDRAWAL_DELAY);
		assert_ok!(Attribution::claim_withdrawal(RuntimeOrigin::signed(payer)));
		let mut r = receipt(1);
		r.expires_at = (1 + WITHDRAWAL_DELAY + 10) as u32;
		assert_rejected(sign(r), RejectReason::InsufficientCredit);
	});
}

#[test]
fn one_bad_receipt_does_not_sink_the_batch() {
	run(|| {
		let mut bad = receipt(2);
		bad.worker = account(Role::Other);
		submit(&account(Role::Worker), vec![sign(receipt(1)), sign(bad), sign(receipt(3))]);
		System::assert_last_event(Event::BatchProcessed { settled: 2, rejected: 1 }.into());
		assert_eq!(credit(&account(Role::Payer)), CREDIT - 2 * EXPECTED_FEE);
	});
}

#[test]
fn empty_batch_and_wrong_origin_are_refused() {
	run(|| {
		assert_noop!(Attribution::submit_receipts(RuntimeOrigin::signed(account(Role::Worker)), batch(vec![])), Error::<Test>::EmptyBatch);
		assert_noop!(Attribution::submit_receipts(RuntimeOrigin::none(), batch(vec![sign(receipt(1))])), DispatchError::BadOrigin);
	});
}

/// Runs the pruning hook of every block after the prune cursor up to `now`, as a chain would.
fn prune_through(now: u64) {
	for block in PruneCursor::<Test>::get() + 1..=now {
		Attribution::on_initialize(block);
	}
}

#[test]
fn settled_records_are_pruned_after_expiry_and_replays_stay_refused() {
	run(|| {
		let signed = sign(receipt(1));
		let expires_at = signed.receipt.expires_at as u64;
		submit(&account(Role::Worker), vec![signed.clone()]);
		assert_eq!(Settled::<Test>::iter().count(), 1);
		prune_through(expires_at);
		assert_eq!(Settled::<Test>::iter().count(), 1, "not pruned before it expires");
		System::set_block_number(expires_at + 1);
		prune_through(expires_at + 1);
		assert_eq!(Settled::<Test>::iter().count(), 0);
		assert_eq!(PruneCursor::<Test>::get(), expires_at + 1);
		assert_rejected(signed, RejectReason::Expired);
	});
}

#[test]
fn a_worker_keeps_one_sorted_record_set_per_expiry() {
	run(|| {
		let with_expiry = |n: u8, later: u32| {
			let mut r = receipt(n);
			r.expires_at += later;
			sign(r)
		};
		submit(&account(Role::Worker), (1..=4).map(|n| with_expiry(n, u32::from(n % 2))).collect());
		let sizes: Vec<_> = Settled::<Test>::iter().map(|(_, _, requests)| requests.len()).collect();
		assert_eq!(sizes, vec![2, 2]);
		// A later batch adds to the set of its expiry; a replay there, in the same batch or a
		// later one, is found.
		let first = with_expiry(1, 1);
		let repeat = with_expiry(5, 0);
		submit(&account(Role::Worker), vec![repeat.clone(), repeat.clone(), first]);
		for id in [repeat.receipt.id(), with_expiry(1, 1).receipt.id()] {
			System::assert_has_event(Event::ReceiptRejected { receipt_id: id, reason: RejectReason::AlreadySettled }.into());
		}
		System::assert_last_event(Event::BatchProcessed { settled: 1, rejected: 2 }.into());
		let expiry = receipt(0).expires_at as u64;
		let set = Settled::<Test>::get(expiry, account(Role::Worker));
		assert_eq!(set.len(), 3);
		assert!(set.windows(2).all(|w| w[0] < w[1]), "sorted");
		Attribution::do_try_state().unwrap();
	});
}

#[test]
fn a_full_record_set_refuses_further_receipts_of_its_expiry() {
	run(|| {
		assert_ok!(Attribution::set_allowance(RuntimeOrigin::signed(account(Role::Payer)), account(Role::Worker), CREDIT));
		let n = MAX_SETTLED_PER_EXPIRY as u8;
		submit(&account(Role::Worker), (0..n).map(|i| sign(receipt(i))).collect());
		submit(&account(Role::Worker), vec![sign(receipt(n))]);
		System::assert_has_event(Event::ReceiptRejected { receipt_id: receipt(n).id(), reason: RejectReason::ExpiryFull }.into());
		System::assert_last_event(Event::BatchProcessed { settled: 0, rejected: 1 }.into());
		// The same request expiring at another block is settled.
		let mut elsewhere = receipt(n);
		elsewhere.expires_at += 1;
		submit(&account(Role::Worker), vec![sign(elsewhere)]);
		System::assert_last_event(Event::BatchProcessed { settled: 1, rejected: 0 }.into());
	});
}

#[test]
fn pruning_removes_whole_sets_within_the_budget() {
	run(|| {
		// Three sets, at three consecutive expiries.
		let expiry = receipt(0).expires_at;
		submit(
			&account(Role::Worker),
			(0..3u8)
				.map(|n| {
					let mut r = receipt(n);
					r.expires_at = expiry + u32::from(n);
					sign(r)
				})
				.collect(),
		);
		let expiry = u64::from(expiry);
		prune_through(expiry);
		System::set_block_number(expiry + 3);
		// A budget of five: three sets and the two blocks between them.
		let weight = Attribution::on_initialize(expiry + 3);
		assert_eq!(weight, Attribution::prune_weight(3, 2));
		assert_eq!(Settled::<Test>::iter().count(), 0);
		assert_eq!(PruneCursor::<Test>::get(), expiry + 2, "the last block is not passed yet");
		Attribution::on_initialize(expiry + 4);
		assert_eq!(PruneCursor::<Test>::get(), expiry + 4);
	});
}

#[test]
fn pruning_passes_a_bounded_number_of_empty_blocks() {
	run(|| {
		let weight = Attribution::on_initialize(1_000);
		assert_eq!(PruneCursor::<Test>::get(), u64::from(MAX_PRUNE));
		assert_eq!(weight, Attribution::prune_weight(0, MAX_PRUNE));
	});
}

mod properties {
	use super::*;
	use openledger_primitives::fees::{split_fee, FeeInputs, ToolCharge, TrainingSource, WeightedItem};
	use proptest::prelude::*;

	proptest! {
		#![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

		/// Random prices, shares and weights: payouts sum to the fee and nothing is paid from
		/// a zero part.
		#[test]
		fn split_conserves_the_fee(
			tokens in 0u64..5_000_000,
			worker_rate in 0u128..1_000_000_000_000_000_000,
			adapter_rate in 0u128..1_000_000_000_000_000_000,
			prompt_price in 0u128..1_000_000_000_000_000,
			retrieval_price in 0u128..1_000_000_000_000_000,
			weights in proptest::collection::vec(0u32..1_000_000, 0..8),
			shares in proptest::collection::vec((1u32..600_000, 0u32..50), 0..4),
			tools in proptest::collection::vec((0u32..100, 0u128..1_000_000_000_000_000_000), 0..4),
			protocol in 0u32..1_000_000,
			data in 0u32..1_000_000,
		) {
			let items: Vec<WeightedItem> = weights.iter().enumerate()
				.map(|(i, w)| WeightedItem { datanet: 0, item: i as u32, weight_ppm: *w }).collect();
			let training: Vec<TrainingSource> = shares.iter().enumerate()
				.map(|(i, (s, n))| TrainingSource { datanet: i as u32, share_ppm: *s, accepted_items: *n }).collect();
			let tools: Vec<ToolCharge<u128>> = tools.iter().enumerate()
				.map(|(i, (calls, price))| ToolCharge { tool: i as u32, calls: *calls, price_per_call: *price }).collect();
			let inputs = FeeInputs {
				tokens, worker_rate_per_1k: worker_rate, adapter_rate_per_1k: adapter_rate,
				prompt_price, retrieval_price, items: &items, training: &training, tools: &tools,
				protocol_share: Permill::from_parts(protocol), data_share: Permill::from_parts(data),
			};
			let split = split_fee(&inputs).unwrap();
			prop_assert_eq!(split.payouts.iter().map(|(_, a)| *a).sum::<u128>(), split.fee);
			for (payee, amount) in &split.payouts {
				prop_assert!(*amount > 0);
				use openledger_primitives::fees::Payee;
				match payee {
					Payee::Worker => prop_assert!(worker_rate > 0 && tokens > 0),
					Payee::PromptOwner => prop_assert!(prompt_price > 0),
					Payee::ToolOwner(t) => prop_assert!(tools[*t as usize].calls > 0 && tools[*t as usize].price_per_call > 0),
					Payee::AdapterOwner | Payee::TrainingPool(_) => prop_assert!(adapter_rate > 0 && tokens > 0),
					Payee::Contributor(_, i) => prop_assert!(retrieval_price > 0 && weights[*i as usize] > 0),
					Payee::Treasury => {},
				}
			}
		}

		/// The same through the pallet: random prices and shares on chain, a settled receipt
		/// moves exactly its fee from the payer's credit and creates or destroys nothing.
		#[test]
		fn settlement_conserves_value(
			// Bounded so the largest fee (about 83,000) stays within the payer's credit.
			worker_rate in 0u128..2_000,
			adapter_rate in 0u128..2_000,
			prompt_price in 0u128..40_000,
			retrieval_price in 0u128..1_000,
			protocol in 0u32..1_000_000,
			data in 0u32..1_000_000,
			split_a in 1u32..799_999,
			tokens in 1u32..10_000,
			tool_calls in 0u32..5,
		) {
			let mut ok = Ok(());
			run(|| {
				set_prices(worker_rate, adapter_rate, prompt_price);
				assert_ok!(Attribution::set_allowance(RuntimeOrigin::signed(account(Role::Payer)), account(Role::Worker), CREDIT));
				assert_ok!(Attribution::set_fee_params(RuntimeOrigin::root(), Permill::from_parts(protocol), Permill::from_parts(data), retrieval_price));
				let mut r = receipt(1);
				r.completion_tokens = tokens;
				r.attribution[1].weight_ppm = split_a;
				r.attribution[2].weight_ppm = 800_000 - split_a;
				if tool_calls > 0 {
					r = with_tools(r, &[(TOOL, tool_calls)]);
				}
				let issuance = Balances::total_issuance();
				let mut all = everyone();
				all.push(pool());
				let before: Vec<Balance> = all.iter().map(|a| Balances::total_balance(a)).collect();
				submit(&account(Role::Worker), vec![sign(r)]);
				let after: Vec<Balance> = all.iter().map(|a| Balances::total_balance(a)).collect();
				let fee = System::events().into_iter().find_map(|e| match e.event {
					RuntimeEvent::Attribution(Event::ReceiptSettled { fee, .. }) => Some(fee),
					_ => None,
				});
				ok = (|| {
					let fee = fee.ok_or_else(|| TestCaseError::fail(format!("receipt rejected: {:?}", last_reason())))?;
					prop_assert_eq!(Balances::total_issuance(), issuance);
					let gained: u128 = before.iter().zip(&after).filter(|(b, a)| a > b).map(|(b, a)| a - b).sum();
					let lost: u128 = before.iter().zip(&after).filter(|(b, a)| a < b).map(|(b, a)| b - a).sum();
					prop_assert_eq!(gained, fee);
					prop_assert_eq!(lost, fee);
					Ok(())
				})();
			});
			ok?;
		}
	}
}

/// Every balance a receipt can touch, the DataNet's reward index and the payer's allowance.
fn ledger() -> (Vec<Balance>, Balance, Balance, Balance, Option<Balance>) {
	(
		snapshot(),
		Balances::total_balance(&pool()),
		DataNets::unclaimed_rewards(DATANET, ITEM_A),
		credit(&account(Role::Payer)),
		Allowances::<Test>::get(account(Role::Payer), account(Role::Worker)),
	)
}

#[test]
fn a_batch_pays_exactly_what_its_receipts_pay_one_by_one() {
	let receipts = || -> Vec<_> { (1..=4).map(|n| sign(receipt(n))).collect() };
	let mut together = None;
	run(|| {
		submit(&account(Role::Worker), receipts());
		System::assert_last_event(Event::BatchProcessed { settled: 4, rejected: 0 }.into());
		together = Some(ledger());
	});
	run(|| {
		for signed in receipts() {
			submit(&account(Role::Worker), vec![signed]);
		}
		assert_eq!(Some(ledger()), together);
		assert_eq!(credit(&account(Role::Payer)), CREDIT - 4 * EXPECTED_FEE);
		assert_eq!(Allowances::<Test>::get(account(Role::Payer), account(Role::Worker)), Some(ALLOWANCE - 4 * EXPECTED_FEE));
	});
}

#[test]
fn credit_is_checked_against_what_the_batch_already_owes() {
	run(|| {
		let payer = account(Role::Payer);
		// Leave credit for two receipts and one unit.
		assert_ok!(Attribution::withdraw(RuntimeOrigin::signed(payer.clone()), CREDIT - 2 * EXPECTED_FEE - 1));
		System::set_block_number(1 + WITHDRAWAL_DELAY);
		assert_ok!(Attribution::claim_withdrawal(RuntimeOrigin::signed(payer.clone())));
		let receipts: Vec<_> = (1..=3)
			.map(|n| {
				let mut r = receipt(n);
				r.expires_at = (1 + WITHDRAWAL_DELAY + 10) as u32;
				sign(r)
			})
			.collect();
		let third = receipts[2].receipt.id();
		submit(&account(Role::Worker), receipts);
		System::assert_has_event(Event::ReceiptRejected { receipt_id: third, reason: RejectReason::InsufficientCredit }.into());
		System::assert_last_event(Event::BatchProcessed { settled: 2, rejected: 1 }.into());
		assert_eq!(credit(&payer), 1);
	});
}

#[test]
fn a_payout_one_payer_cannot_make_rejects_its_receipt_alone() {
	run(|| {
		// An adapter owner whose account does not exist yet.
		ExistentialDeposit::set(100);
		let fresh = AccountId::new([7; 32]);
		assert_ok!(Registry::transfer_adapter(RuntimeOrigin::signed(account(Role::AdapterOwner)), ADAPTER, fresh.clone()));
		// Two payers, the one whose transfers the batch makes first with a short receipt: its
		// owner part (50 tokens: 67) is below the existential deposit, the other's (1,350) is
		// not. Checked against the owner's total over both payers, both receipts passed, and the
		// first transfer then failed the whole batch.
		let (a, b) = (account(Role::Payer), account(Role::Other));
		let (small, large) = if a < b { (a, b) } else { (b, a) };
		let other = if small == account(Role::Payer) { &large } else { &small };
		assert_ok!(Attribution::deposit(RuntimeOrigin::signed(other.clone()), CREDIT));
		assert_ok!(Attribution::set_allowance(RuntimeOrigin::signed(other.clone()), account(Role::Worker), ALLOWANCE));
		let mut long = receipt(1);
		long.payer = large.clone();
		let mut short = receipt(2);
		short.payer = small.clone();
		(short.prompt_tokens, short.completion_tokens) = (20, 30);
		let alone = short.id();
		submit(&account(Role::Worker), vec![sign(long), sign(short)]);
		System::assert_has_event(Event::ReceiptRejected { receipt_id: alone, reason: RejectReason::PayoutFailed }.into());
		System::assert_last_event(Event::BatchProcessed { settled: 1, rejected: 1 }.into());
		assert_eq!(Balances::free_balance(&fresh), expected_payout(Role::AdapterOwner));
		ExistentialDeposit::set(1);
	});
}

#[test]
fn allowance_is_checked_against_what_the_batch_already_spent() {
	run(|| {
		let (payer, worker) = (account(Role::Payer), account(Role::Worker));
		cut_allowance(&payer, worker.clone(), 2 * EXPECTED_FEE + 1);
		let receipts: Vec<_> = (1..=3).map(|n| sign(receipt(n))).collect();
		let third = receipts[2].receipt.id();
		submit(&worker, receipts);
		System::assert_has_event(Event::ReceiptRejected { receipt_id: third, reason: RejectReason::FeeExceedsAuthorisation }.into());
		System::assert_last_event(Event::BatchProcessed { settled: 2, rejected: 1 }.into());
		assert_eq!(Allowances::<Test>::get(&payer, &worker), Some(1));
		// A voucher receipt in the same batch leaves the allowance alone.
		let r = receipt(4);
		submit(&worker, vec![with_voucher(r.clone(), voucher(&r, EXPECTED_FEE), &payer_pair()), sign(receipt(5))]);
		System::assert_last_event(Event::BatchProcessed { settled: 1, rejected: 1 }.into());
		assert_eq!(Allowances::<Test>::get(&payer, &worker), Some(1));
	});
}

#[test]
fn receipts_sharing_a_context_weigh_less_than_alone() {
	run(|| {
		use crate::WeightInfo;
		let db = <<Test as polkadot_sdk::frame_system::Config>::DbWeight as polkadot_sdk::frame_support::traits::Get<polkadot_sdk::frame_support::weights::RuntimeDbWeight>>::get();
		// The receipts are paid from an allowance: alone, each also reads it and any scheduled cut,
		// and writes it back.
		let context = <() as WeightInfo>::submit_receipt(3, 0) + db.reads_writes(2, 1);
		// Every receipt here has one worker and expiry: one record set, read, written and pruned.
		let record_set = Attribution::record_set_weight();
		assert_eq!(
			record_set,
			<() as WeightInfo>::record_settled(MAX_SETTLED_PER_EXPIRY) + Attribution::prune_weight(1, 0) -
				Attribution::prune_weight(0, 0)
		);
		let alone = context + record_set;
		let shared: Vec<_> = (1..=5).map(|n| sign(receipt(n))).collect();
		let mut distinct = shared.clone();
		for (n, signed) in distinct.iter_mut().enumerate() {
			// Another payer per receipt: a new context each time.
			signed.receipt.payer = everyone()[n % everyone().len()].clone();
		}
		assert_eq!(Attribution::batch_weight(&distinct), context.saturating_mul(5) + record_set);
		let weight = Attribution::batch_weight(&shared);
		assert!(weight.ref_time() < alone.saturating_mul(5).ref_time(), "{weight:?} vs 5 × {alone:?}");
		assert!(weight.ref_time() > alone.ref_time());
		assert_eq!(Attribution::batch_weight(&shared[..1]), alone);
		// A further receipt paid by voucher checks one more signature than one paid by allowance
		// (whose batch alone reads the allowance, once).
		let by_voucher: Vec<_> = (1..=5)
			.map(|n| {
				let r = receipt(n);
				with_voucher(r.clone(), voucher(&r, EXPECTED_FEE), &payer_pair())
			})
			.collect();
		assert!(
			Attribution::batch_weight(&by_voucher).ref_time() >
				(Attribution::batch_weight(&shared) - db.reads_writes(2, 1)).ref_time()
		);
		// Each further record set (expiry and worker) is charged too.
		let mut two_expiries = shared.clone();
		two_expiries[4].receipt.expires_at += 1;
		assert_eq!(Attribution::batch_weight(&two_expiries), weight + record_set);
		// Each tool entry is charged at the measured per-tool rate.
		let entry = <() as WeightInfo>::submit_receipt(0, 1) - <() as WeightInfo>::submit_receipt(0, 0);
		assert!(entry.ref_time() > 0);
		let with_tools = [sign(with_tools(receipt(1), &[(TOOL, 2), (TOOL + 1, 1)]))];
		assert_eq!(Attribution::batch_weight(&with_tools), alone + entry.saturating_mul(2));
	});
}

/// A context opened by a voucher receipt has not read the allowance: the first receipt after it
/// paid from the allowance is charged the reads (the allowance and a scheduled cut) and the
/// write-back, and only the first.
#[test]
fn the_first_allowance_receipt_after_a_voucher_pays_for_the_allowance() {
	run(|| {
		use crate::WeightInfo;
		let db = <<Test as polkadot_sdk::frame_system::Config>::DbWeight as polkadot_sdk::frame_support::traits::Get<polkadot_sdk::frame_support::weights::RuntimeDbWeight>>::get();
		assert!(db.reads_writes(2, 1).ref_time() > 0);
		let first = receipt(1);
		let opened = vec![with_voucher(first.clone(), voucher(&first, EXPECTED_FEE), &payer_pair())];
		let entries = <() as WeightInfo>::submit_receipt(3, 0) - <() as WeightInfo>::submit_receipt(0, 0);
		let allowance_slope =
			<() as WeightInfo>::submit_receipts_shared(2) - <() as WeightInfo>::submit_receipts_shared(1);
		let further = allowance_slope + entries;
		let mut batch = opened.clone();
		batch.push(sign(receipt(2)));
		assert_eq!(
			Attribution::batch_weight(&batch),
			Attribution::batch_weight(&opened) + further + db.reads_writes(2, 1)
		);
		batch.push(sign(receipt(3)));
		assert_eq!(
			Attribution::batch_weight(&batch),
			Attribution::batch_weight(&opened) + further.saturating_mul(2) + db.reads_writes(2, 1)
		);
	});
}

#[test]
fn try_state_catches_credit_that_left_other_than_as_a_fee() {
	run(|| {
		let total = TotalCredit::<Test>::get();
		submit(&account(Role::Worker), vec![sign(receipt(1))]);
		assert_eq!(TotalCredit::<Test>::get(), total - EXPECTED_FEE);
		Attribution::do_try_state().unwrap();
		// What a split paying out one unit more than its fee would leave behind.
		assert_ok!(Balances::transfer_on_hold(
			&HoldReason::Credit.into(),
			&account(Role::Payer),
			&account(Role::Worker),
			1,
			Precision::Exact,
			Restriction::Free,
			Fortitude::Polite,
		));
		assert!(Attribution::do_try_state().is_err());
		TotalCredit::<Test>::mutate(|total| *total -= 1);
	});
}

#[test]
fn a_payer_paid_as_a_contributor_gets_its_part_back_from_its_credit() {
	run(|| {
		let payer = account(Role::ContributorA);
		let signed = || RuntimeOrigin::signed(payer.clone());
		assert_ok!(Attribution::deposit(signed(), CREDIT));
		assert_ok!(Attribution::set_allowance(signed(), account(Role::Worker), ALLOWANCE));
		let (free, total) = (Balances::balance(&payer), TotalCredit::<Test>::get());
		let mut r = receipt(1);
		r.payer = payer.clone();
		submit(&account(Role::Worker), vec![sign(r)]);
		System::assert_last_event(Event::BatchProcessed { settled: 1, rejected: 0 }.into());
		// Its own part is released to it, not moved; the credit still falls by the whole fee.
		let own_part = expected_payout(Role::ContributorA);
		assert!(own_part > 0);
		assert_eq!(credit(&payer), CREDIT - EXPECTED_FEE);
		assert_eq!(Balances::balance(&payer), free + own_part);
		assert_eq!(TotalCredit::<Test>::get(), total - EXPECTED_FEE);
	});
}

#[test]
fn try_state_finds_a_record_set_kept_beyond_the_receipt_lifetime() {
	new_test_ext().execute_with(|| {
		assert!(Attribution::do_try_state().is_ok());
		let beyond = System::block_number() + MAX_LIFETIME + 1;
		Settled::<Test>::insert(beyond, account(Role::Worker), BoundedVec::truncate_from(vec![H256::repeat_byte(1)]));
		assert!(Attribution::do_try_state().is_err());
	});
}
