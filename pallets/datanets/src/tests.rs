//! Behaviour of every call: success with balances and holds, wrong origin, each error.

use crate::{mock::*, ContentIndex, Contributions, ContributionStatus, DataNets as DataNetStore, Error, Event, HoldReason, NextDataNetId, RewardPerItem};
use openledger_primitives::{item_hash, traits::{DataNetsInspect, TrainingRewards}};
use polkadot_sdk::{
	frame_support::{assert_noop, assert_ok, traits::fungible::{Inspect, InspectHold, Mutate, MutateHold}},
	sp_runtime::DispatchError,
};

fn create(owner: AccountId) -> u32 {
	let id = NextDataNetId::<Test>::get();
	assert_ok!(DataNets::create_datanet(
		RuntimeOrigin::signed(owner),
		b"wiki".to_vec(),
		item_hash("metadata"),
		b"ipfs://meta".to_vec(),
		b"CC-BY".to_vec(),
		CONTRIBUTION_DEPOSIT,
	));
	id
}

fn contribute(who: AccountId, datanet: u32, text: &str) -> u32 {
	let item = DataNetStore::<Test>::get(datanet).unwrap().next_item;
	assert_ok!(DataNets::contribute(RuntimeOrigin::signed(who), datanet, item_hash(text), text.len() as u64));
	item
}

/// Lets an accepted item leave all the way: the call marks it, the hold passes, the call removes it.
fn leave_fully(leave: impl Fn() -> polkadot_sdk::sp_runtime::DispatchResult) {
	assert_ok!(leave());
	System::set_block_number(System::block_number() + LEAVE_HOLD);
	assert_ok!(leave());
}

fn held(reason: HoldReason, who: AccountId) -> Balance {
	Balances::balance_on_hold(&reason.into(), &who)
}

#[test]
fn create_datanet_holds_deposit_and_records_it() {
	run(|| {
		let id = create(OWNER);
		let net = DataNetStore::<Test>::get(id).unwrap();
		assert_eq!(net.owner, OWNER);
		assert_eq!(net.name.to_vec(), b"wiki".to_vec());
		assert_eq!(net.contribution_deposit, CONTRIBUTION_DEPOSIT);
		assert_eq!(held(HoldReason::DataNetDeposit, OWNER), DATANET_DEPOSIT);
		assert_eq!(Balances::balance(&OWNER), ENDOWMENT - DATANET_DEPOSIT);
		assert_eq!(NextDataNetId::<Test>::get(), 1);
		System::assert_last_event(Event::DataNetCreated { datanet: id, owner: OWNER }.into());
	});
}

#[test]
fn create_datanet_rejects_bad_input() {
	run(|| {
		let h = item_hash("m");
		let call = |origin, name: &[u8], uri: &[u8], license: &[u8], deposit| {
			DataNets::create_datanet(origin, name.to_vec(), h, uri.to_vec(), license.to_vec(), deposit)
		};
		assert_noop!(call(RuntimeOrigin::none(), b"n", b"u", b"l", 100), DispatchError::BadOrigin);
		assert_noop!(call(RuntimeOrigin::signed(OWNER), &[0; 17], b"u", b"l", 100), Error::<Test>::NameTooLong);
		assert_noop!(call(RuntimeOrigin::signed(OWNER), b"n", &[0; 33], b"l", 100), Error::<Test>::UriTooLong);
		assert_noop!(call(RuntimeOrigin::signed(OWNER), b"n", b"u", &[0; 9], 100), Error::<Test>::LicenseTooLong);
		assert_noop!(call(RuntimeOrigin::signed(OWNER), b"n", b"u", b"l", 9), Error::<Test>::DepositTooLow);
		assert_noop!(call(RuntimeOrigin::signed(POOR), b"n", b"u", b"l", 100), Error::<Test>::InsufficientBalance);
		NextDataNetId::<Test>::put(u32::MAX);
		assert_noop!(call(RuntimeOrigin::signed(OWNER), b"n", b"u", b"l", 100), Error::<Test>::IdsExhausted);
	});
}

#[test]
fn update_metadata_is_owner_only_and_bounded() {
	run(|| {
		let id = create(OWNER);
		let h = item_hash("new");
		assert_ok!(DataNets::update_metadata(RuntimeOrigin::signed(OWNER), id, b"new".to_vec(), h, b"u2".to_vec(), b"MIT".to_vec()));
		let net = DataNetStore::<Test>::get(id).unwrap();
		assert_eq!((net.name.to_vec(), net.metadata_hash, net.license.to_vec()), (b"new".to_vec(), h, b"MIT".to_vec()));
		System::assert_last_event(Event::DataNetUpdated { datanet: id }.into());
		let update = |origin, id, name: &[u8], uri: &[u8], license: &[u8]| {
			DataNets::update_metadata(origin, id, name.to_vec(), h, uri.to_vec(), license.to_vec())
		};
		assert_noop!(update(RuntimeOrigin::none(), id, b"n", b"u", b"l"), DispatchError::BadOrigin);
		assert_noop!(update(RuntimeOrigin::signed(ALICE), id, b"n", b"u", b"l"), Error::<Test>::NotOwner);
		assert_noop!(update(RuntimeOrigin::signed(OWNER), 7, b"n", b"u", b"l"), Error::<Test>::UnknownDataNet);
		assert_noop!(update(RuntimeOrigin::signed(OWNER), id, &[0; 17], b"u", b"l"), Error::<Test>::NameTooLong);
		assert_noop!(update(RuntimeOrigin::signed(OWNER), id, b"n", &[0; 33], b"l"), Error::<Test>::UriTooLong);
		assert_noop!(update(RuntimeOrigin::signed(OWNER), id, b"n", b"u", &[0; 9]), Error::<Test>::LicenseTooLong);
	});
}

#[test]
fn curators_are_added_and_removed_by_the_owner() {
	run(|| {
		let id = create(OWNER);
		assert_noop!(DataNets::add_curator(RuntimeOrigin::none(), id, CURATOR), DispatchError::BadOrigin);
		assert_noop!(DataNets::add_curator(RuntimeOrigin::signed(ALICE), id, CURATOR), Error::<Test>::NotOwner);
		assert_noop!(DataNets::add_curator(RuntimeOrigin::signed(OWNER), 9, CURATOR), Error::<Test>::UnknownDataNet);
		assert_ok!(DataNets::add_curator(RuntimeOrigin::signed(OWNER), id, CURATOR));
		System::assert_last_event(Event::CuratorAdded { datanet: id, curator: CURATOR }.into());
		assert_noop!(DataNets::add_curator(RuntimeOrigin::signed(OWNER), id, CURATOR), Error::<Test>::AlreadyCurator);
		assert_ok!(DataNets::add_curator(RuntimeOrigin::signed(OWNER), id, ALICE));
		assert_noop!(DataNets::add_curator(RuntimeOrigin::signed(OWNER), id, BOB), Error::<Test>::TooManyCurators);

		assert_noop!(DataNets::remove_curator(RuntimeOrigin::none(), id, ALICE), DispatchError::BadOrigin);
		assert_noop!(DataNets::remove_curator(RuntimeOrigin::signed(ALICE), id, ALICE), Error::<Test>::NotOwner);
		assert_noop!(DataNets::remove_curator(RuntimeOrigin::signed(OWNER), id, BOB), Error::<Test>::NotCurator);
		assert_noop!(DataNets::remove_curator(RuntimeOrigin::signed(OWNER), 9, BOB), Error::<Test>::UnknownDataNet);
		assert_ok!(DataNets::remove_curator(RuntimeOrigin::signed(OWNER), id, ALICE));
		System::assert_last_event(Event::CuratorRemoved { datanet: id, curator: ALICE }.into());
		assert_eq!(DataNetStore::<Test>::get(id).unwrap().curators.to_vec(), vec![CURATOR]);
	});
}

#[test]
fn contribution_holds_deposit_and_indexes_content() {
	run(|| {
		let id = create(OWNER);
		let item = contribute(ALICE, id, "The sky is blue.");
		let c = Contributions::<Test>::get(id, item).unwrap();
		assert_eq!((c.contributor, c.status, c.deposit), (ALICE, ContributionStatus::Pending, CONTRIBUTION_DEPOSIT));
		assert_eq!(ContentIndex::<Test>::get(id, item_hash("The sky is blue.")), Some(item));
		assert_eq!(held(HoldReason::ContributionDeposit, ALICE), CONTRIBUTION_DEPOSIT);
		assert_eq!(Balances::balance(&ALICE), ENDOWMENT - CONTRIBUTION_DEPOSIT);
		System::assert_last_event(
			Event::Contributed { datanet: id, item, contributor: ALICE, content_hash: item_hash("The sky is blue.") }.into(),
		);
	});
}

#[test]
fn contribution_rejects_bad_input() {
	run(|| {
		let id = create(OWNER);
		let h = item_hash("x");
		assert_noop!(DataNets::contribute(RuntimeOrigin::none(), id, h, 1), DispatchError::BadOrigin);
		assert_noop!(DataNets::contribute(RuntimeOrigin::signed(ALICE), 5, h, 1), Error::<Test>::UnknownDataNet);
		assert_noop!(DataNets::contribute(RuntimeOrigin::signed(ALICE), id, h, 0), Error::<Test>::EmptyItem);
		assert_noop!(DataNets::contribute(RuntimeOrigin::signed(ALICE), id, h, 1_001), Error::<Test>::ItemTooLarge);
		assert_noop!(DataNets::contribute(RuntimeOrigin::signed(POOR), id, h, 1), Error::<Test>::InsufficientBalance);
		contribute(ALICE, id, "x");
		assert_noop!(DataNets::contribute(RuntimeOrigin::signed(BOB), id, h, 1), Error::<Test>::DuplicateContent);
		contribute(ALICE, id, "y");
		contribute(BOB, id, "z");
		assert_noop!(DataNets::contribute(RuntimeOrigin::signed(BOB), id, item_hash("w"), 1), Error::<Test>::TooManyItems);
		DataNetStore::<Test>::mutate(id, |net| {
			let net = net.as_mut().unwrap();
			net.next_item = u32::MAX;
			net.live_items = 0;
		});
		assert_noop!(DataNets::contribute(RuntimeOrigin::signed(BOB), id, item_hash("w"), 1), Error::<Test>::IdsExhausted);
		DataNetStore::<Test>::mutate(id, |net| net.as_mut().unwrap().live_items = 3);
	});
}

#[test]
fn curators_and_owner_accept_pending_items() {
	run(|| {
		let id = create(OWNER);
		assert_ok!(DataNets::add_curator(RuntimeOrigin::signed(OWNER), id, CURATOR));
		let a = contribute(ALICE, id, "a");
		let b = contribute(BOB, id, "b");
		assert_noop!(DataNets::accept(RuntimeOrigin::none(), id, a), DispatchError::BadOrigin);
		assert_noop!(DataNets::accept(RuntimeOrigin::signed(ALICE), id, a), Error::<Test>::NotCurator);
		assert_noop!(DataNets::accept(RuntimeOrigin::signed(CURATOR), 3, a), Error::<Test>::UnknownDataNet);
		assert_noop!(DataNets::accept(RuntimeOrigin::signed(CURATOR), id, 42), Error::<Test>::UnknownItem);
		assert_ok!(DataNets::accept(RuntimeOrigin::signed(CURATOR), id, a));
		System::assert_last_event(Event::ContributionAccepted { datanet: id, item: a, curator: CURATOR }.into());
		assert_ok!(DataNets::accept(RuntimeOrigin::signed(OWNER), id, b));
		assert_noop!(DataNets::accept(RuntimeOrigin::signed(CURATOR), id, a), Error::<Test>::NotPending);
		assert_eq!(DataNets::accepted_item(id, a), Some((ALICE, item_hash("a"))));
		assert_eq!(<DataNets as DataNetsInspect<_>>::accepted_count(id), 2);
		// Accepted items keep their deposit held until withdrawn.
		assert_eq!(held(HoldReason::ContributionDeposit, ALICE), CONTRIBUTION_DEPOSIT);
	});
}

#[test]
fn rejected_contribution_forfeits_deposit() {
	run(|| {
		let id = create(OWNER);
		let a = contribute(ALICE, id, "spam");
		assert_noop!(DataNets::reject(RuntimeOrigin::none(), id, a), DispatchError::BadOrigin);
		assert_noop!(DataNets::reject(RuntimeOrigin::signed(BOB), id, a), Error::<Test>::NotCurator);
		assert_noop!(DataNets::reject(RuntimeOrigin::signed(OWNER), 8, a), Error::<Test>::UnknownDataNet);
		assert_noop!(DataNets::reject(RuntimeOrigin::signed(OWNER), id, 8), Error::<Test>::UnknownItem);
		assert_ok!(DataNets::reject(RuntimeOrigin::signed(OWNER), id, a));
		System::assert_last_event(Event::ContributionRejected { datanet: id, item: a, forfeited: 20 }.into());
		assert_eq!(held(HoldReason::ContributionDeposit, ALICE), 0);
		assert_eq!(Balances::balance(&ALICE), ENDOWMENT - 20);
		assert_eq!(Balances::balance(&TREASURY), ENDOWMENT + 20);
		assert!(Contributions::<Test>::get(id, a).is_none());
		// The content may be offered again.
		let again = contribute(BOB, id, "spam");
		assert_ok!(DataNets::accept(RuntimeOrigin::signed(OWNER), id, again));
		assert_noop!(DataNets::reject(RuntimeOrigin::signed(OWNER), id, again), Error::<Test>::NotPending);
	});
}

#[test]
fn pending_item_is_withdrawn_with_its_deposit() {
	run(|| {
		let id = create(OWNER);
		let a = contribute(ALICE, id, "mine");
		assert_noop!(DataNets::withdraw_contribution(RuntimeOrigin::none(), id, a), DispatchError::BadOrigin);
		assert_noop!(DataNets::withdraw_contribution(RuntimeOrigin::signed(BOB), id, a), Error::<Test>::NotContributor);
		assert_noop!(DataNets::withdraw_contribution(RuntimeOrigin::signed(ALICE), 4, a), Error::<Test>::UnknownDataNet);
		assert_noop!(DataNets::withdraw_contribution(RuntimeOrigin::signed(ALICE), id, 4), Error::<Test>::UnknownItem);
		assert_ok!(DataNets::withdraw_contribution(RuntimeOrigin::signed(ALICE), id, a));
		System::assert_last_event(Event::ContributionWithdrawn { datanet: id, item: a }.into());
		assert_eq!(Balances::balance(&ALICE), ENDOWMENT);
		assert_eq!(held(HoldReason::ContributionDeposit, ALICE), 0);
		assert_eq!(DataNetStore::<Test>::get(id).unwrap().live_items, 0);
	});
}

/// Pays `amount` into the pool as the attribution pallet does.
fn pay_training(datanet: u32, amount: Balance) {
	assert_ok!(Balances::transfer(&TREASURY, &DataNets::reward_pool_account(), amount, polkadot_sdk::frame_support::traits::tokens::Preservation::Preserve));
	DataNets::note_training_reward(datanet, amount);
}

#[test]
fn accepted_items_share_training_rewards_equally() {
	run(|| {
		let id = create(OWNER);
		let a = contribute(ALICE, id, "a");
		let b = contribute(BOB, id, "b");
		let pending = contribute(BOB, id, "c");
		assert_ok!(DataNets::accept(RuntimeOrigin::signed(OWNER), id, a));
		assert_ok!(DataNets::accept(RuntimeOrigin::signed(OWNER), id, b));
		pay_training(id, 300);
		assert_eq!(RewardPerItem::<Test>::get(id), 150);
		assert_eq!(DataNets::unclaimed_rewards(id, a), 150);
		assert_eq!(DataNets::unclaimed_rewards(id, pending), 0);
		assert_noop!(DataNets::claim_rewards(RuntimeOrigin::none(), id, a), DispatchError::BadOrigin);
		assert_noop!(DataNets::claim_rewards(RuntimeOrigin::signed(ALICE), id, 9), Error::<Test>::UnknownItem);
		assert_noop!(DataNets::claim_rewards(RuntimeOrigin::signed(ALICE), id, pending), Error::<Test>::NothingToClaim);
		// Anyone may trigger the claim; the contributor is paid.
		assert_ok!(DataNets::claim_rewards(RuntimeOrigin::signed(OWNER), id, a));
		System::assert_last_event(Event::RewardsClaimed { datanet: id, item: a, contributor: ALICE, amount: 150 }.into());
		assert_eq!(Balances::balance(&ALICE), ENDOWMENT - CONTRIBUTION_DEPOSIT + 150);
		assert_noop!(DataNets::claim_rewards(RuntimeOrigin::signed(ALICE), id, a), Error::<Test>::NothingToClaim);
		// An item accepted later shares only later rewards.
		assert_ok!(DataNets::accept(RuntimeOrigin::signed(OWNER), id, pending));
		pay_training(id, 30);
		assert_eq!(DataNets::unclaimed_rewards(id, pending), 10);
		assert_eq!(DataNets::unclaimed_rewards(id, b), 160);
		// Withdrawing an accepted item pays its rewards and releases its deposit.
		leave_fully(|| DataNets::withdraw_contribution(RuntimeOrigin::signed(BOB), id, b));
		assert_eq!(Balances::balance(&BOB), ENDOWMENT - CONTRIBUTION_DEPOSIT + 160);
		assert_eq!(DataNets::accepted_item(id, b), None);
		assert_eq!(<DataNets as DataNetsInspect<_>>::accepted_count(id), 2);
	});
}

#[test]
fn training_reward_without_accepted_items_changes_nothing() {
	run(|| {
		let id = create(OWNER);
		DataNets::note_training_reward(id, 100);
		assert_eq!(RewardPerItem::<Test>::get(id), 0);
		assert!(!DataNets::datanet_open(id + 1));
		assert!(DataNets::datanet_open(id));
	});
}

#[test]
fn an_empty_datanet_closes_at_once_and_returns_its_deposit() {
	run(|| {
		let id = create(OWNER);
		assert_noop!(DataNets::close_datanet(RuntimeOrigin::signed(ALICE), id), Error::<Test>::NotOwner);
		assert_noop!(DataNets::close_datanet(RuntimeOrigin::signed(OWNER), id + 1), Error::<Test>::UnknownDataNet);
		assert_ok!(DataNets::close_datanet(RuntimeOrigin::signed(OWNER), id));
		System::assert_last_event(Event::DataNetClosed { datanet: id, owner: OWNER, deposit: DATANET_DEPOSIT }.into());
		assert!(DataNetStore::<Test>::get(id).is_none());
		assert_eq!(held(HoldReason::DataNetDeposit, OWNER), 0);
		assert_eq!(Balances::balance(&OWNER), ENDOWMENT);
		assert!(!DataNets::datanet_open(id));
		assert_noop!(DataNets::contribute(RuntimeOrigin::signed(ALICE), id, item_hash("x"), 1), Error::<Test>::UnknownDataNet);
		// Ids are never reused.
		assert_eq!(create(OWNER), id + 1);
	});
}

/// Closing with items left: nothing new comes in, anyone reaps the items (rewards paid, deposits
/// released in full), and the last one takes the DataNet and releases the owner's deposit.
#[test]
fn a_closing_datanet_is_reaped_item_by_item() {
	run(|| {
		let id = create(OWNER);
		let accepted = contribute(ALICE, id, "a");
		let pending = contribute(BOB, id, "b");
		assert_ok!(DataNets::accept(RuntimeOrigin::signed(OWNER), id, accepted));
		pay_training(id, 50);
		assert_noop!(DataNets::reap_item(RuntimeOrigin::signed(CURATOR), id, pending), Error::<Test>::NotClosing);

		assert_ok!(DataNets::close_datanet(RuntimeOrigin::signed(OWNER), id));
		System::assert_last_event(Event::ClosingStarted { datanet: id, live_items: 2 }.into());
		assert_noop!(DataNets::close_datanet(RuntimeOrigin::signed(OWNER), id), Error::<Test>::DataNetClosing);
		assert_noop!(DataNets::contribute(RuntimeOrigin::signed(ALICE), id, item_hash("c"), 1), Error::<Test>::DataNetClosing);
		assert_noop!(DataNets::accept(RuntimeOrigin::signed(OWNER), id, pending), Error::<Test>::DataNetClosing);
		// A new adapter may not name it; its accepted items still serve until reaped.
		assert!(!DataNets::datanet_open(id));
		assert_eq!(DataNets::accepted_item(id, accepted).map(|(who, _)| who), Some(ALICE));

		assert_noop!(DataNets::reap_item(RuntimeOrigin::none(), id, pending), DispatchError::BadOrigin);
		assert_noop!(DataNets::reap_item(RuntimeOrigin::signed(CURATOR), id, 9), Error::<Test>::UnknownItem);
		// A pending item's contributor gets the whole deposit back: no penalty for the close.
		assert_ok!(DataNets::reap_item(RuntimeOrigin::signed(CURATOR), id, pending));
		System::assert_last_event(Event::ContributionReaped { datanet: id, item: pending }.into());
		assert_eq!(Balances::balance(&BOB), ENDOWMENT);
		assert!(DataNetStore::<Test>::get(id).is_some());
		assert_eq!(held(HoldReason::DataNetDeposit, OWNER), DATANET_DEPOSIT);

		// The last item: its rewards and deposit to the contributor, then the DataNet goes.
		leave_fully(|| DataNets::reap_item(RuntimeOrigin::signed(CURATOR), id, accepted));
		System::assert_has_event(Event::RewardsClaimed { datanet: id, item: accepted, contributor: ALICE, amount: 50 }.into());
		System::assert_has_event(Event::ContributionReaped { datanet: id, item: accepted }.into());
		System::assert_last_event(Event::DataNetClosed { datanet: id, owner: OWNER, deposit: DATANET_DEPOSIT }.into());
		assert_eq!(Balances::balance(&ALICE), ENDOWMENT + 50);
		assert_eq!(Balances::balance(&OWNER), ENDOWMENT);
		assert!(DataNetStore::<Test>::get(id).is_none());
		assert!(!RewardPerItem::<Test>::contains_key(id));
		assert_eq!(Contributions::<Test>::iter_prefix(id).count(), 0);
		assert_eq!(ContentIndex::<Test>::iter_prefix(id).count(), 0);
		assert_noop!(DataNets::reap_item(RuntimeOrigin::signed(CURATOR), id, accepted), Error::<Test>::UnknownDataNet);
	});
}

/// The last item of a closing DataNet may also leave by its contributor's withdrawal, which
/// takes the DataNet with it. Curators may not reject in a closing DataNet: the penalty would
/// fall on contributors who did nothing wrong.
#[test]
fn withdrawing_the_last_item_finishes_the_close_and_rejecting_is_refused() {
	run(|| {
		let id = create(OWNER);
		assert_ok!(DataNets::add_curator(RuntimeOrigin::signed(OWNER), id, CURATOR));
		let item = contribute(ALICE, id, "a");
		assert_ok!(DataNets::close_datanet(RuntimeOrigin::signed(OWNER), id));
		assert_noop!(DataNets::reject(RuntimeOrigin::signed(CURATOR), id, item), Error::<Test>::DataNetClosing);
		assert_ok!(DataNets::withdraw_contribution(RuntimeOrigin::signed(ALICE), id, item));
		System::assert_last_event(Event::DataNetClosed { datanet: id, owner: OWNER, deposit: DATANET_DEPOSIT }.into());
		assert!(DataNetStore::<Test>::get(id).is_none());
		assert_eq!(held(HoldReason::DataNetDeposit, OWNER), 0);
		assert_eq!(Balances::balance(&OWNER), ENDOWMENT);
		assert_eq!(Balances::balance(&ALICE), ENDOWMENT);
	});
}

#[test]
fn try_state_catches_a_closing_datanet_left_empty_and_a_stale_reward_index() {
	run(|| {
		let id = create(OWNER);
		let item = contribute(ALICE, id, "a");
		assert_ok!(DataNets::close_datanet(RuntimeOrigin::signed(OWNER), id));
		// What a removal that forgot to finish the close would leave.
		DataNetStore::<Test>::mutate(id, |net| net.as_mut().unwrap().live_items = 0);
		Contributions::<Test>::remove(id, item);
		ContentIndex::<Test>::remove(id, item_hash("a"));
		assert!(DataNets::do_try_state().is_err());
		DataNetStore::<Test>::mutate(id, |net| net.as_mut().unwrap().closing = false);
		// (the held deposit of the removed item is released so only the index check remains)
		assert_ok!(Balances::release(&HoldReason::ContributionDeposit.into(), &ALICE, CONTRIBUTION_DEPOSIT, polkadot_sdk::frame_support::traits::tokens::Precision::Exact));
		DataNets::do_try_state().unwrap();
		RewardPerItem::<Test>::insert(id + 7, 1);
		assert!(DataNets::do_try_state().is_err());
		RewardPerItem::<Test>::remove(id + 7);
	});
}

#[test]
fn content_index_hashes_the_contributors_hash() {
	run(|| {
		let id = create(OWNER);
		contribute(ALICE, id, "a");
		// Under the Identity hasher the key ended in the hash itself, placed wherever its
		// contributor chose; now a Blake2-128 of it comes first.
		let hash = item_hash("a");
		let key = ContentIndex::<Test>::hashed_key_for(id, hash);
		let suffix = [polkadot_sdk::sp_io::hashing::blake2_128(hash.as_bytes()).as_slice(), hash.as_bytes()].concat();
		assert!(key.ends_with(&suffix));
	});
}

#[test]
fn the_v1_migration_rehashes_every_entry_once() {
	use crate::migrations::v1::{v0, MigrateToV1};
	use polkadot_sdk::frame_support::traits::{GetStorageVersion, OnRuntimeUpgrade, StorageVersion};
	run(|| {
		let id = create(OWNER);
		let items: Vec<_> = ["a", "b", "c"].iter().map(|text| (item_hash(text), contribute(ALICE, id, text))).collect();
		// The chain as version 0 left it.
		for &(hash, item) in &items {
			ContentIndex::<Test>::remove(id, hash);
			v0::ContentIndex::<Test>::insert(id, hash, item);
		}
		StorageVersion::new(0).put::<DataNets>();
		assert_eq!(ContentIndex::<Test>::get(id, items[0].0), None);

		MigrateToV1::<Test>::on_runtime_upgrade();
		assert_eq!(DataNets::on_chain_storage_version(), StorageVersion::new(1));
		for &(hash, item) in &items {
			assert_eq!(ContentIndex::<Test>::get(id, hash), Some(item));
		}
		assert_eq!(ContentIndex::<Test>::iter_prefix(id).count(), items.len());
		// A second run finds version 1 and leaves the index alone.
		MigrateToV1::<Test>::on_runtime_upgrade();
		assert_eq!(ContentIndex::<Test>::iter_prefix(id).count(), items.len());
	});
}

/// An accepted item that is withdrawn still counts as accepted for `LeaveHold` blocks (receipts
/// of requests it served still settle and pay its contributor); then the same call removes it.
#[test]
fn an_accepted_item_leaves_in_two_steps() {
	use crate::Leaving;
	run(|| {
		let id = create(OWNER);
		let item = contribute(ALICE, id, "a");
		assert_ok!(DataNets::accept(RuntimeOrigin::signed(OWNER), id, item));
		let at = System::block_number();
		assert_ok!(DataNets::withdraw_contribution(RuntimeOrigin::signed(ALICE), id, item));
		System::assert_last_event(Event::ContributionLeaving { datanet: id, item, until: at + LEAVE_HOLD }.into());
		assert_eq!(Leaving::<Test>::get(id, item), Some(at + LEAVE_HOLD));
		assert_eq!(DataNets::accepted_item(id, item).map(|(who, _)| who), Some(ALICE), "still accepted");
		assert_eq!(<DataNets as DataNetsInspect<_>>::accepted_count(id), 1);
		assert_eq!(held(HoldReason::ContributionDeposit, ALICE), CONTRIBUTION_DEPOSIT);
		System::set_block_number(at + LEAVE_HOLD - 1);
		assert_noop!(DataNets::withdraw_contribution(RuntimeOrigin::signed(ALICE), id, item), Error::<Test>::StillLeaving);
		DataNets::do_try_state().unwrap();
		System::set_block_number(at + LEAVE_HOLD);
		assert_ok!(DataNets::withdraw_contribution(RuntimeOrigin::signed(ALICE), id, item));
		System::assert_last_event(Event::ContributionWithdrawn { datanet: id, item }.into());
		assert_eq!(DataNets::accepted_item(id, item), None);
		assert!(!Leaving::<Test>::contains_key(id, item));
		assert_eq!(held(HoldReason::ContributionDeposit, ALICE), 0);
	});
}

#[test]
fn try_state_catches_a_leaving_mark_without_an_accepted_item() {
	use crate::Leaving;
	run(|| {
		let id = create(OWNER);
		let item = contribute(ALICE, id, "a");
		Leaving::<Test>::insert(id, item, System::block_number());
		assert!(DataNets::do_try_state().is_err(), "a pending item cannot be leaving");
		assert_ok!(DataNets::accept(RuntimeOrigin::signed(OWNER), id, item));
		Leaving::<Test>::insert(id, item, System::block_number() + LEAVE_HOLD + 1);
		assert!(DataNets::do_try_state().is_err());
		Leaving::<Test>::remove(id, item);
	});
}
