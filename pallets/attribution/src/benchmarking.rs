//! Benchmarks of every call at the worst case of its bounds. A benchmarked receipt names the most
//! attribution entries, each a distinct accepted item of a distinct contributor, an adapter with
//! the most training DataNets, a prompt, the most tool entries (each a tool of its own owner) and a
//! payer's voucher: every check and every transfer a receipt can cost.

use crate::*;
use alloc::{vec, vec::Vec};
use core::marker::PhantomData;
use openledger_primitives::{
	content_hash, AdapterId, AttributionEntry, AttributionSource, BaseModelId, DataNetId,
	ItemId, PromptId, Receipt, SignedReceipt, SignedVoucher, ToolId, ToolUse, Voucher,
	MAX_ATTRIBUTION_ENTRIES, MAX_TOOL_ENTRIES, PPM,
};
use pallet_registry::RegistrationKind;
use polkadot_sdk::{
	frame_benchmarking::v2::*,
	frame_support::{
		traits::{fungible::Mutate, EnsureOrigin, Get},
		BoundedVec,
	},
	frame_system::{self, pallet_prelude::BlockNumberFor, RawOrigin},
	sp_core::{crypto::KeyTypeId, sr25519, H256},
	sp_runtime::{
		traits::{Bounded, One, Saturating, Zero},
		MultiSignature, Permill, SaturatedConversion,
	},
};

/// The keystore key type the benchmarks' keys are generated under.
const KEY_TYPE: KeyTypeId = KeyTypeId(*b"olat");

/// What a benchmarked receipt names, registered in the sibling pallets.
pub struct BenchmarkWorld {
	pub base_model: BaseModelId,
	pub adapter: (AdapterId, H256),
	pub prompt: (PromptId, H256),
	/// Accepted items, each of a different contributor.
	pub items: Vec<(DataNetId, ItemId)>,
	/// Registered MCP tools, each of a different owner.
	pub tools: Vec<ToolId>,
}

/// Builds the sibling pallets' state a benchmarked receipt needs.
pub trait BenchmarkHelper<AccountId> {
	/// Registers `worker` as an active worker signing with `session_key`, a base model it
	/// serves, an adapter on it whose provenance names the most DataNets allowed, a prompt, and
	/// `items` accepted items of distinct contributors and `tools` tools of distinct owners.
	fn setup_world(worker: &AccountId, session_key: sr25519::Public, items: u32, tools: u32) -> BenchmarkWorld;
}

/// Builds the world through the real DataNets, registry and workers pallets; used by the test
/// runtime and the real runtime alike.
pub struct SiblingPallets<T>(PhantomData<T>);

fn signed<T: frame_system::Config>(who: &T::AccountId) -> T::RuntimeOrigin {
	RawOrigin::Signed(who.clone()).into()
}

impl<T> BenchmarkHelper<T::AccountId> for SiblingPallets<T>
where
	T: pallet_datanets::Config + pallet_registry::Config + pallet_workers::Config,
{
	fn setup_world(worker: &T::AccountId, session_key: sr25519::Public, items: u32, tools: u32) -> BenchmarkWorld {
		use pallet_datanets::Pallet as DataNets;
		use pallet_registry::Pallet as Registry;
		use pallet_workers::Pallet as Workers;
		let rich = |who: &T::AccountId| {
			<T as pallet_datanets::Config>::Currency::set_balance(
				who,
				<T as pallet_datanets::Config>::DataNetDeposit::get().saturating_mul(1_000u32.into()),
			);
			<T as pallet_registry::Config>::Currency::set_balance(
				who,
				<T as pallet_registry::Config>::AdapterDeposit::get()
					.saturating_mul(1_000u32.into()),
			);
			<T as pallet_workers::Config>::Currency::set_balance(
				who,
				<T as pallet_workers::Config>::MinStake::get().saturating_mul(10u32.into()),
			);
		};
		let expect = |result: polkadot_sdk::sp_runtime::DispatchResult, what: &str| {
			if let Err(error) = result {
				panic!("benchmark world: {what} failed: {error:?}");
			}
		};

		// DataNets: enough for the provenance bound and to hold every item.
		let owner: T::AccountId = account("datanet-owner", 0, 0);
		rich(&owner);
		let provenance_len = <T as pallet_registry::Config>::MaxProvenance::get().max(1);
		let per_datanet = <T as pallet_datanets::Config>::MaxItemsPerDataNet::get();
		let datanet_count = provenance_len.max(items.div_ceil(per_datanet)).max(1);
		let first = pallet_datanets::NextDataNetId::<T>::get();
		for _ in 0..datanet_count {
			expect(
				DataNets::<T>::create_datanet(
					signed::<T>(&owner),
					vec![],
					H256::zero(),
					vec![],
					vec![],
					<T as pallet_datanets::Config>::MinContributionDeposit::get(),
				),
				"create_datanet",
			);
		}
		let mut accepted = Vec::new();
		for i in 0..items {
			let datanet = first + i % datanet_count;
			let item = pallet_datanets::DataNets::<T>::get(datanet).map_or(0, |net| net.next_item);
			let contributor: T::AccountId = account("contributor", i, 0);
			rich(&contributor);
			expect(
				DataNets::<T>::contribute(
					signed::<T>(&contributor),
					datanet,
					content_hash(&i.to_le_bytes()),
					1,
				),
				"contribute",
			);
			expect(DataNets::<T>::accept(signed::<T>(&owner), datanet, item), "accept");
			accepted.push((datanet, item));
		}

		let governance = <T as pallet_registry::Config>::GovernanceOrigin::try_successful_origin()
			.unwrap_or_else(|_| panic!("benchmark world: registry governance has no origin"));
		let base_model = pallet_registry::NextBaseModelId::<T>::get();
		expect(
			Registry::<T>::register_base_model(governance, vec![], vec![], H256::zero()),
			"register_base_model",
		);
		let creator: T::AccountId = account("adapter-owner", 0, 0);
		rich(&creator);
		let adapter = (pallet_registry::NextAdapterId::<T>::get(), content_hash(b"weights"));
		let share = PPM / provenance_len;
		let salt = [0; 32];
		Registry::<T>::commit_for_test(&creator, RegistrationKind::Adapter, &adapter.1, &salt);
		expect(
			Registry::<T>::register_adapter(
				signed::<T>(&creator),
				base_model,
				adapter.1,
				content_hash(b"config"),
				1,
				vec![],
				(0..provenance_len).map(|i| (first + i, share)).collect(),
				1_000u32.into(),
				salt,
			),
			"register_adapter",
		);
		let prompt = (pallet_registry::NextPromptId::<T>::get(), content_hash(b"template"));
		Registry::<T>::commit_for_test(&creator, RegistrationKind::Prompt, &prompt.1, &salt);
		expect(
			Registry::<T>::register_prompt(signed::<T>(&creator), prompt.1, vec![], 1_000u32.into(), salt),
			"register_prompt",
		);
		let tools = (0..tools)
			.map(|i| {
				let owner: T::AccountId = account("tool-owner", i, 0);
				rich(&owner);
				let id = pallet_registry::NextToolId::<T>::get();
				expect(
					Registry::<T>::register_tool(
						signed::<T>(&owner),
						b"https://tools.example/mcp".to_vec(),
						b"lookup".to_vec(),
						content_hash(&i.to_le_bytes()),
						1_000u32.into(),
					),
					"register_tool",
				);
				id
			})
			.collect();
		rich(worker);
		expect(
			Workers::<T>::register(
				signed::<T>(worker),
				session_key,
				vec![],
				vec![base_model],
				1_000u32.into(),
				<T as pallet_workers::Config>::MinStake::get(),
			),
			"register worker",
		);
		BenchmarkWorld { base_model, adapter, prompt, items: accepted, tools }
	}
}

/// A large balance that leaves room for fees and deposits without overflowing issuance.
fn plenty<T: Config>() -> BalanceOf<T> {
	BalanceOf::<T>::max_value() / 8u32.into()
}

/// A payer whose key is in the keystore, funded and with half its balance held as credit.
fn funded_payer<T: Config>() -> (sr25519::Public, T::AccountId) {
	let key = polkadot_sdk::sp_io::crypto::sr25519_generate(KEY_TYPE, None);
	let payer: T::AccountId = key.into();
	T::Currency::set_balance(&payer, plenty::<T>());
	let credit = plenty::<T>() / 2u32.into();
	Pallet::<T>::deposit(RawOrigin::Signed(payer.clone()).into(), credit)
		.unwrap_or_else(|e| panic!("funding the payer failed: {e:?}"));
	(key, payer)
}

fn sign(key: &sr25519::Public, payload: &[u8]) -> sr25519::Signature {
	polkadot_sdk::sp_io::crypto::sr25519_sign(KEY_TYPE, key, payload)
		.unwrap_or_else(|| panic!("the benchmark key is in the keystore"))
}

/// A worker, a payer and a registry world at the worst case of their bounds (an adapter whose
/// provenance names the most DataNets, a prompt, `MAX_ATTRIBUTION_ENTRIES` accepted items of
/// distinct contributors, `MAX_TOOL_ENTRIES` tools of distinct owners), and signed receipts
/// between them.
struct Market<T: Config> {
	worker: T::AccountId,
	session_key: sr25519::Public,
	payer_key: sr25519::Public,
	payer: T::AccountId,
	world: BenchmarkWorld,
	genesis_hash: H256,
	expires_at: u32,
}

impl<T: Config> Market<T> {
	fn new() -> Self {
		let worker: T::AccountId = account("worker", 0, 0);
		let session_key = polkadot_sdk::sp_io::crypto::sr25519_generate(KEY_TYPE, None);
		let world = T::BenchmarkHelper::setup_world(&worker, session_key, MAX_ATTRIBUTION_ENTRIES, MAX_TOOL_ENTRIES);
		let (payer_key, payer) = funded_payer::<T>();
		Pallet::<T>::set_allowance(RawOrigin::Signed(payer.clone()).into(), worker.clone(), plenty::<T>())
			.unwrap_or_else(|e| panic!("setting the allowance failed: {e:?}"));
		let genesis_hash = frame_system::Pallet::<T>::block_hash(BlockNumberFor::<T>::zero());
		let expires_at: u32 = frame_system::Pallet::<T>::block_number()
			.saturating_add(T::MaxReceiptLifetime::get())
			.saturated_into();
		Self { worker, session_key, payer_key, payer, world, genesis_hash, expires_at }
	}

	/// Request number `request`'s receipt, with `entries` retrieval entries (distinct accepted
	/// items), `tools` tool entries (distinct tools), the adapter and the prompt; paid by a
	/// payer's voucher (two signatures to check) or, without `voucher`, from the payer's
	/// allowance for the worker.
	fn receipt(&self, request: u32, entries: u32, tools: u32, voucher: bool) -> SignedReceiptOf<T> {
		let attribution: Vec<AttributionEntry> = self
			.world
			.items
			.iter()
			.take(entries as usize)
			.enumerate()
			.map(|(i, (datanet, item))| AttributionEntry {
				source: AttributionSource::Retrieval,
				datanet: *datanet,
				item: Some(*item),
				// The first entry takes the rounding remainder so the weights sum to PPM.
				weight_ppm: PPM / entries + if i == 0 { PPM % entries } else { 0 },
			})
			.collect();
		let tools: Vec<ToolUse> =
			self.world.tools.iter().take(tools as usize).map(|&tool| ToolUse { tool, calls: 2 }).collect();
		let receipt = Receipt {
			worker: self.worker.clone(),
			payer: self.payer.clone(),
			request_hash: content_hash(&request.to_le_bytes()),
			output_hash: content_hash(b"output"),
			base_model: self.world.base_model,
			adapter: Some(self.world.adapter),
			prompt: Some(self.world.prompt),
			prompt_tokens: 1_000,
			completion_tokens: 1_000,
			attribution: BoundedVec::truncate_from(attribution),
			tools: BoundedVec::truncate_from(tools),
			expires_at: self.expires_at,
		};
		let signed_voucher = Voucher {
			payer: self.payer.clone(),
			worker: self.worker.clone(),
			request_hash: receipt.request_hash,
			max_fee: plenty::<T>(),
			expires_at: self.expires_at,
		};
		let voucher_signature =
			MultiSignature::Sr25519(sign(&self.payer_key, &signed_voucher.signing_payload(&self.genesis_hash)));
		SignedReceipt {
			signature: sign(&self.session_key, &receipt.signing_payload(&self.genesis_hash)),
			receipt,
			voucher: voucher.then_some(SignedVoucher { voucher: signed_voucher, signature: voucher_signature }),
		}
	}
}

/// `n` receipts that share their context, paid by voucher or by allowance, and who submits them.
fn shared_batch<T: Config>(
	n: u32,
	voucher: bool,
) -> Result<(T::AccountId, BoundedVec<SignedReceiptOf<T>, T::MaxReceiptsPerBatch>), BenchmarkError> {
	let market = Market::<T>::new();
	let receipts: Vec<_> = (0..n).map(|i| market.receipt(i, 0, 0, voucher)).collect();
	let receipts = BoundedVec::try_from(receipts).map_err(|_| BenchmarkError::Weightless)?;
	Ok((market.worker, receipts))
}

fn assert_settled<T: Config>(n: u32) {
	frame_system::Pallet::<T>::assert_last_event(
		<T as frame_system::Config>::RuntimeEvent::from(Event::<T>::BatchProcessed { settled: n, rejected: 0 }),
	);
}

/// A record set of `records` requests, sorted as the pallet keeps it.
fn record_set<T: Config>(records: u32) -> BoundedVec<H256, T::MaxSettledPerExpiry> {
	let mut requests: Vec<H256> = (0..records).map(|i| content_hash(&i.to_le_bytes())).collect();
	requests.sort();
	BoundedVec::truncate_from(requests)
}

/// `sets` expired record sets, each of one worker's `records` requests, all expiring at block 0.
fn expired_sets<T: Config>(sets: u32, records: u32) {
	let expiry: BlockNumberFor<T> = Zero::zero();
	for set in 0..sets {
		Settled::<T>::insert(expiry, account::<T::AccountId>("worker", set, 0), record_set::<T>(records));
	}
	PruneCursor::<T>::put(expiry);
}

#[benchmarks]
mod benchmarks {
	use super::*;

	#[benchmark]
	fn deposit() {
		let payer: T::AccountId = whitelisted_caller();
		T::Currency::set_balance(&payer, plenty::<T>());
		let amount = plenty::<T>() / 2u32.into();
		#[extrinsic_call]
		_(RawOrigin::Signed(payer.clone()), amount);
		assert_eq!(Pallet::<T>::credit(&payer), amount);
	}

	#[benchmark]
	fn withdraw() {
		let (_, payer) = funded_payer::<T>();
		let amount = Pallet::<T>::credit(&payer);
		#[extrinsic_call]
		_(RawOrigin::Signed(payer.clone()), amount);
		assert!(PendingWithdrawals::<T>::contains_key(&payer));
	}

	#[benchmark]
	fn claim_withdrawal() -> Result<(), BenchmarkError> {
		let (_, payer) = funded_payer::<T>();
		Pallet::<T>::withdraw(RawOrigin::Signed(payer.clone()).into(), Pallet::<T>::credit(&payer))?;
		let unlock = frame_system::Pallet::<T>::block_number().saturating_add(T::WithdrawalDelay::get());
		frame_system::Pallet::<T>::set_block_number(unlock);
		#[extrinsic_call]
		_(RawOrigin::Signed(payer.clone()));
		assert!(Pallet::<T>::credit(&payer).is_zero());
		Ok(())
	}

	#[benchmark]
	fn set_allowance() {
		// A new allowance, which holds a deposit (removing one releases it: the same work).
		let payer: T::AccountId = whitelisted_caller();
		T::Currency::set_balance(&payer, plenty::<T>());
		let worker: T::AccountId = account("worker", 0, 0);
		#[extrinsic_call]
		_(RawOrigin::Signed(payer.clone()), worker.clone(), 1_000u32.into());
		assert_eq!(AllowanceCount::<T>::get(&payer), 1);
	}

	/// One receipt carrying `a` attribution entries, each a distinct accepted item of a distinct
	/// contributor, and `t` tool entries, each a distinct tool of a distinct owner, with an adapter
	/// of full provenance, a prompt and a voucher: a receipt whose
	/// context nothing in its batch has read before (`Pallet::batch_weight`).
	#[benchmark]
	fn submit_receipt(
		a: Linear<0, MAX_ATTRIBUTION_ENTRIES>,
		t: Linear<0, MAX_TOOL_ENTRIES>,
	) -> Result<(), BenchmarkError> {
		let market = Market::<T>::new();
		let receipts = BoundedVec::try_from(vec![market.receipt(0, a, t, true)]).map_err(|_| BenchmarkError::Weightless)?;
		#[extrinsic_call]
		submit_receipts(RawOrigin::Signed(market.worker.clone()), receipts);
		frame_system::Pallet::<T>::assert_last_event(
			<T as frame_system::Config>::RuntimeEvent::from(Event::<T>::BatchProcessed {
				settled: 1,
				rejected: 0,
			}),
		);
		Ok(())
	}

	/// `n` receipts in one batch that share their worker, payer, adapter and prompt (the usual
	/// batch: one worker's recent requests for one client, through an API key), no attribution
	/// entries, paid from the payer's allowance. The slope is what a receipt adds once its
	/// context has been read.
	#[benchmark]
	fn submit_receipts_shared(n: Linear<1, { T::MaxReceiptsPerBatch::get() }>) -> Result<(), BenchmarkError> {
		let (worker, receipts) = shared_batch::<T>(n, false)?;
		#[extrinsic_call]
		submit_receipts(RawOrigin::Signed(worker), receipts);
		assert_settled::<T>(n);
		Ok(())
	}

	/// As `submit_receipts_shared`, but each receipt paid by its own voucher.
	#[benchmark]
	fn submit_receipts_shared_vouchers(
		n: Linear<1, { T::MaxReceiptsPerBatch::get() }>,
	) -> Result<(), BenchmarkError> {
		let (worker, receipts) = shared_batch::<T>(n, true)?;
		#[extrinsic_call]
		submit_receipts(RawOrigin::Signed(worker), receipts);
		assert_settled::<T>(n);
		Ok(())
	}

	#[benchmark]
	fn set_fee_params() -> Result<(), BenchmarkError> {
		let origin = T::GovernanceOrigin::try_successful_origin()
			.map_err(|_| BenchmarkError::Weightless)?;
		#[extrinsic_call]
		_(origin as T::RuntimeOrigin, Permill::from_percent(5), Permill::from_percent(30), 7u32.into());
		assert_eq!(RetrievalPrice::<T>::get(), 7u32.into());
		Ok(())
	}

	/// A batch reading a worker's record set of `s` requests, adding one and writing it back:
	/// what each (expiry, worker) set a batch touches costs beyond its receipts.
	#[benchmark]
	fn record_settled(s: Linear<0, { T::MaxSettledPerExpiry::get() - 1 }>) {
		let worker: T::AccountId = account("worker", 0, 0);
		let expiry: BlockNumberFor<T> = One::one();
		Settled::<T>::insert(expiry, &worker, record_set::<T>(s));
		let new = content_hash(b"a new request");
		#[block]
		{
			let mut set = settle::RecordSet::<T>::load(expiry, &worker);
			if !set.contains(&new) && !set.is_full() {
				set.insert(new);
			}
			set.store(expiry, &worker);
		}
		assert_eq!(Settled::<T>::get(expiry, &worker).len() as u32, s + 1);
	}

	/// Pruning `s` expired record sets of one block, then passing the block.
	#[benchmark]
	fn prune(s: Linear<0, { T::MaxPrunePerBlock::get() - 1 }>) {
		expired_sets::<T>(s, 1);
		#[block]
		{
			Pallet::<T>::prune_expired(One::one());
		}
		assert_eq!(Settled::<T>::iter().count(), 0);
		assert_eq!(PruneCursor::<T>::get(), One::one());
	}

	impl_benchmark_test_suite!(Pallet, crate::mock::new_test_ext(), crate::mock::Test);
}
