//! Benchmarks of the DataNets pallet, each at the worst case of its bounds: names, uris and
//! licenses at their longest, curator lists full (the caller of `accept` and `reject` the last
//! curator, so the membership scan is longest), withdrawn and reaped items accepted with rewards
//! to pay, and withdrawals and reaps removing the last item of a closing DataNet (which then goes
//! too).

use super::*;
use alloc::{vec, vec::Vec};
use openledger_primitives::{traits::TrainingRewards, DataNetId, ItemId};
use polkadot_sdk::{
	frame_benchmarking::v2::*,
	frame_support::traits::{
		fungible::{Inspect, InspectHold, Mutate},
		Get,
	},
	frame_system::{self, RawOrigin},
	sp_core::H256,
	sp_runtime::traits::{Saturating, Zero},
};

/// Moves the chain past an accepted item's leaving hold.
fn pass_leave_hold<T: Config>() {
	let now = frame_system::Pallet::<T>::block_number();
	frame_system::Pallet::<T>::set_block_number(now.saturating_add(T::LeaveHold::get()));
}

/// Funds `who` for the deposits of a few DataNets and contributions.
fn fund<T: Config>(who: &T::AccountId) {
	let deposits = T::DataNetDeposit::get().saturating_add(T::MinContributionDeposit::get());
	T::Currency::set_balance(
		who,
		T::Currency::minimum_balance().saturating_add(deposits.saturating_mul(4u32.into())),
	);
}

/// A funded account.
fn funded<T: Config>(name: &'static str, index: u32) -> T::AccountId {
	let who: T::AccountId = account(name, index, 0);
	fund::<T>(&who);
	who
}

fn name<T: Config>() -> Vec<u8> {
	vec![b'n'; T::MaxNameLen::get() as usize]
}

fn uri<T: Config>() -> Vec<u8> {
	vec![b'u'; T::MaxUriLen::get() as usize]
}

fn license<T: Config>() -> Vec<u8> {
	vec![b'l'; T::MaxLicenseLen::get() as usize]
}

fn curator<T: Config>(i: u32) -> T::AccountId {
	account("curator", i, 0)
}

/// Creates a DataNet of `owner` with the longest name, uri and license and `curators` curators.
fn datanet<T: Config>(owner: &T::AccountId, curators: u32) -> Result<DataNetId, BenchmarkError> {
	let id = NextDataNetId::<T>::get();
	Pallet::<T>::create_datanet(
		RawOrigin::Signed(owner.clone()).into(),
		name::<T>(),
		H256::repeat_byte(1),
		uri::<T>(),
		license::<T>(),
		T::MinContributionDeposit::get(),
	)?;
	for i in 0..curators {
		Pallet::<T>::add_curator(RawOrigin::Signed(owner.clone()).into(), id, curator::<T>(i))?;
	}
	Ok(id)
}

/// A DataNet with the most curators it may have and a pending item of `contributor`.
fn pending_item<T: Config>(
	contributor: &T::AccountId,
) -> Result<(DataNetId, ItemId), BenchmarkError> {
	let owner = funded::<T>("owner", 0);
	let id = datanet::<T>(&owner, T::MaxCurators::get())?;
	let item = DataNets::<T>::get(id).ok_or(BenchmarkError::Stop("no DataNet"))?.next_item;
	Pallet::<T>::contribute(
		RawOrigin::Signed(contributor.clone()).into(),
		id,
		H256::repeat_byte(2),
		T::MaxItemBytes::get(),
	)?;
	Ok((id, item))
}

/// An accepted item of `contributor` with `reward` of training rewards unclaimed, the reward pool
/// funded to pay them.
fn rewarded_item<T: Config>(
	contributor: &T::AccountId,
) -> Result<(DataNetId, ItemId, BalanceOf<T>), BenchmarkError> {
	let (id, item) = pending_item::<T>(contributor)?;
	let last = curator::<T>(T::MaxCurators::get() - 1);
	Pallet::<T>::accept(RawOrigin::Signed(last).into(), id, item)?;
	let reward: BalanceOf<T> = 1_000u32.into();
	T::Currency::set_balance(
		&Pallet::<T>::reward_pool(),
		T::Currency::minimum_balance().saturating_add(reward),
	);
	<Pallet<T> as TrainingRewards<T::AccountId, BalanceOf<T>>>::note_training_reward(id, reward);
	if Pallet::<T>::unclaimed_rewards(id, item) != reward {
		return Err(BenchmarkError::Stop("the item did not earn the reward"));
	}
	Ok((id, item, reward))
}

/// Starts closing DataNet `id` (which holds items), so removing its last item removes it too:
/// the worst case of every call that removes an item.
fn start_closing<T: Config>(id: DataNetId) -> Result<(), BenchmarkError> {
	let owner = DataNets::<T>::get(id).ok_or(BenchmarkError::Stop("no DataNet"))?.owner;
	Pallet::<T>::close_datanet(RawOrigin::Signed(owner).into(), id)?;
	Ok(())
}

fn assert_last_event<T: Config>(event: Event<T>) {
	frame_system::Pallet::<T>::assert_last_event(event.into());
}

#[benchmarks]
mod benchmarks {
	use super::*;

	#[benchmark]
	fn create_datanet() {
		let caller: T::AccountId = whitelisted_caller();
		fund::<T>(&caller);
		let id = NextDataNetId::<T>::get();

		#[extrinsic_call]
		_(
			RawOrigin::Signed(caller.clone()),
			name::<T>(),
			H256::repeat_byte(1),
			uri::<T>(),
			license::<T>(),
			T::MinContributionDeposit::get(),
		);

		assert_last_event::<T>(Event::DataNetCreated { datanet: id, owner: caller.clone() });
		assert_eq!(
			T::Currency::balance_on_hold(&HoldReason::DataNetDeposit.into(), &caller),
			T::DataNetDeposit::get()
		);
	}

	#[benchmark]
	fn update_metadata() -> Result<(), BenchmarkError> {
		let caller: T::AccountId = whitelisted_caller();
		fund::<T>(&caller);
		let id = datanet::<T>(&caller, 0)?;
		let metadata_hash = H256::repeat_byte(9);

		#[extrinsic_call]
		_(
			RawOrigin::Signed(caller),
			id,
			vec![b'N'; T::MaxNameLen::get() as usize],
			metadata_hash,
			vec![b'U'; T::MaxUriLen::get() as usize],
			vec![b'L'; T::MaxLicenseLen::get() as usize],
		);

		assert_last_event::<T>(Event::DataNetUpdated { datanet: id });
		assert_eq!(DataNets::<T>::get(id).map(|net| net.metadata_hash), Some(metadata_hash));
		Ok(())
	}

	#[benchmark]
	fn add_curator() -> Result<(), BenchmarkError> {
		let caller: T::AccountId = whitelisted_caller();
		fund::<T>(&caller);
		let last = T::MaxCurators::get() - 1;
		let id = datanet::<T>(&caller, last)?;
		let new_curator = curator::<T>(last);

		#[extrinsic_call]
		_(RawOrigin::Signed(caller), id, new_curator.clone());

		assert_last_event::<T>(Event::CuratorAdded { datanet: id, curator: new_curator });
		assert_eq!(
			DataNets::<T>::get(id).map(|net| net.curators.len() as u32),
			Some(T::MaxCurators::get())
		);
		Ok(())
	}

	#[benchmark]
	fn remove_curator() -> Result<(), BenchmarkError> {
		let caller: T::AccountId = whitelisted_caller();
		fund::<T>(&caller);
		let id = datanet::<T>(&caller, T::MaxCurators::get())?;
		let last = curator::<T>(T::MaxCurators::get() - 1);

		#[extrinsic_call]
		_(RawOrigin::Signed(caller), id, last.clone());

		assert_last_event::<T>(Event::CuratorRemoved { datanet: id, curator: last.clone() });
		assert!(DataNets::<T>::get(id).is_some_and(|net| !net.curators.contains(&last)));
		Ok(())
	}

	#[benchmark]
	fn contribute() -> Result<(), BenchmarkError> {
		let owner = funded::<T>("owner", 0);
		let id = datanet::<T>(&owner, T::MaxCurators::get())?;
		let caller: T::AccountId = whitelisted_caller();
		fund::<T>(&caller);
		let content_hash = H256::repeat_byte(2);

		#[extrinsic_call]
		_(RawOrigin::Signed(caller.clone()), id, content_hash, T::MaxItemBytes::get());

		assert_last_event::<T>(Event::Contributed {
			datanet: id,
			item: 0,
			contributor: caller.clone(),
			content_hash,
		});
		assert_eq!(
			T::Currency::balance_on_hold(&HoldReason::ContributionDeposit.into(), &caller),
			T::MinContributionDeposit::get()
		);
		Ok(())
	}

	#[benchmark]
	fn accept() -> Result<(), BenchmarkError> {
		let contributor = funded::<T>("contributor", 0);
		let (id, item) = pending_item::<T>(&contributor)?;
		let caller = curator::<T>(T::MaxCurators::get() - 1);

		#[extrinsic_call]
		_(RawOrigin::Signed(caller.clone()), id, item);

		assert_last_event::<T>(Event::ContributionAccepted { datanet: id, item, curator: caller });
		assert_eq!(DataNets::<T>::get(id).map(|net| net.accepted_items), Some(1));
		Ok(())
	}

	#[benchmark]
	fn reject() -> Result<(), BenchmarkError> {
		let contributor = funded::<T>("contributor", 0);
		let (id, item) = pending_item::<T>(&contributor)?;
		let caller = curator::<T>(T::MaxCurators::get() - 1);
		// The treasury exists, so it can take a forfeit below the existential deposit.
		let treasury = T::Treasury::get();
		if T::Currency::balance(&treasury).is_zero() {
			T::Currency::set_balance(&treasury, T::Currency::minimum_balance());
		}
		let forfeited = T::RejectionPenalty::get().mul_floor(T::MinContributionDeposit::get());

		#[extrinsic_call]
		_(RawOrigin::Signed(caller), id, item);

		assert_last_event::<T>(Event::ContributionRejected { datanet: id, item, forfeited });
		assert!(!Contributions::<T>::contains_key(id, item));
		assert!(T::Currency::balance_on_hold(
			&HoldReason::ContributionDeposit.into(),
			&contributor
		)
		.is_zero());
		Ok(())
	}

	#[benchmark]
	fn withdraw_contribution() -> Result<(), BenchmarkError> {
		let caller: T::AccountId = whitelisted_caller();
		fund::<T>(&caller);
		let (id, item, _reward) = rewarded_item::<T>(&caller)?;
		start_closing::<T>(id)?;
		// The removing step, after the leaving mark's hold: the costlier one.
		Pallet::<T>::withdraw_contribution(RawOrigin::Signed(caller.clone()).into(), id, item)?;
		pass_leave_hold::<T>();

		#[extrinsic_call]
		_(RawOrigin::Signed(caller.clone()), id, item);

		assert!(!DataNets::<T>::contains_key(id), "the last item took the DataNet with it");
		assert!(!Contributions::<T>::contains_key(id, item));
		assert!(T::Currency::balance_on_hold(&HoldReason::ContributionDeposit.into(), &caller)
			.is_zero());
		Ok(())
	}

	#[benchmark]
	fn claim_rewards() -> Result<(), BenchmarkError> {
		let contributor = funded::<T>("contributor", 0);
		let (id, item, reward) = rewarded_item::<T>(&contributor)?;
		let caller: T::AccountId = whitelisted_caller();

		#[extrinsic_call]
		_(RawOrigin::Signed(caller), id, item);

		assert_last_event::<T>(Event::RewardsClaimed {
			datanet: id,
			item,
			contributor,
			amount: reward,
		});
		assert!(Pallet::<T>::unclaimed_rewards(id, item).is_zero());
		Ok(())
	}

	/// Closing a DataNet without items removes it at once: the heavier of the call's two paths.
	#[benchmark]
	fn close_datanet() -> Result<(), BenchmarkError> {
		let owner = funded::<T>("owner", 0);
		let id = datanet::<T>(&owner, T::MaxCurators::get())?;
		let reward_index: BalanceOf<T> = 1u32.into();
		RewardPerItem::<T>::insert(id, reward_index);

		#[extrinsic_call]
		_(RawOrigin::Signed(owner.clone()), id);

		assert!(!DataNets::<T>::contains_key(id));
		assert!(!RewardPerItem::<T>::contains_key(id));
		assert!(T::Currency::balance_on_hold(&HoldReason::DataNetDeposit.into(), &owner).is_zero());
		Ok(())
	}

	/// The last item of a closing DataNet, accepted with rewards unclaimed: the rewards are paid,
	/// the deposit released, and the DataNet removed with its owner's deposit released.
	#[benchmark]
	fn reap_item() -> Result<(), BenchmarkError> {
		let contributor = funded::<T>("contributor", 0);
		let (id, item, reward) = rewarded_item::<T>(&contributor)?;
		start_closing::<T>(id)?;
		let caller: T::AccountId = whitelisted_caller();
		Pallet::<T>::reap_item(RawOrigin::Signed(caller.clone()).into(), id, item)?;
		pass_leave_hold::<T>();

		#[extrinsic_call]
		_(RawOrigin::Signed(caller), id, item);

		assert!(!DataNets::<T>::contains_key(id));
		assert!(!Contributions::<T>::contains_key(id, item));
		assert!(T::Currency::balance_on_hold(&HoldReason::ContributionDeposit.into(), &contributor)
			.is_zero());
		assert!(!reward.is_zero());
		Ok(())
	}

	impl_benchmark_test_suite!(Pallet, crate::mock::new_test_ext(), crate::mock::Test);
}
