//! Benchmarks of every call, each at the worst case of its bounds: the longest endpoint, the
//! most served base models, the most retired keys, receipts with the most attribution entries.

use super::*;
use alloc::{boxed::Box, vec, vec::Vec};
use openledger_primitives::{
	content_hash, AttributionEntry, AttributionSource, BaseModelId, Receipt,
	MAX_ATTRIBUTION_ENTRIES,
};
use polkadot_sdk::{
	frame_benchmarking::v2::*,
	frame_support::{
		traits::{
			fungible::{Inspect, InspectHold, Mutate},
			EnsureOrigin, Get,
		},
		BoundedVec,
	},
	frame_system::{self, RawOrigin},
	sp_core::{crypto::KeyTypeId, sr25519},
	sp_runtime::traits::{Saturating, Zero},
};

/// The keystore key type the benchmark's session keys are generated under.
const KEY_TYPE: KeyTypeId = KeyTypeId(*b"olwk");

/// Funds `who` for ten times its stake and returns the stake: ten times `MinStake`.
fn funded<T: Config>(who: &T::AccountId) -> BalanceOf<T> {
	let stake = T::MinStake::get().saturating_mul(10u32.into());
	T::Currency::set_balance(
		who,
		stake.saturating_mul(10u32.into()).saturating_add(T::Currency::minimum_balance()),
	);
	stake
}

fn longest_endpoint<T: Config>() -> Vec<u8> {
	vec![b'e'; T::MaxEndpointLen::get() as usize]
}

fn served<T: Config>(count: u32) -> Vec<BaseModelId> {
	T::BenchmarkHelper::active_base_models(count)
}

fn session_key(seed: u8) -> sr25519::Public {
	sr25519::Public::from_raw([seed; 32])
}

/// The `n`th of a series of session keys distinct from `session_key`'s.
fn numbered_key(n: u32) -> sr25519::Public {
	let mut raw = [0xab; 32];
	raw[..4].copy_from_slice(&n.to_le_bytes());
	sr25519::Public::from_raw(raw)
}

/// Registers `who` with `key`, the longest endpoint and the most served models.
fn register_worker<T: Config>(
	who: &T::AccountId,
	key: sr25519::Public,
) -> Result<BalanceOf<T>, BenchmarkError> {
	let stake = funded::<T>(who);
	Pallet::<T>::register(
		RawOrigin::Signed(who.clone()).into(),
		key,
		longest_endpoint::<T>(),
		served::<T>(T::MaxServedModels::get()),
		1u32.into(),
		stake,
	)?;
	Ok(stake)
}

/// Rotates `who`'s session key to each of `keys` in turn, all in this block, so that every key
/// it leaves is still evidence.
fn rotate_through<T: Config>(
	who: &T::AccountId,
	keys: impl IntoIterator<Item = sr25519::Public>,
) -> Result<(), BenchmarkError> {
	for key in keys {
		Pallet::<T>::rotate_key(RawOrigin::Signed(who.clone()).into(), key)?;
	}
	Ok(())
}

/// A receipt by `worker` for `request` with every optional field set and the most attribution
/// entries.
fn largest_receipt<T: Config>(worker: &T::AccountId, output: &[u8]) -> ReceiptOf<T> {
	let payer: T::AccountId = account("payer", 0, 0);
	let entries = (0..MAX_ATTRIBUTION_ENTRIES)
		.map(|i| AttributionEntry {
			source: AttributionSource::Retrieval,
			datanet: i,
			item: Some(i),
			weight_ppm: openledger_primitives::PPM / MAX_ATTRIBUTION_ENTRIES,
		})
		.collect::<Vec<_>>();
	Receipt {
		worker: worker.clone(),
		payer,
		request_hash: content_hash(b"request"),
		output_hash: content_hash(output),
		base_model: 0,
		adapter: Some((u32::MAX, content_hash(b"weights"))),
		prompt: Some((u32::MAX, content_hash(b"template"))),
		prompt_tokens: u32::MAX,
		completion_tokens: u32::MAX,
		attribution: BoundedVec::truncate_from(entries),
		tools: Default::default(),
		expires_at: u32::MAX,
	}
}

/// Signs `receipt` for this chain with `key`, kept in the keystore.
fn sign<T: Config>(
	key: &sr25519::Public,
	receipt: &ReceiptOf<T>,
) -> Result<sr25519::Signature, BenchmarkError> {
	let payload = receipt.signing_payload(&Pallet::<T>::genesis_hash());
	polkadot_sdk::sp_io::crypto::sr25519_sign(KEY_TYPE, key, &payload)
		.ok_or(BenchmarkError::Stop("the keystore cannot sign with the generated key"))
}

#[benchmarks]
mod benchmarks {
	use super::*;

	#[benchmark]
	fn register(s: Linear<1, { T::MaxServedModels::get() }>) -> Result<(), BenchmarkError> {
		let caller: T::AccountId = whitelisted_caller();
		let stake = funded::<T>(&caller);
		let key = session_key(1);

		#[extrinsic_call]
		_(
			RawOrigin::Signed(caller.clone()),
			key,
			longest_endpoint::<T>(),
			served::<T>(s),
			1u32.into(),
			stake,
		);

		assert_eq!(T::Currency::balance_on_hold(&HoldReason::Stake.into(), &caller), stake);
		assert_eq!(SessionKeyOwner::<T>::get(key), Some(caller));
		Ok(())
	}

	#[benchmark]
	fn update(s: Linear<1, { T::MaxServedModels::get() }>) -> Result<(), BenchmarkError> {
		let caller: T::AccountId = whitelisted_caller();
		register_worker::<T>(&caller, session_key(1))?;
		let mut serves = served::<T>(s);
		serves.reverse();

		#[extrinsic_call]
		_(RawOrigin::Signed(caller.clone()), longest_endpoint::<T>(), serves.clone(), 2u32.into());

		let worker = Workers::<T>::get(&caller).ok_or(BenchmarkError::Stop("worker missing"))?;
		assert_eq!(worker.serves.into_inner(), serves);
		Ok(())
	}

	#[benchmark]
	fn bond_extra() -> Result<(), BenchmarkError> {
		let caller: T::AccountId = whitelisted_caller();
		let stake = register_worker::<T>(&caller, session_key(1))?;
		let amount = T::MinStake::get();

		#[extrinsic_call]
		_(RawOrigin::Signed(caller.clone()), amount);

		assert_eq!(
			T::Currency::balance_on_hold(&HoldReason::Stake.into(), &caller),
			stake.saturating_add(amount)
		);
		Ok(())
	}

	#[benchmark]
	fn rotate_key() -> Result<(), BenchmarkError> {
		let caller: T::AccountId = whitelisted_caller();
		register_worker::<T>(&caller, session_key(1))?;
		// Every retired-key slot taken, the oldest key's window just over: the call reads the
		// whole list, drops that key and appends one.
		let start = frame_system::Pallet::<T>::block_number();
		rotate_through::<T>(&caller, [numbered_key(0)])?;
		frame_system::Pallet::<T>::set_block_number(start.saturating_add(1u32.into()));
		rotate_through::<T>(&caller, (1..T::MaxRetiredKeys::get()).map(numbered_key))?;
		frame_system::Pallet::<T>::set_block_number(start.saturating_add(T::UnbondingDelay::get()));
		let current = Workers::<T>::get(&caller).ok_or(BenchmarkError::Stop("worker missing"))?.session_key;

		#[extrinsic_call]
		_(RawOrigin::Signed(caller.clone()), session_key(2));

		assert_eq!(SessionKeyOwner::<T>::get(session_key(2)), Some(caller.clone()));
		assert!(!SessionKeyOwner::<T>::contains_key(current));
		let retired = RetiredKeys::<T>::get(&caller);
		assert_eq!(retired.len() as u32, T::MaxRetiredKeys::get());
		assert!(retired.iter().all(|(key, _)| *key != session_key(1)), "the expired key was dropped");
		Ok(())
	}

	#[benchmark]
	fn unbond() -> Result<(), BenchmarkError> {
		let caller: T::AccountId = whitelisted_caller();
		register_worker::<T>(&caller, session_key(1))?;

		#[extrinsic_call]
		_(RawOrigin::Signed(caller.clone()));

		let worker = Workers::<T>::get(&caller).ok_or(BenchmarkError::Stop("worker missing"))?;
		assert!(matches!(worker.status, WorkerStatus::Unbonding { .. }));
		Ok(())
	}

	#[benchmark]
	fn withdraw_unbonded() -> Result<(), BenchmarkError> {
		let caller: T::AccountId = whitelisted_caller();
		register_worker::<T>(&caller, session_key(1))?;
		rotate_through::<T>(&caller, [session_key(2)])?;
		Pallet::<T>::unbond(RawOrigin::Signed(caller.clone()).into())?;
		let now = frame_system::Pallet::<T>::block_number();
		frame_system::Pallet::<T>::set_block_number(now.saturating_add(T::UnbondingDelay::get()));

		#[extrinsic_call]
		_(RawOrigin::Signed(caller.clone()));

		assert!(!Workers::<T>::contains_key(&caller));
		assert!(!RetiredKeys::<T>::contains_key(&caller));
		assert!(T::Currency::balance_on_hold(&HoldReason::Stake.into(), &caller).is_zero());
		Ok(())
	}

	#[benchmark]
	fn slash() -> Result<(), BenchmarkError> {
		let worker: T::AccountId = account("worker", 0, 0);
		let stake = register_worker::<T>(&worker, session_key(1))?;
		let origin =
			T::GovernanceOrigin::try_successful_origin().map_err(|_| BenchmarkError::Weightless)?;
		let amount = T::MinStake::get();

		#[extrinsic_call]
		_(origin as T::RuntimeOrigin, worker.clone(), amount);

		assert_eq!(
			T::Currency::balance_on_hold(&HoldReason::Stake.into(), &worker),
			stake.saturating_sub(amount)
		);
		Ok(())
	}

	#[benchmark]
	fn report_equivocation() -> Result<(), BenchmarkError> {
		let worker: T::AccountId = account("worker", 0, 0);
		let keys: Vec<_> = (0..=T::MaxRetiredKeys::get())
			.map(|_| polkadot_sdk::sp_io::crypto::sr25519_generate(KEY_TYPE, None))
			.collect();
		let stake = register_worker::<T>(&worker, keys[0])?;
		// Every retired-key slot taken; the proof is signed by the key tried last, the one
		// retired most recently.
		rotate_through::<T>(&worker, keys[1..].iter().copied())?;
		let signer = keys[keys.len() - 2];
		let first = largest_receipt::<T>(&worker, b"output one");
		let second = largest_receipt::<T>(&worker, b"output two");
		let first_signature = sign::<T>(&signer, &first)?;
		let second_signature = sign::<T>(&signer, &second)?;
		let reporter: T::AccountId = whitelisted_caller();

		#[extrinsic_call]
		_(
			RawOrigin::Signed(reporter),
			Box::new(first),
			first_signature,
			Box::new(second),
			second_signature,
		);

		let record = Workers::<T>::get(&worker).ok_or(BenchmarkError::Stop("worker missing"))?;
		assert_eq!(record.status, WorkerStatus::Slashed);
		assert!(record.stake < stake);
		Ok(())
	}

	impl_benchmark_test_suite!(Pallet, crate::mock::new_test_ext(), crate::mock::Test);
}
