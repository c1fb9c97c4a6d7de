//! Benchmarks of the registry pallet, each at the worst case of its bounds: names, architectures
//! uris and tool names at their longest, provenance naming `MaxProvenance` distinct existing
//! DataNets.

use super::*;
use alloc::{vec, vec::Vec};
use openledger_primitives::{AdapterId, BaseModelId, DataNetId, PromptId, ToolId, PPM};
use polkadot_sdk::{
	frame_benchmarking::v2::*,
	frame_support::traits::{
		fungible::{Inspect, InspectHold, Mutate},
		EnsureOrigin, Get,
	},
	frame_system::{self, RawOrigin},
	sp_core::H256,
	sp_runtime::traits::{Saturating, Zero},
};

/// An account funded for the deposits of a few registrations.
fn funded<T: Config>(name: &'static str) -> T::AccountId {
	let who: T::AccountId = account(name, 0, 0);
	let deposits =
		T::AdapterDeposit::get().saturating_add(T::PromptDeposit::get()).saturating_add(T::ToolDeposit::get());
	T::Currency::set_balance(
		&who,
		T::Currency::minimum_balance().saturating_add(deposits.saturating_mul(4u32.into())),
	);
	who
}

/// The salt of every registration commitment here.
const SALT: [u8; 32] = [7; 32];

fn uri<T: Config>() -> Vec<u8> {
	vec![b'u'; T::MaxUriLen::get() as usize]
}

/// Registers a base model with the longest name and architecture.
fn base_model<T: Config>() -> Result<BaseModelId, BenchmarkError> {
	let origin =
		T::GovernanceOrigin::try_successful_origin().map_err(|_| BenchmarkError::Weightless)?;
	let id = NextBaseModelId::<T>::get();
	Pallet::<T>::register_base_model(
		origin,
		vec![b'n'; T::MaxNameLen::get() as usize],
		vec![b'a'; T::MaxArchitectureLen::get() as usize],
		H256::repeat_byte(1),
	)?;
	Ok(id)
}

/// `p` distinct existing DataNets sharing 100 % as evenly as ppm allows.
fn provenance<T: Config>(p: u32) -> Vec<(DataNetId, u32)> {
	let share = PPM / p.max(1);
	(0..p).map(|i| (T::BenchmarkHelper::create_datanet(i), share)).collect()
}

/// Registers an adapter of `owner` at the bounds: longest uri, full provenance.
fn adapter<T: Config>(owner: &T::AccountId) -> Result<AdapterId, BenchmarkError> {
	let base = base_model::<T>()?;
	let id = NextAdapterId::<T>::get();
	let weights_hash = H256::repeat_byte(2);
	Pallet::<T>::commit_for_test(owner, RegistrationKind::Adapter, &weights_hash, &SALT);
	Pallet::<T>::register_adapter(
		RawOrigin::Signed(owner.clone()).into(),
		base,
		weights_hash,
		H256::repeat_byte(3),
		T::MaxRank::get(),
		uri::<T>(),
		provenance::<T>(T::MaxProvenance::get()),
		1u32.into(),
		SALT,
	)?;
	Ok(id)
}

/// Registers a prompt template of `owner` with the longest uri.
fn prompt<T: Config>(owner: &T::AccountId) -> Result<PromptId, BenchmarkError> {
	let id = NextPromptId::<T>::get();
	let template_hash = H256::repeat_byte(4);
	Pallet::<T>::commit_for_test(owner, RegistrationKind::Prompt, &template_hash, &SALT);
	Pallet::<T>::register_prompt(
		RawOrigin::Signed(owner.clone()).into(),
		template_hash,
		uri::<T>(),
		1u32.into(),
		SALT,
	)?;
	Ok(id)
}

fn tool_name<T: Config>() -> Vec<u8> {
	vec![b't'; T::MaxToolNameLen::get() as usize]
}

/// Registers an MCP tool of `owner` with the longest endpoint and name.
fn tool<T: Config>(owner: &T::AccountId) -> Result<ToolId, BenchmarkError> {
	let id = NextToolId::<T>::get();
	Pallet::<T>::register_tool(
		RawOrigin::Signed(owner.clone()).into(),
		uri::<T>(),
		tool_name::<T>(),
		H256::repeat_byte(5),
		1u32.into(),
	)?;
	Ok(id)
}

fn assert_last_event<T: Config>(event: Event<T>) {
	frame_system::Pallet::<T>::assert_last_event(event.into());
}

#[benchmarks]
mod benchmarks {
	use super::*;

	#[benchmark]
	fn register_base_model() -> Result<(), BenchmarkError> {
		let origin =
			T::GovernanceOrigin::try_successful_origin().map_err(|_| BenchmarkError::Weightless)?;
		let weights_hash = H256::repeat_byte(1);
		let id = NextBaseModelId::<T>::get();

		#[extrinsic_call]
		_(
			origin as T::RuntimeOrigin,
			vec![b'n'; T::MaxNameLen::get() as usize],
			vec![b'a'; T::MaxArchitectureLen::get() as usize],
			weights_hash,
		);

		assert_last_event::<T>(Event::BaseModelRegistered { base_model: id, weights_hash });
		Ok(())
	}

	#[benchmark]
	fn retire_base_model() -> Result<(), BenchmarkError> {
		let base = base_model::<T>()?;
		let origin =
			T::GovernanceOrigin::try_successful_origin().map_err(|_| BenchmarkError::Weightless)?;

		#[extrinsic_call]
		_(origin as T::RuntimeOrigin, base);

		assert_last_event::<T>(Event::BaseModelRetired { base_model: base });
		Ok(())
	}

	#[benchmark]
	fn register_adapter(p: Linear<0, { T::MaxProvenance::get() }>) -> Result<(), BenchmarkError> {
		let caller = funded::<T>("caller");
		let base = base_model::<T>()?;
		let provenance = provenance::<T>(p);
		let weights_hash = H256::repeat_byte(2);
		let id = NextAdapterId::<T>::get();
		Pallet::<T>::commit_for_test(&caller, RegistrationKind::Adapter, &weights_hash, &SALT);

		#[extrinsic_call]
		_(
			RawOrigin::Signed(caller.clone()),
			base,
			weights_hash,
			H256::repeat_byte(3),
			T::MaxRank::get(),
			uri::<T>(),
			provenance,
			1u32.into(),
			SALT,
		);

		assert_last_event::<T>(Event::AdapterRegistered {
			adapter: id,
			owner: caller.clone(),
			base_model: base,
			weights_hash,
		});
		assert_eq!(
			T::Currency::balance_on_hold(&HoldReason::AdapterDeposit.into(), &caller),
			T::AdapterDeposit::get()
		);
		Ok(())
	}

	#[benchmark]
	fn set_adapter_price() -> Result<(), BenchmarkError> {
		let owner = funded::<T>("owner");
		let id = adapter::<T>(&owner)?;
		let price: BalanceOf<T> = 2u32.into();

		#[extrinsic_call]
		_(RawOrigin::Signed(owner), id, price);

		assert_last_event::<T>(Event::AdapterPriceSet { adapter: id, price_per_1k_tokens: price });
		Ok(())
	}

	#[benchmark]
	fn transfer_adapter() -> Result<(), BenchmarkError> {
		let owner = funded::<T>("owner");
		let id = adapter::<T>(&owner)?;
		let new_owner: T::AccountId = account("new_owner", 0, 0);

		#[extrinsic_call]
		_(RawOrigin::Signed(owner.clone()), id, new_owner.clone());

		assert_last_event::<T>(Event::AdapterTransferred {
			adapter: id,
			from: owner,
			to: new_owner,
		});
		Ok(())
	}

	#[benchmark]
	fn retire_adapter() -> Result<(), BenchmarkError> {
		let owner = funded::<T>("owner");
		let id = adapter::<T>(&owner)?;
		// The second step, which releases the deposit and removes the entry: the costlier one.
		Pallet::<T>::retire_adapter(RawOrigin::Signed(owner.clone()).into(), id)?;
		let now = frame_system::Pallet::<T>::block_number();
		frame_system::Pallet::<T>::set_block_number(now + T::PriceHold::get());

		#[extrinsic_call]
		_(RawOrigin::Signed(owner.clone()), id);

		assert_last_event::<T>(Event::AdapterRetired {
			adapter: id,
			depositor: owner.clone(),
			deposit: T::AdapterDeposit::get(),
		});
		assert!(T::Currency::balance_on_hold(&HoldReason::AdapterDeposit.into(), &owner).is_zero());
		Ok(())
	}

	#[benchmark]
	fn register_prompt() -> Result<(), BenchmarkError> {
		let caller = funded::<T>("caller");
		let template_hash = H256::repeat_byte(4);
		let id = NextPromptId::<T>::get();
		Pallet::<T>::commit_for_test(&caller, RegistrationKind::Prompt, &template_hash, &SALT);

		#[extrinsic_call]
		_(RawOrigin::Signed(caller.clone()), template_hash, uri::<T>(), 1u32.into(), SALT);

		assert_last_event::<T>(Event::PromptRegistered {
			prompt: id,
			owner: caller.clone(),
			template_hash,
		});
		assert_eq!(
			T::Currency::balance_on_hold(&HoldReason::PromptDeposit.into(), &caller),
			T::PromptDeposit::get()
		);
		Ok(())
	}

	#[benchmark]
	fn set_prompt_price() -> Result<(), BenchmarkError> {
		let owner = funded::<T>("owner");
		let id = prompt::<T>(&owner)?;
		let price: BalanceOf<T> = 2u32.into();

		#[extrinsic_call]
		_(RawOrigin::Signed(owner), id, price);

		assert_last_event::<T>(Event::PromptPriceSet { prompt: id, price_per_call: price });
		Ok(())
	}

	#[benchmark]
	fn transfer_prompt() -> Result<(), BenchmarkError> {
		let owner = funded::<T>("owner");
		let id = prompt::<T>(&owner)?;
		let new_owner: T::AccountId = account("new_owner", 0, 0);

		#[extrinsic_call]
		_(RawOrigin::Signed(owner.clone()), id, new_owner.clone());

		assert_last_event::<T>(Event::PromptTransferred { prompt: id, from: owner, to: new_owner });
		Ok(())
	}

	#[benchmark]
	fn retire_prompt() -> Result<(), BenchmarkError> {
		let owner = funded::<T>("owner");
		let id = prompt::<T>(&owner)?;
		// The second step, which releases the deposit and removes the entry: the costlier one.
		Pallet::<T>::retire_prompt(RawOrigin::Signed(owner.clone()).into(), id)?;
		let now = frame_system::Pallet::<T>::block_number();
		frame_system::Pallet::<T>::set_block_number(now + T::PriceHold::get());

		#[extrinsic_call]
		_(RawOrigin::Signed(owner.clone()), id);

		assert_last_event::<T>(Event::PromptRetired {
			prompt: id,
			depositor: owner.clone(),
			deposit: T::PromptDeposit::get(),
		});
		assert!(T::Currency::balance_on_hold(&HoldReason::PromptDeposit.into(), &owner).is_zero());
		Ok(())
	}

	#[benchmark]
	fn register_tool() -> Result<(), BenchmarkError> {
		let caller = funded::<T>("caller");
		let definition_hash = H256::repeat_byte(5);
		let id = NextToolId::<T>::get();

		#[extrinsic_call]
		_(RawOrigin::Signed(caller.clone()), uri::<T>(), tool_name::<T>(), definition_hash, 1u32.into());

		assert_last_event::<T>(Event::ToolRegistered { tool: id, owner: caller.clone(), definition_hash });
		assert_eq!(T::Currency::balance_on_hold(&HoldReason::ToolDeposit.into(), &caller), T::ToolDeposit::get());
		Ok(())
	}

	#[benchmark]
	fn set_tool_price() -> Result<(), BenchmarkError> {
		let owner = funded::<T>("owner");
		let id = tool::<T>(&owner)?;
		let price: BalanceOf<T> = 2u32.into();

		#[extrinsic_call]
		_(RawOrigin::Signed(owner), id, price);

		assert_last_event::<T>(Event::ToolPriceSet { tool: id, price_per_call: price });
		Ok(())
	}

	#[benchmark]
	fn transfer_tool() -> Result<(), BenchmarkError> {
		let owner = funded::<T>("owner");
		let id = tool::<T>(&owner)?;
		let new_owner: T::AccountId = account("new_owner", 0, 0);

		#[extrinsic_call]
		_(RawOrigin::Signed(owner.clone()), id, new_owner.clone());

		assert_last_event::<T>(Event::ToolTransferred { tool: id, from: owner, to: new_owner });
		Ok(())
	}

	#[benchmark]
	fn retire_tool() -> Result<(), BenchmarkError> {
		let owner = funded::<T>("owner");
		let id = tool::<T>(&owner)?;
		// The second step, which releases the deposit and removes the entry: the costlier one.
		Pallet::<T>::retire_tool(RawOrigin::Signed(owner.clone()).into(), id)?;
		let now = frame_system::Pallet::<T>::block_number();
		frame_system::Pallet::<T>::set_block_number(now + T::PriceHold::get());

		#[extrinsic_call]
		_(RawOrigin::Signed(owner.clone()), id);

		assert_last_event::<T>(Event::ToolRetired { tool: id, depositor: owner.clone(), deposit: T::ToolDeposit::get() });
		assert!(T::Currency::balance_on_hold(&HoldReason::ToolDeposit.into(), &owner).is_zero());
		Ok(())
	}

	#[benchmark]
	fn commit_registration() -> Result<(), BenchmarkError> {
		// The worst case: the caller has all the commitments it may but one, each compared.
		let caller = funded::<T>("caller");
		for i in 1..T::MaxCommitments::get() {
			Pallet::<T>::commit_registration(
				RawOrigin::Signed(caller.clone()).into(),
				H256::from_low_u64_be(i.into()),
			)?;
		}
		let commitment = H256::repeat_byte(9);

		#[extrinsic_call]
		_(RawOrigin::Signed(caller.clone()), commitment);

		assert_last_event::<T>(Event::RegistrationCommitted { who: caller.clone(), commitment });
		assert_eq!(Commitments::<T>::get(&caller).map(|c| c.len() as u32), Some(T::MaxCommitments::get()));
		Ok(())
	}

	impl_benchmark_test_suite!(Pallet, crate::mock::new_test_ext(), crate::mock::Test);
}
