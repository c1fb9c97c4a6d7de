//! Behaviour of every call: success with balances and holds, wrong origin, each error.

use crate::{
	mock::*, AdapterByHash, Adapters, BaseModels, Commitments, Entry, Error, Event, HoldReason,
	NextAdapterId, NextBaseModelId, NextPromptId, NextToolId, PromptByHash, Prompts,
	RegistrationKind, Retiring, Tools,
};
use openledger_primitives::{
	content_hash,
	traits::{AdapterView, PromptView, RegistryInspect, ToolView},
	DataNetId, PPM,
};
use polkadot_sdk::{
	frame_support::{
		assert_noop, assert_ok,
		traits::fungible::{Inspect, InspectHold, MutateHold},
	},
	sp_core::H256,
	sp_runtime::{DispatchError, DispatchResult},
};

const PRICE: Balance = 7;

/// Retires an entry all the way: the first call marks it, the hold passes, the second removes it.
fn retire_fully(retire: impl Fn() -> polkadot_sdk::sp_runtime::DispatchResult) {
	assert_ok!(retire());
	System::set_block_number(System::block_number() + PRICE_HOLD);
	assert_ok!(retire());
}

fn held(reason: HoldReason, who: AccountId) -> Balance {
	Balances::balance_on_hold(&reason.into(), &who)
}

/// The salt of the tests' registration commitments.
const SALT: [u8; 32] = [7; 32];

/// The weights hash of the adapter that gets id `id` (each adapter has its own).
fn weights_of(id: u32) -> H256 {
	content_hash(&[b"adapter_model.safetensors".as_slice(), &id.to_le_bytes()].concat())
}

/// Commits `who` to registering the next adapter id's weights, usable at once.
fn commit_adapter(who: AccountId) {
	let hash = weights_of(NextAdapterId::<Test>::get());
	Registry::commit_for_test(&who, RegistrationKind::Adapter, &hash, &SALT);
}

/// Commits `who` to registering the next prompt id's template, usable at once.
fn commit_prompt(who: AccountId) {
	let hash = template_of(NextPromptId::<Test>::get());
	Registry::commit_for_test(&who, RegistrationKind::Prompt, &hash, &SALT);
}

fn config() -> H256 {
	content_hash(b"adapter_config.json")
}

/// The template hash of the prompt that gets id `id`.
fn template_of(id: u32) -> H256 {
	content_hash(&[b"You are a helpful assistant.".as_slice(), &id.to_le_bytes()].concat())
}

fn base_model() -> u32 {
	let id = NextBaseModelId::<Test>::get();
	assert_ok!(Registry::register_base_model(
		RuntimeOrigin::root(),
		b"SmolLM2-135M".to_vec(),
		b"llama".to_vec(),
		content_hash(b"base weights"),
	));
	id
}

/// Creates a DataNet through the real DataNets pallet.
fn datanet() -> DataNetId {
	let id = pallet_datanets::NextDataNetId::<Test>::get();
	assert_ok!(DataNets::create_datanet(
		RuntimeOrigin::signed(TREASURY),
		b"wiki".to_vec(),
		content_hash(b"metadata"),
		b"ipfs://meta".to_vec(),
		b"CC-BY".to_vec(),
		100,
	));
	id
}

fn register_adapter(
	who: AccountId,
	base: u32,
	rank: u32,
	uri: &[u8],
	provenance: &[(DataNetId, u32)],
) -> DispatchResult {
	Registry::register_adapter(
		RuntimeOrigin::signed(who),
		base,
		weights_of(NextAdapterId::<Test>::get()),
		config(),
		rank,
		uri.to_vec(),
		provenance.to_vec(),
		PRICE,
		SALT,
	)
}

/// Registers an adapter of `who` on a new base model, trained on one new DataNet.
fn adapter(who: AccountId) -> u32 {
	let base = base_model();
	let net = datanet();
	let id = NextAdapterId::<Test>::get();
	commit_adapter(who);
	assert_ok!(register_adapter(who, base, 8, b"ipfs://lora", &[(net, 400_000)]));
	id
}

fn register_prompt(who: AccountId, uri: &[u8]) -> DispatchResult {
	let hash = template_of(NextPromptId::<Test>::get());
	Registry::register_prompt(RuntimeOrigin::signed(who), hash, uri.to_vec(), PRICE, SALT)
}

fn prompt(who: AccountId) -> u32 {
	let id = NextPromptId::<Test>::get();
	commit_prompt(who);
	assert_ok!(register_prompt(who, b"ipfs://prompt"));
	id
}

#[test]
fn governance_registers_active_base_models() {
	run(|| {
		let issuance = Balances::total_issuance();
		let id = base_model();
		let model = BaseModels::<Test>::get(id).unwrap();
		assert_eq!(model.name.to_vec(), b"SmolLM2-135M".to_vec());
		assert_eq!(model.architecture.to_vec(), b"llama".to_vec());
		assert_eq!(model.weights_hash, content_hash(b"base weights"));
		assert!(model.active);
		assert!(Registry::base_model_active(id));
		assert!(!Registry::base_model_active(id + 1));
		assert_eq!(NextBaseModelId::<Test>::get(), 1);
		System::assert_last_event(
			Event::BaseModelRegistered { base_model: id, weights_hash: content_hash(b"base weights") }
				.into(),
		);
		// Registration is free: no balance moves.
		assert_eq!(Balances::total_issuance(), issuance);
		assert_eq!(base_model(), 1);
	});
}

#[test]
fn base_model_registration_rejects_bad_input() {
	run(|| {
		let h = content_hash(b"w");
		let call = |origin, name: &[u8], architecture: &[u8]| {
			Registry::register_base_model(origin, name.to_vec(), architecture.to_vec(), h)
		};
		assert_noop!(call(RuntimeOrigin::signed(OWNER), b"m", b"llama"), DispatchError::BadOrigin);
		assert_noop!(call(RuntimeOrigin::none(), b"m", b"llama"), DispatchError::BadOrigin);
		assert_noop!(
			call(RuntimeOrigin::root(), &[b'n'; MAX_NAME_LEN as usize + 1], b"llama"),
			Error::<Test>::NameTooLong
		);
		assert_noop!(
			call(RuntimeOrigin::root(), b"m", &[b'a'; MAX_ARCHITECTURE_LEN as usize + 1]),
			Error::<Test>::ArchitectureTooLong
		);
		// Names and architectures at their bounds are accepted.
		assert_ok!(call(
			RuntimeOrigin::root(),
			&[b'n'; MAX_NAME_LEN as usize],
			&[b'a'; MAX_ARCHITECTURE_LEN as usize]
		));
		NextBaseModelId::<Test>::put(u32::MAX);
		assert_noop!(call(RuntimeOrigin::root(), b"m", b"llama"), Error::<Test>::IdsExhausted);
	});
}

#[test]
fn retired_base_model_takes_no_new_adapters() {
	run(|| {
		let base = base_model();
		let net = datanet();
		commit_adapter(ALICE);
		assert_ok!(register_adapter(ALICE, base, 8, b"u", &[(net, 1)]));
		assert_noop!(Registry::retire_base_model(RuntimeOrigin::signed(OWNER), base), DispatchError::BadOrigin);
		assert_noop!(Registry::retire_base_model(RuntimeOrigin::root(), 9), Error::<Test>::UnknownBaseModel);
		assert_ok!(Registry::retire_base_model(RuntimeOrigin::root(), base));
		System::assert_last_event(Event::BaseModelRetired { base_model: base }.into());
		assert!(!BaseModels::<Test>::get(base).unwrap().active);
		assert!(!Registry::base_model_active(base));
		assert_noop!(Registry::retire_base_model(RuntimeOrigin::root(), base), Error::<Test>::BaseModelRetired);
		assert_noop!(register_adapter(BOB, base, 8, b"u", &[(net, 1)]), Error::<Test>::BaseModelRetired);
		assert_eq!(held(HoldReason::AdapterDeposit, BOB), 0);
		// The adapter registered before stays, with its deposit, until its owner retires it.
		assert!(Registry::adapter(0).is_some());
		assert_eq!(held(HoldReason::AdapterDeposit, ALICE), ADAPTER_DEPOSIT);
		retire_fully(|| Registry::retire_adapter(RuntimeOrigin::signed(ALICE), 0));
		assert_eq!(Balances::balance(&ALICE), ENDOWMENT);
	});
}

#[test]
fn adapter_registration_holds_deposit_and_records_provenance() {
	run(|| {
		let base = base_model();
		let (a, b) = (datanet(), datanet());
		let id = NextAdapterId::<Test>::get();
		commit_adapter(ALICE);
		assert_ok!(register_adapter(ALICE, base, 16, b"ipfs://lora", &[(b, 600_000), (a, 400_000)]));
		System::assert_last_event(
			Event::AdapterRegistered { adapter: id, owner: ALICE, base_model: base, weights_hash: weights_of(id) }
				.into(),
		);
		let stored = Adapters::<Test>::get(id).unwrap();
		assert_eq!((stored.owner, stored.depositor, stored.deposit), (ALICE, ALICE, ADAPTER_DEPOSIT));
		assert_eq!((stored.config_hash, stored.rank, stored.uri.to_vec()), (config(), 16, b"ipfs://lora".to_vec()));
		assert_eq!(held(HoldReason::AdapterDeposit, ALICE), ADAPTER_DEPOSIT);
		assert_eq!(Balances::balance(&ALICE), ENDOWMENT - ADAPTER_DEPOSIT);
		assert_eq!(Balances::total_balance(&ALICE), ENDOWMENT);
		assert_eq!(NextAdapterId::<Test>::get(), id + 1);
		assert_eq!(
			Registry::adapter(id),
			Some(AdapterView {
				owner: ALICE,
				base_model: base,
				weights_hash: weights_of(id),
				price_per_1k_tokens: PRICE,
				provenance: vec![(b, 600_000), (a, 400_000)],
			})
		);
		assert_eq!(Registry::adapter(id + 1), None);
	});
}

#[test]
fn adapter_provenance_may_be_empty_or_exactly_one_hundred_percent() {
	run(|| {
		let base = base_model();
		let nets: Vec<DataNetId> = (0..MAX_PROVENANCE).map(|_| datanet()).collect();
		commit_adapter(ALICE);
		assert_ok!(register_adapter(ALICE, base, 1, b"", &[]));
		let full = [(nets[0], 500_000), (nets[1], 499_999), (nets[2], 1)];
		commit_adapter(ALICE);
		assert_ok!(register_adapter(ALICE, base, MAX_RANK, &[b'u'; MAX_URI_LEN as usize], &full));
		assert_eq!(Registry::adapter(0).unwrap().provenance, vec![]);
		assert_eq!(Registry::adapter(1).unwrap().provenance, full.to_vec());
		assert_eq!(held(HoldReason::AdapterDeposit, ALICE), 2 * ADAPTER_DEPOSIT);
		assert_eq!(Balances::balance(&ALICE), ENDOWMENT - 2 * ADAPTER_DEPOSIT);
	});
}

#[test]
fn adapter_registration_rejects_bad_input() {
	run(|| {
		let base = base_model();
		let (a, b) = (datanet(), datanet());
		let long_uri = [b'u'; MAX_URI_LEN as usize + 1];
		let hash = weights_of(0);
		assert_noop!(
			Registry::register_adapter(RuntimeOrigin::none(), base, hash, config(), 8, vec![], vec![], PRICE, SALT),
			DispatchError::BadOrigin
		);
		assert_noop!(
			Registry::register_adapter(RuntimeOrigin::root(), base, hash, config(), 8, vec![], vec![], PRICE, SALT),
			DispatchError::BadOrigin
		);
		// Committed, so that each call below fails for the reason it tests.
		commit_adapter(ALICE);
		commit_adapter(POOR);
		assert_noop!(register_adapter(ALICE, base + 1, 8, b"u", &[(a, 1)]), Error::<Test>::UnknownBaseModel);
		assert_noop!(register_adapter(ALICE, base, 8, &long_uri, &[(a, 1)]), Error::<Test>::UriTooLong);
		assert_noop!(register_adapter(ALICE, base, 0, b"u", &[(a, 1)]), Error::<Test>::RankOutOfRange);
		assert_noop!(register_adapter(ALICE, base, MAX_RANK + 1, b"u", &[(a, 1)]), Error::<Test>::RankOutOfRange);
		let too_many: Vec<_> = (0..=MAX_PROVENANCE).map(|i| (i, 1)).collect();
		assert_noop!(register_adapter(ALICE, base, 8, b"u", &too_many), Error::<Test>::TooManyProvenanceEntries);
		assert_noop!(register_adapter(ALICE, base, 8, b"u", &[(a, 1), (b + 1, 1)]), Error::<Test>::UnknownDataNet);
		// A closed DataNet cannot be named; nor can one closing (it still holds an item).
		let (closed, closing) = (datanet(), datanet());
		assert_ok!(DataNets::close_datanet(RuntimeOrigin::signed(TREASURY), closed));
		assert_ok!(DataNets::contribute(RuntimeOrigin::signed(TREASURY), closing, content_hash(b"item"), 4));
		assert_ok!(DataNets::close_datanet(RuntimeOrigin::signed(TREASURY), closing));
		assert_noop!(register_adapter(ALICE, base, 8, b"u", &[(a, 1), (closed, 1)]), Error::<Test>::UnknownDataNet);
		assert_noop!(register_adapter(ALICE, base, 8, b"u", &[(a, 1), (closing, 1)]), Error::<Test>::UnknownDataNet);
		assert_noop!(register_adapter(ALICE, base, 8, b"u", &[(a, 1), (b, 2), (a, 3)]), Error::<Test>::DuplicateProvenance);
		assert_noop!(register_adapter(ALICE, base, 8, b"u", &[(a, 1), (b, 0)]), Error::<Test>::ZeroShare);
		assert_noop!(
			register_adapter(ALICE, base, 8, b"u", &[(a, PPM / 2), (b, PPM / 2 + 1)]),
			Error::<Test>::SharesOverHundredPercent
		);
		// Shares that would overflow a u32 sum are refused, not wrapped.
		assert_noop!(
			register_adapter(ALICE, base, 8, b"u", &[(a, PPM), (b, u32::MAX)]),
			Error::<Test>::SharesOverHundredPercent
		);
		assert_noop!(register_adapter(POOR, base, 8, b"u", &[(a, 1)]), Error::<Test>::InsufficientBalance);
		NextAdapterId::<Test>::put(u32::MAX);
		commit_adapter(ALICE);
		assert_noop!(register_adapter(ALICE, base, 8, b"u", &[(a, 1)]), Error::<Test>::IdsExhausted);
		assert_eq!(Balances::balance(&ALICE), ENDOWMENT);
		assert_eq!(held(HoldReason::AdapterDeposit, ALICE), 0);
	});
}

#[test]
fn only_the_owner_sets_an_adapter_price() {
	run(|| {
		let id = adapter(ALICE);
		assert_noop!(Registry::set_adapter_price(RuntimeOrigin::none(), id, 9), DispatchError::BadOrigin);
		assert_noop!(Registry::set_adapter_price(RuntimeOrigin::signed(BOB), id, 9), Error::<Test>::NotOwner);
		assert_noop!(Registry::set_adapter_price(RuntimeOrigin::signed(ALICE), id + 1, 9), Error::<Test>::UnknownAdapter);
		assert_ok!(Registry::set_adapter_price(RuntimeOrigin::signed(ALICE), id, 9));
		System::assert_last_event(Event::AdapterPriceSet { adapter: id, price_per_1k_tokens: 9 }.into());
		assert_eq!(Adapters::<Test>::get(id).unwrap().price_per_1k_tokens, 9);
		assert_eq!(Balances::balance(&ALICE), ENDOWMENT - ADAPTER_DEPOSIT);
		assert_eq!(held(HoldReason::AdapterDeposit, ALICE), ADAPTER_DEPOSIT);
	});
}

#[test]
fn transferred_adapter_keeps_its_deposit_with_the_depositor() {
	run(|| {
		let id = adapter(ALICE);
		assert_noop!(Registry::transfer_adapter(RuntimeOrigin::none(), id, BOB), DispatchError::BadOrigin);
		assert_noop!(Registry::transfer_adapter(RuntimeOrigin::signed(BOB), id, BOB), Error::<Test>::NotOwner);
		assert_noop!(Registry::transfer_adapter(RuntimeOrigin::signed(ALICE), id + 1, BOB), Error::<Test>::UnknownAdapter);
		assert_ok!(Registry::transfer_adapter(RuntimeOrigin::signed(ALICE), id, BOB));
		System::assert_last_event(Event::AdapterTransferred { adapter: id, from: ALICE, to: BOB }.into());
		let stored = Adapters::<Test>::get(id).unwrap();
		assert_eq!((stored.owner, stored.depositor), (BOB, ALICE));
		assert_eq!(Registry::adapter(id).unwrap().owner, BOB);
		assert_eq!(held(HoldReason::AdapterDeposit, ALICE), ADAPTER_DEPOSIT);
		assert_eq!(held(HoldReason::AdapterDeposit, BOB), 0);
		assert_eq!(Balances::balance(&BOB), ENDOWMENT);
		// The new owner alone now controls it.
		assert_noop!(Registry::set_adapter_price(RuntimeOrigin::signed(ALICE), id, 1), Error::<Test>::NotOwner);
		assert_noop!(Registry::retire_adapter(RuntimeOrigin::signed(ALICE), id), Error::<Test>::NotOwner);
		assert_ok!(Registry::set_adapter_price(RuntimeOrigin::signed(BOB), id, 1));
		// Retiring it releases the deposit to the depositor, not the owner.
		retire_fully(|| Registry::retire_adapter(RuntimeOrigin::signed(BOB), id));
		System::assert_last_event(
			Event::AdapterRetired { adapter: id, depositor: ALICE, deposit: ADAPTER_DEPOSIT }.into(),
		);
		assert_eq!(Balances::balance(&ALICE), ENDOWMENT);
		assert_eq!(Balances::balance(&BOB), ENDOWMENT);
		assert_eq!(held(HoldReason::AdapterDeposit, ALICE), 0);
	});
}

#[test]
fn retired_adapter_is_removed_and_its_deposit_released() {
	run(|| {
		let id = adapter(ALICE);
		let other = NextAdapterId::<Test>::get();
		commit_adapter(ALICE);
		assert_ok!(register_adapter(ALICE, 0, 4, b"u", &[]));
		assert_eq!(held(HoldReason::AdapterDeposit, ALICE), 2 * ADAPTER_DEPOSIT);
		assert_noop!(Registry::retire_adapter(RuntimeOrigin::none(), id), DispatchError::BadOrigin);
		assert_noop!(Registry::retire_adapter(RuntimeOrigin::signed(BOB), id), Error::<Test>::NotOwner);
		assert_noop!(Registry::retire_adapter(RuntimeOrigin::signed(ALICE), other + 1), Error::<Test>::UnknownAdapter);
		retire_fully(|| Registry::retire_adapter(RuntimeOrigin::signed(ALICE), id));
		System::assert_last_event(
			Event::AdapterRetired { adapter: id, depositor: ALICE, deposit: ADAPTER_DEPOSIT }.into(),
		);
		assert!(Adapters::<Test>::get(id).is_none());
		assert_eq!(Registry::adapter(id), None);
		assert_eq!(held(HoldReason::AdapterDeposit, ALICE), ADAPTER_DEPOSIT);
		assert_eq!(Balances::balance(&ALICE), ENDOWMENT - ADAPTER_DEPOSIT);
		assert_noop!(Registry::retire_adapter(RuntimeOrigin::signed(ALICE), id), Error::<Test>::UnknownAdapter);
		// Ids are never reused.
		commit_adapter(ALICE);
		assert_ok!(register_adapter(ALICE, 0, 4, b"u", &[]));
		assert_eq!(NextAdapterId::<Test>::get(), other + 2);
	});
}

#[test]
fn prompt_registration_holds_deposit() {
	run(|| {
		let id = prompt(ALICE);
		System::assert_last_event(
			Event::PromptRegistered { prompt: id, owner: ALICE, template_hash: template_of(id) }.into(),
		);
		let stored = Prompts::<Test>::get(id).unwrap();
		assert_eq!((stored.owner, stored.depositor, stored.deposit), (ALICE, ALICE, PROMPT_DEPOSIT));
		assert_eq!(stored.uri.to_vec(), b"ipfs://prompt".to_vec());
		assert_eq!(held(HoldReason::PromptDeposit, ALICE), PROMPT_DEPOSIT);
		assert_eq!(held(HoldReason::AdapterDeposit, ALICE), 0);
		assert_eq!(Balances::balance(&ALICE), ENDOWMENT - PROMPT_DEPOSIT);
		assert_eq!(NextPromptId::<Test>::get(), id + 1);
		assert_eq!(
			Registry::prompt(id),
			Some(PromptView { owner: ALICE, template_hash: template_of(id), price_per_call: PRICE })
		);
		assert_eq!(Registry::prompt(id + 1), None);
	});
}

#[test]
fn prompt_registration_rejects_bad_input() {
	run(|| {
		let call = |origin, uri: &[u8]| {
			let hash = template_of(NextPromptId::<Test>::get());
			Registry::register_prompt(origin, hash, uri.to_vec(), PRICE, SALT)
		};
		assert_noop!(call(RuntimeOrigin::none(), b"u"), DispatchError::BadOrigin);
		assert_noop!(call(RuntimeOrigin::root(), b"u"), DispatchError::BadOrigin);
		commit_prompt(ALICE);
		commit_prompt(POOR);
		assert_noop!(
			call(RuntimeOrigin::signed(ALICE), &[b'u'; MAX_URI_LEN as usize + 1]),
			Error::<Test>::UriTooLong
		);
		assert_noop!(call(RuntimeOrigin::signed(POOR), b"u"), Error::<Test>::InsufficientBalance);
		assert_ok!(call(RuntimeOrigin::signed(ALICE), &[b'u'; MAX_URI_LEN as usize]));
		NextPromptId::<Test>::put(u32::MAX);
		commit_prompt(ALICE);
		assert_noop!(call(RuntimeOrigin::signed(ALICE), b"u"), Error::<Test>::IdsExhausted);
		assert_eq!(Balances::balance(&ALICE), ENDOWMENT - PROMPT_DEPOSIT);
	});
}

#[test]
fn only_the_owner_sets_a_prompt_price() {
	run(|| {
		let id = prompt(ALICE);
		assert_noop!(Registry::set_prompt_price(RuntimeOrigin::none(), id, 3), DispatchError::BadOrigin);
		assert_noop!(Registry::set_prompt_price(RuntimeOrigin::signed(BOB), id, 3), Error::<Test>::NotOwner);
		assert_noop!(Registry::set_prompt_price(RuntimeOrigin::signed(ALICE), id + 1, 3), Error::<Test>::UnknownPrompt);
		assert_ok!(Registry::set_prompt_price(RuntimeOrigin::signed(ALICE), id, 3));
		System::assert_last_event(Event::PromptPriceSet { prompt: id, price_per_call: 3 }.into());
		assert_eq!(Prompts::<Test>::get(id).unwrap().price_per_call, 3);
		assert_eq!(Balances::balance(&ALICE), ENDOWMENT - PROMPT_DEPOSIT);
	});
}

/// A price rise is charged only `PriceHold` blocks after it is set, so receipts signed at the
/// old price settle at it; a fall is charged at once; and after a fall and a rise within the
/// hold, the lowest of them is charged until the hold of the last change ends.
#[test]
fn a_price_rise_waits_out_the_hold_and_a_fall_is_charged_at_once() {
	run(|| {
		let adapter_id = adapter(ALICE);
		let prompt_id = prompt(ALICE);
		let charged = || (Registry::adapter(adapter_id).unwrap().price_per_1k_tokens, Registry::prompt(prompt_id).unwrap().price_per_call);
		assert_eq!(charged(), (PRICE, PRICE));
		assert_ok!(Registry::set_adapter_price(RuntimeOrigin::signed(ALICE), adapter_id, PRICE * 3));
		assert_ok!(Registry::set_prompt_price(RuntimeOrigin::signed(ALICE), prompt_id, PRICE * 2));
		System::set_block_number(1 + PRICE_HOLD - 1);
		assert_eq!(charged(), (PRICE, PRICE), "the rise waits");
		System::set_block_number(1 + PRICE_HOLD);
		assert_eq!(charged(), (PRICE * 3, PRICE * 2), "then it is charged");

		let now = 1 + PRICE_HOLD;
		assert_ok!(Registry::set_adapter_price(RuntimeOrigin::signed(ALICE), adapter_id, 1));
		assert_eq!(charged().0, 1, "a fall at once");
		System::set_block_number(now + 1);
		assert_ok!(Registry::set_adapter_price(RuntimeOrigin::signed(ALICE), adapter_id, PRICE * 5));
		System::set_block_number(now + PRICE_HOLD);
		assert_eq!(charged().0, 1, "the lowest price of the hold, until the last change's hold ends");
		System::set_block_number(now + 1 + PRICE_HOLD);
		assert_eq!(charged().0, PRICE * 5);
		assert_eq!(Adapters::<Test>::get(adapter_id).unwrap().price_per_1k_tokens, PRICE * 5, "the price set");
	});
}

#[test]
fn transferred_prompt_keeps_its_deposit_with_the_depositor() {
	run(|| {
		let id = prompt(ALICE);
		assert_noop!(Registry::transfer_prompt(RuntimeOrigin::none(), id, BOB), DispatchError::BadOrigin);
		assert_noop!(Registry::transfer_prompt(RuntimeOrigin::signed(BOB), id, BOB), Error::<Test>::NotOwner);
		assert_noop!(Registry::transfer_prompt(RuntimeOrigin::signed(ALICE), id + 1, BOB), Error::<Test>::UnknownPrompt);
		assert_ok!(Registry::transfer_prompt(RuntimeOrigin::signed(ALICE), id, BOB));
		System::assert_last_event(Event::PromptTransferred { prompt: id, from: ALICE, to: BOB }.into());
		assert_eq!(Registry::prompt(id).unwrap().owner, BOB);
		assert_eq!(Prompts::<Test>::get(id).unwrap().depositor, ALICE);
		assert_eq!(held(HoldReason::PromptDeposit, ALICE), PROMPT_DEPOSIT);
		assert_eq!(held(HoldReason::PromptDeposit, BOB), 0);
		assert_noop!(Registry::set_prompt_price(RuntimeOrigin::signed(ALICE), id, 1), Error::<Test>::NotOwner);
		assert_noop!(Registry::retire_prompt(RuntimeOrigin::signed(ALICE), id), Error::<Test>::NotOwner);
		retire_fully(|| Registry::retire_prompt(RuntimeOrigin::signed(BOB), id));
		System::assert_last_event(
			Event::PromptRetired { prompt: id, depositor: ALICE, deposit: PROMPT_DEPOSIT }.into(),
		);
		assert_eq!(Balances::balance(&ALICE), ENDOWMENT);
		assert_eq!(Balances::balance(&BOB), ENDOWMENT);
		assert_eq!(held(HoldReason::PromptDeposit, ALICE), 0);
	});
}

#[test]
fn retired_prompt_is_removed_and_its_deposit_released() {
	run(|| {
		let id = prompt(ALICE);
		assert_noop!(Registry::retire_prompt(RuntimeOrigin::none(), id), DispatchError::BadOrigin);
		assert_noop!(Registry::retire_prompt(RuntimeOrigin::signed(BOB), id), Error::<Test>::NotOwner);
		assert_noop!(Registry::retire_prompt(RuntimeOrigin::signed(ALICE), id + 1), Error::<Test>::UnknownPrompt);
		retire_fully(|| Registry::retire_prompt(RuntimeOrigin::signed(ALICE), id));
		System::assert_last_event(
			Event::PromptRetired { prompt: id, depositor: ALICE, deposit: PROMPT_DEPOSIT }.into(),
		);
		assert!(Prompts::<Test>::get(id).is_none());
		assert_eq!(Registry::prompt(id), None);
		assert_eq!(held(HoldReason::PromptDeposit, ALICE), 0);
		assert_eq!(Balances::balance(&ALICE), ENDOWMENT);
		assert_noop!(Registry::retire_prompt(RuntimeOrigin::signed(ALICE), id), Error::<Test>::UnknownPrompt);
	});
}

#[test]
fn retiring_releases_the_deposit_recorded_not_the_current_constant() {
	run(|| {
		let id = prompt(ALICE);
		// As if the prompt had been registered when `PromptDeposit` was 50 higher.
		assert_ok!(<Balances as MutateHold<_>>::hold(&HoldReason::PromptDeposit.into(), &ALICE, 50));
		Prompts::<Test>::mutate(id, |p| p.as_mut().unwrap().deposit = PROMPT_DEPOSIT + 50);
		assert_eq!(Balances::balance(&ALICE), ENDOWMENT - PROMPT_DEPOSIT - 50);
		retire_fully(|| Registry::retire_prompt(RuntimeOrigin::signed(ALICE), id));
		System::assert_last_event(
			Event::PromptRetired { prompt: id, depositor: ALICE, deposit: PROMPT_DEPOSIT + 50 }.into(),
		);
		assert_eq!(held(HoldReason::PromptDeposit, ALICE), 0);
		assert_eq!(Balances::balance(&ALICE), ENDOWMENT);
	});
}

fn definition() -> openledger_primitives::ContentHash {
	content_hash(br#"{"description":"The weather now","inputSchema":{"type":"object"},"name":"get_weather"}"#)
}

fn tool(who: AccountId) -> u32 {
	let id = NextToolId::<Test>::get();
	assert_ok!(Registry::register_tool(
		RuntimeOrigin::signed(who),
		b"https://mcp.example/mcp".to_vec(),
		b"get_weather".to_vec(),
		definition(),
		PRICE
	));
	id
}

#[test]
fn tool_registration_holds_deposit() {
	run(|| {
		let id = tool(ALICE);
		System::assert_last_event(Event::ToolRegistered { tool: id, owner: ALICE, definition_hash: definition() }.into());
		let stored = Tools::<Test>::get(id).unwrap();
		assert_eq!((stored.owner, stored.depositor, stored.deposit), (ALICE, ALICE, TOOL_DEPOSIT));
		assert_eq!((stored.endpoint.to_vec(), stored.name.to_vec()), (b"https://mcp.example/mcp".to_vec(), b"get_weather".to_vec()));
		assert_eq!(held(HoldReason::ToolDeposit, ALICE), TOOL_DEPOSIT);
		assert_eq!(held(HoldReason::PromptDeposit, ALICE), 0);
		assert_eq!(Balances::balance(&ALICE), ENDOWMENT - TOOL_DEPOSIT);
		assert_eq!(NextToolId::<Test>::get(), id + 1);
		assert_eq!(Registry::tool(id), Some(ToolView { owner: ALICE, definition_hash: definition(), price_per_call: PRICE }));
		assert_eq!(Registry::tool(id + 1), None);
		assert_ok!(Registry::do_try_state());
	});
}

#[test]
fn tool_registration_rejects_bad_input() {
	run(|| {
		let call = |origin, endpoint: &[u8], name: &[u8]| {
			Registry::register_tool(origin, endpoint.to_vec(), name.to_vec(), definition(), PRICE)
		};
		assert_noop!(call(RuntimeOrigin::none(), b"u", b"t"), DispatchError::BadOrigin);
		assert_noop!(call(RuntimeOrigin::root(), b"u", b"t"), DispatchError::BadOrigin);
		let alice = || RuntimeOrigin::signed(ALICE);
		assert_noop!(call(alice(), b"", b"t"), Error::<Test>::EmptyEndpoint);
		assert_noop!(call(alice(), &[b'u'; MAX_URI_LEN as usize + 1], b"t"), Error::<Test>::UriTooLong);
		assert_noop!(call(alice(), b"u", b""), Error::<Test>::BadToolName);
		assert_noop!(call(alice(), b"u", &[b't'; MAX_TOOL_NAME_LEN as usize + 1]), Error::<Test>::BadToolName);
		assert_noop!(call(RuntimeOrigin::signed(POOR), b"u", b"t"), Error::<Test>::InsufficientBalance);
		assert_ok!(call(alice(), &[b'u'; MAX_URI_LEN as usize], &[b't'; MAX_TOOL_NAME_LEN as usize]));
		NextToolId::<Test>::put(u32::MAX);
		assert_noop!(call(alice(), b"u", b"t"), Error::<Test>::IdsExhausted);
		assert_eq!(Balances::balance(&ALICE), ENDOWMENT - TOOL_DEPOSIT);
	});
}

/// Only the owner prices, transfers or retires a tool; a price rise waits out the hold as for
/// adapters and prompts; the deposit stays with, and returns to, the account that paid it.
#[test]
fn a_tool_is_priced_transferred_and_retired_by_its_owner() {
	run(|| {
		let id = tool(ALICE);
		let bob = || RuntimeOrigin::signed(BOB);
		let alice = || RuntimeOrigin::signed(ALICE);
		assert_noop!(Registry::set_tool_price(RuntimeOrigin::none(), id, 3), DispatchError::BadOrigin);
		assert_noop!(Registry::set_tool_price(bob(), id, 3), Error::<Test>::NotOwner);
		assert_noop!(Registry::set_tool_price(alice(), id + 1, 3), Error::<Test>::UnknownTool);
		assert_ok!(Registry::set_tool_price(alice(), id, PRICE * 2));
		System::assert_last_event(Event::ToolPriceSet { tool: id, price_per_call: PRICE * 2 }.into());
		assert_eq!(Registry::tool(id).unwrap().price_per_call, PRICE, "the rise waits");
		System::set_block_number(1 + PRICE_HOLD);
		assert_eq!(Registry::tool(id).unwrap().price_per_call, PRICE * 2);
		assert_ok!(Registry::set_tool_price(alice(), id, 1));
		assert_eq!(Registry::tool(id).unwrap().price_per_call, 1, "a fall at once");

		assert_noop!(Registry::transfer_tool(bob(), id, BOB), Error::<Test>::NotOwner);
		assert_noop!(Registry::transfer_tool(alice(), id + 1, BOB), Error::<Test>::UnknownTool);
		assert_ok!(Registry::transfer_tool(alice(), id, BOB));
		System::assert_last_event(Event::ToolTransferred { tool: id, from: ALICE, to: BOB }.into());
		assert_eq!(Registry::tool(id).unwrap().owner, BOB);
		assert_eq!((held(HoldReason::ToolDeposit, ALICE), held(HoldReason::ToolDeposit, BOB)), (TOOL_DEPOSIT, 0));
		assert_noop!(Registry::set_tool_price(alice(), id, 2), Error::<Test>::NotOwner);
		assert_noop!(Registry::retire_tool(alice(), id), Error::<Test>::NotOwner);
		assert_ok!(Registry::do_try_state());

		assert_noop!(Registry::retire_tool(bob(), id + 1), Error::<Test>::UnknownTool);
		retire_fully(|| Registry::retire_tool(bob(), id));
		System::assert_last_event(Event::ToolRetired { tool: id, depositor: ALICE, deposit: TOOL_DEPOSIT }.into());
		assert!(Tools::<Test>::get(id).is_none());
		assert_eq!(Registry::tool(id), None);
		assert_eq!((Balances::balance(&ALICE), held(HoldReason::ToolDeposit, ALICE)), (ENDOWMENT, 0));
		assert_noop!(Registry::retire_tool(bob(), id), Error::<Test>::UnknownTool);
		assert_ok!(Registry::do_try_state());
	});
}

#[test]
fn try_state_detects_broken_invariants() {
	run(|| {
		let id = adapter(ALICE);
		let p = prompt(BOB);
		assert_ok!(Registry::do_try_state());
		let original = Adapters::<Test>::get(id).unwrap();
		let broken = |change: &dyn Fn(&mut crate::AdapterOf<Test>)| {
			let mut a = original.clone();
			change(&mut a);
			Adapters::<Test>::insert(id, a);
			assert!(Registry::do_try_state().is_err());
			Adapters::<Test>::insert(id, original.clone());
			assert_ok!(Registry::do_try_state());
		};
		broken(&|a| a.provenance = vec![(0, PPM), (1, 1)].try_into().unwrap());
		broken(&|a| a.provenance = vec![(0, 1), (0, 1)].try_into().unwrap());
		broken(&|a| a.provenance = vec![(0, 0)].try_into().unwrap());
		broken(&|a| a.rank = 0);
		broken(&|a| a.rank = MAX_RANK + 1);
		broken(&|a| a.base_model = 7);
		broken(&|a| a.deposit = ADAPTER_DEPOSIT + 1);
		broken(&|a| a.depositor = BOB);
		NextAdapterId::<Test>::put(id);
		assert!(Registry::do_try_state().is_err());
		NextAdapterId::<Test>::put(id + 1);
		NextPromptId::<Test>::put(p);
		assert!(Registry::do_try_state().is_err());
		NextPromptId::<Test>::put(p + 1);
		NextBaseModelId::<Test>::put(0);
		assert!(Registry::do_try_state().is_err());
		NextBaseModelId::<Test>::put(1);
		let t = tool(ALICE);
		let original = Tools::<Test>::get(t).unwrap();
		for change in [
			&(|t: &mut crate::ToolOf<Test>| t.deposit = TOOL_DEPOSIT + 1) as &dyn Fn(&mut crate::ToolOf<Test>),
			&|t| t.depositor = BOB,
			&|t| t.name = Default::default(),
			&|t| t.price_floor.price = PRICE + 1,
		] {
			let mut broken = original.clone();
			change(&mut broken);
			Tools::<Test>::insert(t, broken);
			assert!(Registry::do_try_state().is_err());
			Tools::<Test>::insert(t, original.clone());
			assert_ok!(Registry::do_try_state());
		}
		NextToolId::<Test>::put(t);
		assert!(Registry::do_try_state().is_err());
		NextToolId::<Test>::put(t + 1);
		assert_ok!(Registry::do_try_state());
	});
}

/// Retiring never voids receipts of requests served before it: the first call only marks the
/// entry (workers stop serving it; the chain still prices and pays it, to its owner), and the
/// owner can remove it once a receipt's lifetime has passed.
#[test]
fn a_retired_entry_keeps_paying_for_a_receipt_lifetime() {
	run(|| {
		let id = adapter(ALICE);
		let retired_at = System::block_number();
		assert_ok!(Registry::retire_adapter(RuntimeOrigin::signed(ALICE), id));
		System::assert_last_event(Event::AdapterRetiring { adapter: id, until: retired_at + PRICE_HOLD }.into());
		assert_eq!(Retiring::<Test>::get(Entry::Adapter(id)), Some(retired_at + PRICE_HOLD));
		let view = Registry::adapter(id).expect("a retiring adapter still settles receipts");
		assert_eq!(view.owner, ALICE);
		assert_eq!(held(HoldReason::AdapterDeposit, ALICE), ADAPTER_DEPOSIT);
		System::set_block_number(retired_at + PRICE_HOLD - 1);
		assert_noop!(Registry::retire_adapter(RuntimeOrigin::signed(ALICE), id), Error::<Test>::StillRetiring);
		assert_noop!(Registry::retire_adapter(RuntimeOrigin::signed(BOB), id), Error::<Test>::NotOwner);
		assert_ok!(Registry::do_try_state());
		System::set_block_number(retired_at + PRICE_HOLD);
		assert_ok!(Registry::retire_adapter(RuntimeOrigin::signed(ALICE), id));
		assert_eq!(Registry::adapter(id), None);
		assert_eq!(Retiring::<Test>::get(Entry::Adapter(id)), None);
		assert_eq!(held(HoldReason::AdapterDeposit, ALICE), 0);

		// Prompts and tools the same way.
		let p = prompt(ALICE);
		assert_ok!(Registry::retire_prompt(RuntimeOrigin::signed(ALICE), p));
		System::assert_last_event(Event::PromptRetiring { prompt: p, until: retired_at + 2 * PRICE_HOLD }.into());
		assert!(Registry::prompt(p).is_some());
		assert_noop!(Registry::retire_prompt(RuntimeOrigin::signed(ALICE), p), Error::<Test>::StillRetiring);
	});
}

#[test]
fn try_state_catches_a_retirement_mark_without_its_entry() {
	run(|| {
		Retiring::<Test>::insert(Entry::Tool(99), System::block_number());
		assert!(Registry::do_try_state().is_err());
		Retiring::<Test>::remove(Entry::Tool(99));
		let p = prompt(ALICE);
		Retiring::<Test>::insert(Entry::Prompt(p), System::block_number() + PRICE_HOLD + 1);
		assert!(Registry::do_try_state().is_err());
		Retiring::<Test>::remove(Entry::Prompt(p));
	});
}

/// Commits `who` to registering `hash` as `kind` through the call, at the current block.
fn commit(who: AccountId, kind: RegistrationKind, hash: H256, salt: [u8; 32]) -> DispatchResult {
	let commitment = Registry::registration_commitment(kind, &who, &hash, &salt);
	Registry::commit_registration(RuntimeOrigin::signed(who), commitment)
}

fn register_adapter_with(who: AccountId, base: u32, hash: H256, salt: [u8; 32]) -> DispatchResult {
	Registry::register_adapter(RuntimeOrigin::signed(who), base, hash, config(), 8, vec![], vec![], PRICE, salt)
}

#[test]
fn a_registration_waits_a_block_after_its_commitment() {
	run(|| {
		let base = base_model();
		let hash = weights_of(0);
		// No commitment: the hash seen in a pending registration cannot be registered first.
		assert_noop!(register_adapter_with(BOB, base, hash, SALT), Error::<Test>::NoCommitment);
		assert_ok!(commit(BOB, RegistrationKind::Adapter, hash, SALT));
		System::assert_last_event(
			Event::RegistrationCommitted {
				who: BOB,
				commitment: Registry::registration_commitment(RegistrationKind::Adapter, &BOB, &hash, &SALT),
			}
			.into(),
		);
		// In the block of the commitment: too early.
		assert_noop!(register_adapter_with(BOB, base, hash, SALT), Error::<Test>::CommitmentTooRecent);
		System::set_block_number(System::block_number() + COMMITMENT_DELAY);
		// The commitment is bound to its account, salt, kind and hash.
		assert_noop!(register_adapter_with(ALICE, base, hash, SALT), Error::<Test>::NoCommitment);
		assert_noop!(register_adapter_with(BOB, base, hash, [8; 32]), Error::<Test>::NoCommitment);
		assert_noop!(register_adapter_with(BOB, base, weights_of(1), SALT), Error::<Test>::NoCommitment);
		assert_noop!(
			Registry::register_prompt(RuntimeOrigin::signed(BOB), hash, vec![], PRICE, SALT),
			Error::<Test>::NoCommitment
		);
		assert_ok!(register_adapter_with(BOB, base, hash, SALT));
		assert_eq!(AdapterByHash::<Test>::get(hash), Some(0));
		// Used up: it registers once.
		assert_eq!(Commitments::<Test>::get(BOB), None);
	});
}

#[test]
fn a_commitment_expires() {
	run(|| {
		let base = base_model();
		let hash = weights_of(0);
		assert_ok!(commit(BOB, RegistrationKind::Adapter, hash, SALT));
		System::set_block_number(System::block_number() + COMMITMENT_LIFETIME + 1);
		assert_noop!(register_adapter_with(BOB, base, hash, SALT), Error::<Test>::NoCommitment);
		// At the end of its lifetime it is still good.
		assert_ok!(commit(BOB, RegistrationKind::Adapter, hash, [1; 32]));
		System::set_block_number(System::block_number() + COMMITMENT_LIFETIME);
		assert_ok!(register_adapter_with(BOB, base, hash, [1; 32]));
	});
}

#[test]
fn commitments_are_bounded_per_account_and_expired_ones_make_room() {
	run(|| {
		for i in 0..MAX_COMMITMENTS {
			assert_ok!(commit(BOB, RegistrationKind::Prompt, template_of(i), SALT));
		}
		assert_noop!(commit(BOB, RegistrationKind::Prompt, template_of(9), SALT), Error::<Test>::TooManyCommitments);
		// Another account has room of its own.
		assert_ok!(commit(ALICE, RegistrationKind::Prompt, template_of(9), SALT));
		System::set_block_number(System::block_number() + 1);
		assert_noop!(commit(ALICE, RegistrationKind::Prompt, template_of(9), SALT), Error::<Test>::AlreadyCommitted);
		// Once they have expired, committing again drops them.
		System::set_block_number(System::block_number() + COMMITMENT_LIFETIME);
		assert_ok!(commit(BOB, RegistrationKind::Prompt, template_of(9), SALT));
		assert_eq!(Commitments::<Test>::get(BOB).map(|c| c.len()), Some(1));
	});
}

#[test]
fn a_hash_names_one_adapter_and_one_prompt_until_retired() {
	run(|| {
		let base = base_model();
		let id = adapter(ALICE);
		let hash = Adapters::<Test>::get(id).unwrap().weights_hash;
		assert_eq!(AdapterByHash::<Test>::get(hash), Some(id));
		// Another account, committed in time, still cannot take the hash, on any base model.
		let other_base = base_model();
		assert_ok!(commit(BOB, RegistrationKind::Adapter, hash, SALT));
		System::set_block_number(System::block_number() + COMMITMENT_DELAY);
		assert_noop!(register_adapter_with(BOB, other_base, hash, SALT), Error::<Test>::HashTaken);
		assert_noop!(register_adapter_with(ALICE, base, hash, SALT), Error::<Test>::HashTaken);
		// Retiring keeps it taken until the entry is gone.
		assert_ok!(Registry::retire_adapter(RuntimeOrigin::signed(ALICE), id));
		assert_noop!(register_adapter_with(BOB, other_base, hash, SALT), Error::<Test>::HashTaken);
		System::set_block_number(System::block_number() + PRICE_HOLD);
		assert_ok!(Registry::retire_adapter(RuntimeOrigin::signed(ALICE), id));
		assert_eq!(AdapterByHash::<Test>::get(hash), None);
		assert_ok!(commit(BOB, RegistrationKind::Adapter, hash, SALT));
		System::set_block_number(System::block_number() + COMMITMENT_DELAY);
		assert_ok!(register_adapter_with(BOB, other_base, hash, SALT));
		assert_eq!(AdapterByHash::<Test>::get(hash), Some(id + 1));

		let prompt_id = prompt(ALICE);
		let template_hash = template_of(prompt_id);
		assert_eq!(PromptByHash::<Test>::get(template_hash), Some(prompt_id));
		assert_ok!(commit(BOB, RegistrationKind::Prompt, template_hash, SALT));
		System::set_block_number(System::block_number() + COMMITMENT_DELAY);
		assert_noop!(
			Registry::register_prompt(RuntimeOrigin::signed(BOB), template_hash, vec![], PRICE, SALT),
			Error::<Test>::HashTaken
		);
		retire_fully(|| Registry::retire_prompt(RuntimeOrigin::signed(ALICE), prompt_id));
		assert_eq!(PromptByHash::<Test>::get(template_hash), None);
		// The commitment expired meanwhile (the hold is longer than its lifetime).
		assert_ok!(commit(BOB, RegistrationKind::Prompt, template_hash, SALT));
		System::set_block_number(System::block_number() + COMMITMENT_DELAY);
		assert_ok!(Registry::register_prompt(RuntimeOrigin::signed(BOB), template_hash, vec![], PRICE, SALT));
		assert_eq!(PromptByHash::<Test>::get(template_hash), Some(prompt_id + 1));
	});
}

#[test]
fn the_v1_migration_indexes_the_lowest_id_of_each_hash() {
	use crate::migrations::v1::MigrateToV1;
	use polkadot_sdk::frame_support::traits::{GetStorageVersion, OnRuntimeUpgrade, StorageVersion};
	run(|| {
		let first = adapter(ALICE);
		let second = adapter(BOB);
		let prompt_id = prompt(ALICE);
		// The chain as version 0 left it: no index, and two adapters with one hash.
		let shared = Adapters::<Test>::get(first).unwrap().weights_hash;
		Adapters::<Test>::mutate(second, |a| a.as_mut().unwrap().weights_hash = shared);
		let _ = AdapterByHash::<Test>::clear(u32::MAX, None);
		let _ = PromptByHash::<Test>::clear(u32::MAX, None);
		StorageVersion::new(0).put::<Registry>();

		MigrateToV1::<Test>::on_runtime_upgrade();
		assert_eq!(Registry::on_chain_storage_version(), StorageVersion::new(1));
		assert_eq!(AdapterByHash::<Test>::get(shared), Some(first));
		assert_eq!(AdapterByHash::<Test>::iter().count(), 1);
		assert_eq!(PromptByHash::<Test>::get(template_of(prompt_id)), Some(prompt_id));
		assert_ok!(Registry::do_try_state());
		// Retiring the duplicate leaves the index naming the first; retiring the first frees
		// the hash, and the index names nothing (the invariants hold throughout).
		retire_fully(|| Registry::retire_adapter(RuntimeOrigin::signed(BOB), second));
		assert_eq!(AdapterByHash::<Test>::get(shared), Some(first));
		assert_ok!(Registry::do_try_state());
		retire_fully(|| Registry::retire_adapter(RuntimeOrigin::signed(ALICE), first));
		assert_eq!(AdapterByHash::<Test>::get(shared), None);
	});
}
