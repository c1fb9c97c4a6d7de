//! Behaviour of every call: success with balances and holds, wrong origin, each error; and
//! equivocation proven with receipts signed by real sr25519 keys.

use crate::{
	mock::*, Error, Event, HoldReason, ReceiptOf, ReportedEquivocations, RetiredKeys,
	SessionKeyOwner, WorkerStatus, Workers as WorkerStore,
};
use openledger_primitives::{
	content_hash,
	traits::{WorkerView, WorkersInspect},
	AttributionEntry, AttributionSource, BaseModelId, Receipt,
};
use polkadot_sdk::{
	frame_support::{
		assert_noop, assert_ok,
		traits::{fungible::InspectHold, Hooks},
		BoundedVec,
	},
	sp_core::{sr25519, Pair, H256},
	sp_keyring::Sr25519Keyring,
	sp_runtime::DispatchError,
};

const ENDPOINT: &[u8] = b"https://w.example";
const PRICE: Balance = 7;

fn held(who: AccountId) -> Balance {
	Balances::balance_on_hold(&HoldReason::Stake.into(), &who)
}

fn free(who: AccountId) -> Balance {
	Balances::free_balance(who)
}

fn register_with(who: AccountId, key: Sr25519Keyring, serves: Vec<BaseModelId>, stake: Balance) {
	assert_ok!(Workers::register(
		RuntimeOrigin::signed(who),
		key.public(),
		ENDPOINT.to_vec(),
		serves,
		PRICE,
		stake,
	));
}

fn register(who: AccountId, key: Sr25519Keyring, stake: Balance) {
	register_with(who, key, vec![0, 1], stake);
}

fn status(who: AccountId) -> WorkerStatus<u64> {
	WorkerStore::<Test>::get(who).expect("registered").status
}

fn stake(who: AccountId) -> Balance {
	WorkerStore::<Test>::get(who).expect("registered").stake
}

fn receipt(worker: AccountId, request: &[u8], output: &[u8]) -> ReceiptOf<Test> {
	Receipt {
		worker,
		payer: BOB,
		request_hash: content_hash(request),
		output_hash: content_hash(output),
		base_model: 0,
		adapter: Some((4, content_hash(b"weights"))),
		prompt: None,
		prompt_tokens: 12,
		completion_tokens: 30,
		attribution: BoundedVec::truncate_from(vec![AttributionEntry {
			source: AttributionSource::Retrieval,
			datanet: 0,
			item: Some(1),
			weight_ppm: 1_000_000,
		}]),
		tools: Default::default(),
		expires_at: 50,
	}
}

/// The genesis hash the chain reads, as the worker would fetch it.
fn genesis() -> H256 {
	System::block_hash(0)
}

fn sign(key: Sr25519Keyring, receipt: &ReceiptOf<Test>) -> sr25519::Signature {
	key.pair().sign(&receipt.signing_payload(&genesis()))
}

fn report(
	reporter: AccountId,
	first: &ReceiptOf<Test>,
	first_signature: sr25519::Signature,
	second: &ReceiptOf<Test>,
	second_signature: sr25519::Signature,
) -> polkadot_sdk::frame_support::dispatch::DispatchResult {
	Workers::report_equivocation(
		RuntimeOrigin::signed(reporter),
		Box::new(first.clone()),
		first_signature,
		Box::new(second.clone()),
		second_signature,
	)
}

/// Two receipts for one request that differ in their output, both signed by `key`.
fn equivocation(
	worker: AccountId,
	key: Sr25519Keyring,
	request: &[u8],
) -> (ReceiptOf<Test>, sr25519::Signature, ReceiptOf<Test>, sr25519::Signature) {
	let first = receipt(worker, request, b"the answer is 4");
	let second = receipt(worker, request, b"the answer is 5");
	let (s1, s2) = (sign(key, &first), sign(key, &second));
	(first, s1, second, s2)
}

#[test]
fn config_passes_integrity_test() {
	run(|| <Workers as Hooks<u64>>::integrity_test());
}

#[test]
fn register_holds_stake_and_indexes_session_key() {
	run(|| {
		register(ALICE, Sr25519Keyring::Alice, 5_000);
		let worker = WorkerStore::<Test>::get(ALICE).unwrap();
		assert_eq!(worker.session_key, Sr25519Keyring::Alice.public());
		assert_eq!(worker.endpoint.to_vec(), ENDPOINT.to_vec());
		assert_eq!(worker.serves.to_vec(), vec![0, 1]);
		assert_eq!((worker.compute_price_per_1k_tokens, worker.stake), (PRICE, 5_000));
		assert_eq!(worker.status, WorkerStatus::Active);
		assert_eq!(SessionKeyOwner::<Test>::get(Sr25519Keyring::Alice.public()), Some(ALICE));
		assert_eq!(held(ALICE), 5_000);
		assert_eq!(free(ALICE), ENDOWMENT - 5_000);
		assert_eq!(
			Workers::active_worker(&ALICE),
			Some(WorkerView {
				session_key: Sr25519Keyring::Alice.public(),
				compute_price_per_1k_tokens: PRICE,
				serves: vec![0, 1],
			})
		);
		System::assert_last_event(
			Event::WorkerRegistered {
				worker: ALICE,
				session_key: Sr25519Keyring::Alice.public(),
				stake: 5_000,
			}
			.into(),
		);
	});
}

#[test]
fn register_at_the_bounds_succeeds() {
	run(|| {
		let endpoint = vec![b'x'; MAX_ENDPOINT_LEN as usize];
		let serves: Vec<BaseModelId> = (0..MAX_SERVED_MODELS).collect();
		assert_ok!(Workers::register(
			RuntimeOrigin::signed(BOB),
			Sr25519Keyring::Bob.public(),
			endpoint.clone(),
			serves.clone(),
			0,
			MIN_STAKE,
		));
		let worker = WorkerStore::<Test>::get(BOB).unwrap();
		assert_eq!((worker.endpoint.to_vec(), worker.serves.to_vec()), (endpoint, serves));
		assert_eq!(held(BOB), MIN_STAKE);
	});
}

#[test]
fn register_rejects_bad_input() {
	run(|| {
		let call = |origin, key: Sr25519Keyring, endpoint: &[u8], serves: Vec<u32>, stake| {
			Workers::register(origin, key.public(), endpoint.to_vec(), serves, PRICE, stake)
		};
		let alice = || RuntimeOrigin::signed(ALICE);
		let key = Sr25519Keyring::Alice;
		assert_noop!(call(RuntimeOrigin::none(), key, ENDPOINT, vec![0], MIN_STAKE), DispatchError::BadOrigin);
		assert_noop!(call(RuntimeOrigin::root(), key, ENDPOINT, vec![0], MIN_STAKE), DispatchError::BadOrigin);
		let long = [0u8; MAX_ENDPOINT_LEN as usize + 1];
		assert_noop!(call(alice(), key, &long, vec![0], MIN_STAKE), Error::<Test>::EndpointTooLong);
		assert_noop!(call(alice(), key, ENDPOINT, vec![], MIN_STAKE), Error::<Test>::NoModelsServed);
		assert_noop!(call(alice(), key, ENDPOINT, vec![0, 1, 2, 0], MIN_STAKE), Error::<Test>::TooManyModels);
		assert_noop!(call(alice(), key, ENDPOINT, vec![1, 0, 1], MIN_STAKE), Error::<Test>::DuplicateModel);
		assert_noop!(
			call(alice(), key, ENDPOINT, vec![0, LAST_ACTIVE_MODEL + 1], MIN_STAKE),
			Error::<Test>::InactiveBaseModel
		);
		assert_noop!(call(alice(), key, ENDPOINT, vec![0], MIN_STAKE - 1), Error::<Test>::StakeTooLow);
		assert_noop!(
			call(RuntimeOrigin::signed(POOR), Sr25519Keyring::Dave, ENDPOINT, vec![0], MIN_STAKE),
			Error::<Test>::InsufficientBalance
		);
		assert_noop!(call(alice(), key, ENDPOINT, vec![0], ENDOWMENT + 1), Error::<Test>::InsufficientBalance);

		register(ALICE, key, MIN_STAKE);
		assert_noop!(
			call(alice(), Sr25519Keyring::Charlie, ENDPOINT, vec![0], MIN_STAKE),
			Error::<Test>::AlreadyRegistered
		);
		assert_noop!(
			call(RuntimeOrigin::signed(BOB), key, ENDPOINT, vec![0], MIN_STAKE),
			Error::<Test>::SessionKeyInUse
		);
		assert_eq!((held(BOB), free(BOB)), (0, ENDOWMENT));
	});
}

#[test]
fn update_replaces_endpoint_models_and_price() {
	run(|| {
		register(ALICE, Sr25519Keyring::Alice, MIN_STAKE);
		assert_ok!(Workers::update(RuntimeOrigin::signed(ALICE), b"http://new".to_vec(), vec![2], 11));
		let worker = WorkerStore::<Test>::get(ALICE).unwrap();
		assert_eq!(worker.endpoint.to_vec(), b"http://new".to_vec());
		assert_eq!((worker.serves.to_vec(), worker.compute_price_per_1k_tokens), (vec![2], 11));
		assert_eq!(worker.stake, MIN_STAKE);
		assert_eq!((held(ALICE), free(ALICE)), (MIN_STAKE, ENDOWMENT - MIN_STAKE));
		assert_eq!(Workers::active_worker(&ALICE).unwrap().serves, vec![2]);
		System::assert_last_event(Event::WorkerUpdated { worker: ALICE }.into());
	});
}

/// A compute price rise is charged (through `active_worker`) only `PriceHold` blocks after the
/// update, so receipts signed at the old price settle at it; a fall at once.
#[test]
fn a_compute_price_rise_waits_out_the_hold() {
	run(|| {
		register(ALICE, Sr25519Keyring::Alice, MIN_STAKE);
		let charged = || Workers::active_worker(&ALICE).unwrap().compute_price_per_1k_tokens;
		let start = System::block_number();
		assert_ok!(Workers::update(RuntimeOrigin::signed(ALICE), b"http://w".to_vec(), vec![1], PRICE * 4));
		assert_eq!(charged(), PRICE);
		System::set_block_number(start + 9);
		assert_eq!(charged(), PRICE, "the rise waits out the hold");
		System::set_block_number(start + 10);
		assert_eq!(charged(), PRICE * 4);
		assert_ok!(Workers::update(RuntimeOrigin::signed(ALICE), b"http://w".to_vec(), vec![1], 1));
		assert_eq!(charged(), 1, "a fall at once");
	});
}

#[test]
fn update_rejects_bad_input() {
	run(|| {
		register(ALICE, Sr25519Keyring::Alice, MIN_STAKE);
		let call = |origin, endpoint: &[u8], serves: Vec<u32>| {
			Workers::update(origin, endpoint.to_vec(), serves, 1)
		};
		let alice = || RuntimeOrigin::signed(ALICE);
		assert_noop!(call(RuntimeOrigin::none(), ENDPOINT, vec![0]), DispatchError::BadOrigin);
		assert_noop!(call(RuntimeOrigin::signed(BOB), ENDPOINT, vec![0]), Error::<Test>::UnknownWorker);
		let long = [0u8; MAX_ENDPOINT_LEN as usize + 1];
		assert_noop!(call(alice(), &long, vec![0]), Error::<Test>::EndpointTooLong);
		assert_noop!(call(alice(), ENDPOINT, vec![]), Error::<Test>::NoModelsServed);
		assert_noop!(call(alice(), ENDPOINT, vec![0, 1, 2, 0]), Error::<Test>::TooManyModels);
		assert_noop!(call(alice(), ENDPOINT, vec![2, 2]), Error::<Test>::DuplicateModel);
		assert_noop!(call(alice(), ENDPOINT, vec![LAST_ACTIVE_MODEL + 1]), Error::<Test>::InactiveBaseModel);
		assert_ok!(Workers::unbond(alice()));
		assert_noop!(call(alice(), ENDPOINT, vec![0]), Error::<Test>::NotActive);
	});
}

#[test]
fn bond_extra_holds_more_stake() {
	run(|| {
		register(ALICE, Sr25519Keyring::Alice, MIN_STAKE);
		assert_ok!(Workers::bond_extra(RuntimeOrigin::signed(ALICE), 500));
		assert_eq!(stake(ALICE), MIN_STAKE + 500);
		assert_eq!(held(ALICE), MIN_STAKE + 500);
		assert_eq!(free(ALICE), ENDOWMENT - MIN_STAKE - 500);
		System::assert_last_event(
			Event::StakeBonded { worker: ALICE, amount: 500, stake: MIN_STAKE + 500 }.into(),
		);
	});
}

#[test]
fn bond_extra_rejects_bad_input() {
	run(|| {
		register(ALICE, Sr25519Keyring::Alice, MIN_STAKE);
		let alice = || RuntimeOrigin::signed(ALICE);
		assert_noop!(Workers::bond_extra(RuntimeOrigin::none(), 1), DispatchError::BadOrigin);
		assert_noop!(Workers::bond_extra(RuntimeOrigin::signed(BOB), 1), Error::<Test>::UnknownWorker);
		assert_noop!(Workers::bond_extra(alice(), 0), Error::<Test>::ZeroAmount);
		assert_noop!(Workers::bond_extra(alice(), ENDOWMENT), Error::<Test>::InsufficientBalance);
		// A recorded stake at the top of the range cannot grow.
		WorkerStore::<Test>::mutate(ALICE, |w| w.as_mut().unwrap().stake = Balance::MAX);
		assert_noop!(Workers::bond_extra(alice(), 1), Error::<Test>::Overflow);
		WorkerStore::<Test>::mutate(ALICE, |w| w.as_mut().unwrap().stake = MIN_STAKE);
		assert_ok!(Workers::unbond(alice()));
		assert_noop!(Workers::bond_extra(alice(), 1), Error::<Test>::NotActive);
	});
}

#[test]
fn rotate_key_frees_the_old_key_and_signs_with_the_new() {
	run(|| {
		register(ALICE, Sr25519Keyring::Alice, MIN_STAKE);
		let (old, new) = (Sr25519Keyring::Alice, Sr25519Keyring::Ferdie);
		assert_ok!(Workers::rotate_key(RuntimeOrigin::signed(ALICE), new.public()));
		assert_eq!(WorkerStore::<Test>::get(ALICE).unwrap().session_key, new.public());
		assert_eq!(SessionKeyOwner::<Test>::get(new.public()), Some(ALICE));
		assert_eq!(SessionKeyOwner::<Test>::get(old.public()), None);
		assert_eq!(Workers::active_worker(&ALICE).unwrap().session_key, new.public());
		assert_eq!((held(ALICE), free(ALICE)), (MIN_STAKE, ENDOWMENT - MIN_STAKE));
		System::assert_last_event(
			Event::SessionKeyRotated { worker: ALICE, old_key: old.public(), new_key: new.public() }
				.into(),
		);
		// The old key stays evidence against Alice for the unbonding delay.
		assert_eq!(RetiredKeys::<Test>::get(ALICE).into_inner(), vec![(old.public(), 1 + UNBONDING_DELAY)]);
		// It is free for another worker.
		register(BOB, old, MIN_STAKE);
		assert_eq!(SessionKeyOwner::<Test>::get(old.public()), Some(BOB));
		let (first, s1, second, s2) = equivocation(ALICE, new, b"request");
		assert_ok!(report(CHARLIE, &first, s1, &second, s2));
	});
}

#[test]
fn equivocation_across_a_key_rotation_is_slashed() {
	run(|| {
		let (old, new) = (Sr25519Keyring::Alice, Sr25519Keyring::Ferdie);
		register(ALICE, old, 5_000);
		// One receipt signed before the rotation, another for the same request after it.
		let before = receipt(ALICE, b"request", b"the answer is 4");
		let before_signature = sign(old, &before);
		assert_ok!(Workers::rotate_key(RuntimeOrigin::signed(ALICE), new.public()));
		let after = receipt(ALICE, b"request", b"the answer is 5");
		let after_signature = sign(new, &after);
		assert_ok!(report(CHARLIE, &after, after_signature, &before, before_signature));
		assert_eq!((status(ALICE), stake(ALICE)), (WorkerStatus::Slashed, 4_500));
		// Both receipts signed by the retired key are evidence too.
		let (first, s1, second, s2) = equivocation(ALICE, old, b"another request");
		assert_ok!(report(CHARLIE, &first, s1, &second, s2));
		// A key Alice never held is not, even if another worker holds it.
		register(BOB, Sr25519Keyring::Bob, MIN_STAKE);
		let (first, s1, second, s2) = equivocation(ALICE, Sr25519Keyring::Bob, b"a third request");
		assert_noop!(report(CHARLIE, &first, s1, &second, s2), Error::<Test>::BadSignature);
	});
}

#[test]
fn a_worker_leaving_right_after_a_rotation_stays_liable_until_it_withdraws() {
	run(|| {
		let (old, new) = (Sr25519Keyring::Alice, Sr25519Keyring::Ferdie);
		register(ALICE, old, 5_000);
		assert_ok!(Workers::rotate_key(RuntimeOrigin::signed(ALICE), new.public()));
		// Back to the first key: both are evidence, the first twice over, harmlessly.
		assert_ok!(Workers::rotate_key(RuntimeOrigin::signed(ALICE), old.public()));
		assert_ok!(Workers::unbond(RuntimeOrigin::signed(ALICE)));
		System::set_block_number(UNBONDING_DELAY);
		let (first, s1, second, s2) = equivocation(ALICE, new, b"request");
		assert_ok!(report(CHARLIE, &first, s1, &second, s2));
		assert_eq!(stake(ALICE), 4_500);
		assert_ok!(Workers::unbond(RuntimeOrigin::signed(ALICE)));
		System::set_block_number(2 * UNBONDING_DELAY);
		assert_ok!(Workers::withdraw_unbonded(RuntimeOrigin::signed(ALICE)));
		assert!(!RetiredKeys::<Test>::contains_key(ALICE));
		let (first, s1, second, s2) = equivocation(ALICE, new, b"another request");
		assert_noop!(report(CHARLIE, &first, s1, &second, s2), Error::<Test>::UnknownWorker);
	});
}

#[test]
fn a_retired_key_is_evidence_for_the_unbonding_delay_only() {
	run(|| {
		let (old, new) = (Sr25519Keyring::Alice, Sr25519Keyring::Ferdie);
		register(ALICE, old, 5_000);
		assert_ok!(Workers::rotate_key(RuntimeOrigin::signed(ALICE), new.public()));
		System::set_block_number(UNBONDING_DELAY);
		let (first, s1, second, s2) = equivocation(ALICE, old, b"request 1");
		assert_ok!(report(CHARLIE, &first, s1, &second, s2));
		System::set_block_number(1 + UNBONDING_DELAY);
		let (first, s1, second, s2) = equivocation(ALICE, old, b"request 2");
		assert_noop!(report(CHARLIE, &first, s1, &second, s2), Error::<Test>::BadSignature);
		let (first, s1, second, s2) = equivocation(ALICE, new, b"request 2");
		assert_ok!(report(CHARLIE, &first, s1, &second, s2));
	});
}

#[test]
fn rotating_waits_while_the_retired_keys_are_all_evidence() {
	run(|| {
		let keys = [Sr25519Keyring::Alice, Sr25519Keyring::Dave, Sr25519Keyring::Eve, Sr25519Keyring::Ferdie];
		register(ALICE, keys[0], MIN_STAKE);
		let rotate = |key: Sr25519Keyring| Workers::rotate_key(RuntimeOrigin::signed(ALICE), key.public());
		assert_ok!(rotate(keys[1]));
		System::set_block_number(2);
		assert_ok!(rotate(keys[2]));
		assert_eq!(MAX_RETIRED_KEYS, 2);
		assert_noop!(rotate(keys[3]), Error::<Test>::TooManyRetiredKeys);
		// Once the oldest key's window has passed it makes room, and the list drops it.
		System::set_block_number(1 + UNBONDING_DELAY);
		assert_ok!(rotate(keys[3]));
		assert_eq!(
			RetiredKeys::<Test>::get(ALICE).into_inner(),
			vec![(keys[1].public(), 2 + UNBONDING_DELAY), (keys[2].public(), 1 + 2 * UNBONDING_DELAY)]
		);
		// Leaving removes them with the worker.
		assert_ok!(Workers::unbond(RuntimeOrigin::signed(ALICE)));
		System::set_block_number(1 + 2 * UNBONDING_DELAY);
		assert_ok!(Workers::withdraw_unbonded(RuntimeOrigin::signed(ALICE)));
		assert!(!RetiredKeys::<Test>::contains_key(ALICE));
	});
}

#[test]
fn rotate_key_rejects_bad_input() {
	run(|| {
		register(ALICE, Sr25519Keyring::Alice, MIN_STAKE);
		register(BOB, Sr25519Keyring::Bob, MIN_STAKE);
		let alice = || RuntimeOrigin::signed(ALICE);
		let fresh = Sr25519Keyring::Eve.public();
		assert_noop!(Workers::rotate_key(RuntimeOrigin::none(), fresh), DispatchError::BadOrigin);
		assert_noop!(Workers::rotate_key(RuntimeOrigin::signed(CHARLIE), fresh), Error::<Test>::UnknownWorker);
		assert_noop!(
			Workers::rotate_key(alice(), Sr25519Keyring::Alice.public()),
			Error::<Test>::SessionKeyInUse
		);
		assert_noop!(
			Workers::rotate_key(alice(), Sr25519Keyring::Bob.public()),
			Error::<Test>::SessionKeyInUse
		);
		assert_ok!(Workers::unbond(alice()));
		assert_noop!(Workers::rotate_key(alice(), fresh), Error::<Test>::NotActive);
	});
}

#[test]
fn unbonding_worker_cannot_sign_and_withdraws_after_the_delay() {
	run(|| {
		register(ALICE, Sr25519Keyring::Alice, 3_000);
		assert_ok!(Workers::unbond(RuntimeOrigin::signed(ALICE)));
		let until = 1 + UNBONDING_DELAY;
		assert_eq!(status(ALICE), WorkerStatus::Unbonding { until });
		assert_eq!(Workers::active_worker(&ALICE), None);
		assert_eq!((held(ALICE), free(ALICE)), (3_000, ENDOWMENT - 3_000));
		System::assert_last_event(Event::Unbonded { worker: ALICE, until }.into());

		System::set_block_number(until - 1);
		assert_noop!(
			Workers::withdraw_unbonded(RuntimeOrigin::signed(ALICE)),
			Error::<Test>::UnbondingNotOver
		);
		System::set_block_number(until);
		assert_ok!(Workers::withdraw_unbonded(RuntimeOrigin::signed(ALICE)));
		assert_eq!((held(ALICE), free(ALICE)), (0, ENDOWMENT));
		assert!(!WorkerStore::<Test>::contains_key(ALICE));
		assert_eq!(SessionKeyOwner::<Test>::get(Sr25519Keyring::Alice.public()), None);
		System::assert_last_event(Event::WorkerRemoved { worker: ALICE, released: 3_000 }.into());
		// The account and its key may register again.
		register(ALICE, Sr25519Keyring::Alice, MIN_STAKE);
	});
}

#[test]
fn unbond_and_withdraw_reject_bad_input() {
	run(|| {
		assert_noop!(Workers::unbond(RuntimeOrigin::none()), DispatchError::BadOrigin);
		assert_noop!(Workers::withdraw_unbonded(RuntimeOrigin::none()), DispatchError::BadOrigin);
		assert_noop!(Workers::unbond(RuntimeOrigin::signed(ALICE)), Error::<Test>::UnknownWorker);
		assert_noop!(
			Workers::withdraw_unbonded(RuntimeOrigin::signed(ALICE)),
			Error::<Test>::UnknownWorker
		);
		register(ALICE, Sr25519Keyring::Alice, MIN_STAKE);
		assert_noop!(
			Workers::withdraw_unbonded(RuntimeOrigin::signed(ALICE)),
			Error::<Test>::NotUnbonding
		);
		System::set_block_number(u64::MAX - UNBONDING_DELAY + 1);
		assert_noop!(Workers::unbond(RuntimeOrigin::signed(ALICE)), Error::<Test>::Overflow);
		System::set_block_number(1);
		assert_ok!(Workers::unbond(RuntimeOrigin::signed(ALICE)));
		assert_noop!(Workers::unbond(RuntimeOrigin::signed(ALICE)), Error::<Test>::AlreadyUnbonding);
	});
}

#[test]
fn governance_slash_moves_stake_to_treasury() {
	run(|| {
		register(ALICE, Sr25519Keyring::Alice, 1_500);
		assert_ok!(Workers::slash(RuntimeOrigin::root(), ALICE, 400));
		assert_eq!(stake(ALICE), 1_100);
		assert_eq!((held(ALICE), free(ALICE)), (1_100, ENDOWMENT - 1_500));
		assert_eq!(free(TREASURY), ENDOWMENT + 400);
		assert_eq!(status(ALICE), WorkerStatus::Active);
		System::assert_last_event(Event::WorkerSlashed { worker: ALICE, amount: 400 }.into());
		assert!(Workers::active_worker(&ALICE).is_some());

		// Below the minimum stake the worker may not sign, until it bonds more.
		assert_ok!(Workers::slash(RuntimeOrigin::root(), ALICE, 200));
		assert_eq!(Workers::active_worker(&ALICE), None);
		assert_ok!(Workers::bond_extra(RuntimeOrigin::signed(ALICE), 100));
		assert!(Workers::active_worker(&ALICE).is_some());

		// More than the stake takes the whole stake.
		assert_ok!(Workers::slash(RuntimeOrigin::root(), ALICE, 1_000_000));
		System::assert_last_event(Event::WorkerSlashed { worker: ALICE, amount: MIN_STAKE }.into());
		assert_eq!((stake(ALICE), held(ALICE)), (0, 0));
		assert_eq!(free(TREASURY), ENDOWMENT + 1_600);
		assert_eq!(free(ALICE), ENDOWMENT - 1_600);
	});
}

#[test]
fn governance_slash_rejects_bad_input() {
	run(|| {
		register(ALICE, Sr25519Keyring::Alice, MIN_STAKE);
		assert_noop!(Workers::slash(RuntimeOrigin::signed(ALICE), ALICE, 1), DispatchError::BadOrigin);
		assert_noop!(Workers::slash(RuntimeOrigin::none(), ALICE, 1), DispatchError::BadOrigin);
		assert_noop!(Workers::slash(RuntimeOrigin::root(), BOB, 1), Error::<Test>::UnknownWorker);
		assert_noop!(Workers::slash(RuntimeOrigin::root(), ALICE, 0), Error::<Test>::NothingToSlash);
		assert_ok!(Workers::slash(RuntimeOrigin::root(), ALICE, MIN_STAKE));
		assert_noop!(Workers::slash(RuntimeOrigin::root(), ALICE, 1), Error::<Test>::NothingToSlash);
	});
}

#[test]
fn equivocating_worker_is_slashed_and_stops_signing() {
	run(|| {
		register(ALICE, Sr25519Keyring::Alice, 5_000);
		let (first, s1, second, s2) = equivocation(ALICE, Sr25519Keyring::Alice, b"request 1");
		// Both receipts really are Alice's session key's signatures for this chain.
		assert!(first.verify(&s1, &Sr25519Keyring::Alice.public(), &genesis()));
		assert!(second.verify(&s2, &Sr25519Keyring::Alice.public(), &genesis()));
		assert_ok!(report(CHARLIE, &first, s1, &second, s2));
		// 10% of 5_000 went to the treasury.
		assert_eq!(stake(ALICE), 4_500);
		assert_eq!((held(ALICE), free(ALICE)), (4_500, ENDOWMENT - 5_000));
		assert_eq!(free(TREASURY), ENDOWMENT + 500);
		assert_eq!(free(CHARLIE), ENDOWMENT);
		assert_eq!(status(ALICE), WorkerStatus::Slashed);
		assert_eq!(Workers::active_worker(&ALICE), None);
		assert_eq!(ReportedEquivocations::<Test>::get(ALICE, first.request_hash), Some(1));
		System::assert_last_event(
			Event::WorkerEquivocated {
				worker: ALICE,
				request_hash: first.request_hash,
				slashed: 500,
				reporter: CHARLIE,
			}
			.into(),
		);
		// A slashed worker can do nothing but unbond.
		assert_noop!(Workers::bond_extra(RuntimeOrigin::signed(ALICE), 1), Error::<Test>::NotActive);
		assert_noop!(
			Workers::update(RuntimeOrigin::signed(ALICE), ENDPOINT.to_vec(), vec![0], 1),
			Error::<Test>::NotActive
		);
		assert_noop!(
			Workers::rotate_key(RuntimeOrigin::signed(ALICE), Sr25519Keyring::Eve.public()),
			Error::<Test>::NotActive
		);
	});
}

#[test]
fn equivocation_proof_is_used_once_per_request() {
	run(|| {
		register(ALICE, Sr25519Keyring::Alice, 5_000);
		let (first, s1, second, s2) = equivocation(ALICE, Sr25519Keyring::Alice, b"request 1");
		assert_ok!(report(CHARLIE, &first, s1, &second, s2));
		assert_noop!(report(BOB, &first, s1, &second, s2), Error::<Test>::AlreadyReported);
		// Swapped, or with a third receipt for the same request: still the same offence.
		assert_noop!(report(BOB, &second, s2, &first, s1), Error::<Test>::AlreadyReported);
		let third = receipt(ALICE, b"request 1", b"the answer is 6");
		let s3 = sign(Sr25519Keyring::Alice, &third);
		assert_noop!(report(BOB, &first, s1, &third, s3), Error::<Test>::AlreadyReported);
		// Equivocation on another request is another offence: 10% of what is left.
		let (first, s1, second, s2) = equivocation(ALICE, Sr25519Keyring::Alice, b"request 2");
		assert_ok!(report(BOB, &first, s1, &second, s2));
		assert_eq!(stake(ALICE), 4_050);
		assert_eq!(held(ALICE), 4_050);
		assert_eq!(free(TREASURY), ENDOWMENT + 950);
	});
}

#[test]
fn equivocation_proof_with_a_forged_signature_is_refused() {
	run(|| {
		register(ALICE, Sr25519Keyring::Alice, 5_000);
		let (first, s1, second, _) = equivocation(ALICE, Sr25519Keyring::Alice, b"request");
		// The second receipt "signed" by someone else's key.
		let forged = sign(Sr25519Keyring::Bob, &second);
		assert_noop!(report(CHARLIE, &first, s1, &second, forged), Error::<Test>::BadSignature);
		assert_noop!(report(CHARLIE, &second, forged, &first, s1), Error::<Test>::BadSignature);
		// The first receipt's signature passed off as the second's.
		assert_noop!(report(CHARLIE, &first, s1, &second, s1), Error::<Test>::BadSignature);
		// Genuine signatures, but for another chain.
		let other_chain = H256::repeat_byte(1);
		assert_ne!(other_chain, genesis());
		let pair = Sr25519Keyring::Alice.pair();
		let o1 = pair.sign(&first.signing_payload(&other_chain));
		let o2 = pair.sign(&second.signing_payload(&other_chain));
		assert_noop!(report(CHARLIE, &first, o1, &second, o2), Error::<Test>::BadSignature);
		assert_eq!((stake(ALICE), held(ALICE)), (5_000, 5_000));
		assert_eq!(free(TREASURY), ENDOWMENT);
		assert_eq!(status(ALICE), WorkerStatus::Active);
	});
}

#[test]
fn equivocation_needs_two_receipts_for_one_request_by_one_known_worker() {
	run(|| {
		register(ALICE, Sr25519Keyring::Alice, 5_000);
		register(BOB, Sr25519Keyring::Bob, 5_000);
		let key = Sr25519Keyring::Alice;
		let (first, s1, second, s2) = equivocation(ALICE, key, b"request");
		assert_noop!(
			Workers::report_equivocation(
				RuntimeOrigin::none(),
				Box::new(first.clone()),
				s1,
				Box::new(second.clone()),
				s2
			),
			DispatchError::BadOrigin
		);
		// The same receipt twice.
		assert_noop!(report(CHARLIE, &first, s1, &first, s1), Error::<Test>::NotEquivocation);
		// Different requests.
		let other = receipt(ALICE, b"another request", b"the answer is 5");
		let so = sign(key, &other);
		assert_noop!(report(CHARLIE, &first, s1, &other, so), Error::<Test>::NotEquivocation);
		// Different workers.
		let bobs = receipt(BOB, b"request", b"the answer is 5");
		let sb = sign(Sr25519Keyring::Bob, &bobs);
		assert_noop!(report(CHARLIE, &first, s1, &bobs, sb), Error::<Test>::NotEquivocation);
		// A worker that is not registered.
		let (first, s1, second, s2) = equivocation(CHARLIE, Sr25519Keyring::Charlie, b"request");
		assert_noop!(report(BOB, &first, s1, &second, s2), Error::<Test>::UnknownWorker);
	});
}

#[test]
fn unbonding_worker_is_still_slashed_for_equivocation() {
	run(|| {
		register(ALICE, Sr25519Keyring::Alice, 2_000);
		assert_ok!(Workers::unbond(RuntimeOrigin::signed(ALICE)));
		let (first, s1, second, s2) = equivocation(ALICE, Sr25519Keyring::Alice, b"request");
		assert_ok!(report(CHARLIE, &first, s1, &second, s2));
		assert_eq!(status(ALICE), WorkerStatus::Slashed);
		assert_eq!((stake(ALICE), held(ALICE)), (1_800, 1_800));
		// The unbonding clock starts again.
		System::set_block_number(1 + UNBONDING_DELAY);
		assert_noop!(
			Workers::withdraw_unbonded(RuntimeOrigin::signed(ALICE)),
			Error::<Test>::NotUnbonding
		);
		assert_ok!(Workers::unbond(RuntimeOrigin::signed(ALICE)));
		assert_eq!(status(ALICE), WorkerStatus::Unbonding { until: 1 + 2 * UNBONDING_DELAY });
		System::set_block_number(1 + 2 * UNBONDING_DELAY);
		assert_ok!(Workers::withdraw_unbonded(RuntimeOrigin::signed(ALICE)));
		assert_eq!((held(ALICE), free(ALICE)), (0, ENDOWMENT - 200));
		assert_eq!(free(TREASURY), ENDOWMENT + 200);
	});
}

#[test]
fn proof_cannot_slash_a_later_registration_twice() {
	run(|| {
		register(ALICE, Sr25519Keyring::Alice, 2_000);
		let (first, s1, second, s2) = equivocation(ALICE, Sr25519Keyring::Alice, b"request");
		assert_ok!(report(CHARLIE, &first, s1, &second, s2));
		assert_ok!(Workers::unbond(RuntimeOrigin::signed(ALICE)));
		System::set_block_number(1 + UNBONDING_DELAY);
		assert_ok!(Workers::withdraw_unbonded(RuntimeOrigin::signed(ALICE)));
		register(ALICE, Sr25519Keyring::Alice, 2_000);
		assert_noop!(report(CHARLIE, &first, s1, &second, s2), Error::<Test>::AlreadyReported);
		assert_eq!(status(ALICE), WorkerStatus::Active);
	});
}

#[test]
fn equivocation_without_stake_to_slash_is_refused() {
	run(|| {
		register(ALICE, Sr25519Keyring::Alice, MIN_STAKE);
		assert_ok!(Workers::slash(RuntimeOrigin::root(), ALICE, MIN_STAKE));
		let (first, s1, second, s2) = equivocation(ALICE, Sr25519Keyring::Alice, b"request");
		assert_noop!(report(CHARLIE, &first, s1, &second, s2), Error::<Test>::NothingToSlash);
	});
}

#[test]
fn try_state_catches_a_stake_that_is_not_held() {
	run(|| {
		register(ALICE, Sr25519Keyring::Alice, MIN_STAKE);
		assert_ok!(Workers::do_try_state());
		WorkerStore::<Test>::mutate(ALICE, |w| w.as_mut().unwrap().stake = MIN_STAKE + 1);
		assert!(Workers::do_try_state().is_err());
		WorkerStore::<Test>::mutate(ALICE, |w| w.as_mut().unwrap().stake = MIN_STAKE);
		SessionKeyOwner::<Test>::insert(Sr25519Keyring::Eve.public(), ALICE);
		assert!(Workers::do_try_state().is_err());
		SessionKeyOwner::<Test>::remove(Sr25519Keyring::Eve.public());
		// Retired keys of no worker, an empty list, a list out of order.
		let eve = Sr25519Keyring::Eve.public();
		RetiredKeys::<Test>::insert(BOB, BoundedVec::truncate_from(vec![(eve, 5)]));
		assert!(Workers::do_try_state().is_err());
		RetiredKeys::<Test>::remove(BOB);
		RetiredKeys::<Test>::insert(ALICE, BoundedVec::truncate_from(vec![]));
		assert!(Workers::do_try_state().is_err());
		RetiredKeys::<Test>::insert(ALICE, BoundedVec::truncate_from(vec![(eve, 6), (eve, 5)]));
		assert!(Workers::do_try_state().is_err());
		RetiredKeys::<Test>::insert(ALICE, BoundedVec::truncate_from(vec![(eve, 5), (eve, 6)]));
		assert_ok!(Workers::do_try_state());
		RetiredKeys::<Test>::remove(ALICE);
	});
}

#[test]
fn equivocation_evidence_expires_an_unbonding_delay_after_its_receipts() {
	run(|| {
		register(ALICE, Sr25519Keyring::Alice, 5_000);
		// What a worker that lost its outbox might sign: a second receipt for a request it
		// answered long ago, whose first receipt a payer kept.
		let (first, s1, mut second, _) = equivocation(ALICE, Sr25519Keyring::Alice, b"request 1");
		second.expires_at = first.expires_at - 10;
		let s2 = sign(Sr25519Keyring::Alice, &second);
		System::set_block_number(first.expires_at as u64 + UNBONDING_DELAY + 1);
		assert_noop!(report(CHARLIE, &first, s1, &second, s2), Error::<Test>::EvidenceExpired);
		assert_noop!(report(CHARLIE, &second, s2, &first, s1), Error::<Test>::EvidenceExpired);
		// The last block of the window still takes it.
		System::set_block_number(first.expires_at as u64 + UNBONDING_DELAY);
		assert_ok!(report(CHARLIE, &first, s1, &second, s2));
		assert_eq!(WorkerStore::<Test>::get(ALICE).unwrap().status, WorkerStatus::Slashed);
	});
}
