//! A test runtime with the real DataNets, registry and workers pallets, and a world in which one
//! worker serves one adapter, one prompt and one DataNet to one payer.

use crate as pallet_attribution;
use openledger_primitives::{
	content_hash, item_hash, AttributionEntry, AttributionSource, Receipt, SignedReceipt,
};
use pallet_registry::RegistrationKind;
use polkadot_sdk::{
	frame_support::{
		self, assert_ok, derive_impl, parameter_types,
		traits::{ConstU128, ConstU32, ConstU64},
		BoundedVec,
	},
	frame_system::{self, EnsureRoot},
	pallet_balances,
	sp_core::{sr25519, Pair, H256},
	sp_io::TestExternalities,
	sp_keyring::Sr25519Keyring,
	sp_keystore::{testing::MemoryKeystore, KeystoreExt},
	sp_runtime::{traits::IdentityLookup, AccountId32, BuildStorage, Permill},
};

pub type AccountId = AccountId32;
pub type Balance = u128;

frame_support::construct_runtime!(
	pub enum Test {
		System: frame_system,
		Balances: pallet_balances,
		DataNets: pallet_datanets,
		Registry: pallet_registry,
		Workers: pallet_workers,
		Attribution: pallet_attribution,
	}
);

#[derive_impl(frame_system::config_preludes::TestDefaultConfig)]
impl frame_system::Config for Test {
	type Block = frame_system::mocking::MockBlock<Test>;
	type AccountId = AccountId;
	type Lookup = IdentityLookup<AccountId>;
	type AccountData = pallet_balances::AccountData<Balance>;
	// Weights read the database's costs: zero costs would hide a read left out of one.
	type DbWeight = polkadot_sdk::frame_support::weights::constants::RocksDbWeight;
}

parameter_types! {
	/// 1, as in the test defaults; a test of payouts below it raises it for its own thread.
	pub static ExistentialDeposit: Balance = 1;
}

#[derive_impl(pallet_balances::config_preludes::TestDefaultConfig)]
impl pallet_balances::Config for Test {
	type Balance = Balance;
	type ExistentialDeposit = ExistentialDeposit;
	type AccountStore = System;
	type RuntimeHoldReason = RuntimeHoldReason;
}

parameter_types! {
	pub TreasuryAccount: AccountId = account(Role::Treasury);
	pub const MinStake: Balance = 10_000;
	/// A receipt's longest lifetime, as the runtime has it.
	pub const PriceHold: u64 = MAX_LIFETIME;
}

#[derive_impl(pallet_datanets::config_preludes::TestDefaultConfig)]
impl pallet_datanets::Config for Test {
	type Currency = Balances;
	type Treasury = TreasuryAccount;
	type LeaveHold = PriceHold;
}

#[derive_impl(pallet_registry::config_preludes::TestDefaultConfig)]
impl pallet_registry::Config for Test {
	type Currency = Balances;
	type GovernanceOrigin = EnsureRoot<AccountId>;
	type DataNets = DataNets;
	type PriceHold = PriceHold;
	type CommitmentDelay = ConstU64<1>;
	type CommitmentLifetime = ConstU64<10>;
	#[cfg(feature = "runtime-benchmarks")]
	type BenchmarkHelper = RegistryBenchmarkHelper;
}

#[cfg(feature = "runtime-benchmarks")]
pub struct RegistryBenchmarkHelper;
#[cfg(feature = "runtime-benchmarks")]
impl pallet_registry::BenchmarkHelper for RegistryBenchmarkHelper {
	fn create_datanet(_i: u32) -> openledger_primitives::DataNetId {
		let id = pallet_datanets::NextDataNetId::<Test>::get();
		let owner = account(Role::DataNetOwner);
		assert_ok!(DataNets::create_datanet(RuntimeOrigin::signed(owner), vec![], H256::zero(), vec![], vec![], 10));
		id
	}
}

#[derive_impl(pallet_workers::config_preludes::TestDefaultConfig)]
impl pallet_workers::Config for Test {
	type Currency = Balances;
	type Treasury = TreasuryAccount;
	type Registry = Registry;
	type GovernanceOrigin = EnsureRoot<AccountId>;
	type MinStake = MinStake;
	type PriceHold = PriceHold;
	#[cfg(feature = "runtime-benchmarks")]
	type BenchmarkHelper = WorkersBenchmarkHelper;
}

#[cfg(feature = "runtime-benchmarks")]
pub struct WorkersBenchmarkHelper;
#[cfg(feature = "runtime-benchmarks")]
impl pallet_workers::BenchmarkHelper for WorkersBenchmarkHelper {
	fn active_base_models(count: u32) -> Vec<openledger_primitives::BaseModelId> {
		(0..count)
			.map(|i| {
				let id = pallet_registry::NextBaseModelId::<Test>::get();
				assert_ok!(Registry::register_base_model(RuntimeOrigin::root(), vec![], vec![], H256::repeat_byte(i as u8)));
				id
			})
			.collect()
	}
}

fn register_worker(price: Balance) {
	assert_ok!(Workers::register(
		RuntimeOrigin::signed(account(Role::Worker)),
		session_pair().public(),
		b"http://127.0.0.1:8080".to_vec(),
		vec![BASE_MODEL, 1],
		price,
		MinStake::get(),
	));
}

fn set_worker_price(price: Balance) {
	assert_ok!(Workers::update(
		RuntimeOrigin::signed(account(Role::Worker)),
		b"http://127.0.0.1:8080".to_vec(),
		vec![BASE_MODEL, 1],
		price,
	));
}

parameter_types! {
	pub const MaxReceiptsPerBatch: u32 = 16;
}

/// As long as a receipt may live, as `integrity_test` requires.
pub const WITHDRAWAL_DELAY: u64 = MAX_LIFETIME;
pub const MAX_LIFETIME: u64 = 200;
pub const MAX_PRUNE: u32 = 5;
pub const MAX_SETTLED_PER_EXPIRY: u32 = 16;

impl pallet_attribution::Config for Test {
	type Currency = Balances;
	type RuntimeHoldReason = RuntimeHoldReason;
	type Treasury = TreasuryAccount;
	type DataNets = DataNets;
	type Registry = Registry;
	type Workers = Workers;
	type GovernanceOrigin = EnsureRoot<AccountId>;
	type MaxReceiptsPerBatch = MaxReceiptsPerBatch;
	type MaxReceiptLifetime = ConstU64<MAX_LIFETIME>;
	type WithdrawalDelay = ConstU64<WITHDRAWAL_DELAY>;
	type MaxAllowances = ConstU32<2>;
	type AllowanceDeposit = ConstU128<ALLOWANCE_DEPOSIT>;
	type MaxSettledPerExpiry = ConstU32<MAX_SETTLED_PER_EXPIRY>;
	type MaxPrunePerBlock = ConstU32<MAX_PRUNE>;
	type WeightInfo = ();
	#[cfg(feature = "runtime-benchmarks")]
	type BenchmarkHelper = crate::benchmarking::SiblingPallets<Test>;
}

/// Who is who in the test world.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
	Payer,
	Worker,
	AdapterOwner,
	PromptOwner,
	ToolOwner,
	ContributorA,
	ContributorB,
	DataNetOwner,
	Treasury,
	Other,
}

pub const ROLES: [Role; 10] = [
	Role::Payer,
	Role::Worker,
	Role::AdapterOwner,
	Role::PromptOwner,
	Role::ToolOwner,
	Role::ContributorA,
	Role::ContributorB,
	Role::DataNetOwner,
	Role::Treasury,
	Role::Other,
];

pub fn account(role: Role) -> AccountId {
	match role {
		Role::Payer => Sr25519Keyring::Alice.to_account_id(),
		Role::Worker => Sr25519Keyring::Bob.to_account_id(),
		Role::AdapterOwner => Sr25519Keyring::Charlie.to_account_id(),
		Role::PromptOwner => Sr25519Keyring::Dave.to_account_id(),
		Role::ToolOwner => AccountId32::new([5; 32]),
		Role::ContributorA => Sr25519Keyring::Eve.to_account_id(),
		Role::ContributorB => Sr25519Keyring::Ferdie.to_account_id(),
		Role::DataNetOwner => Sr25519Keyring::One.to_account_id(),
		Role::Treasury => AccountId32::new([9; 32]),
		Role::Other => Sr25519Keyring::Two.to_account_id(),
	}
}

pub fn everyone() -> Vec<AccountId> {
	ROLES.iter().map(|r| account(*r)).collect()
}

pub fn pool() -> AccountId {
	DataNets::reward_pool()
}

pub fn payer_pair() -> sr25519::Pair {
	Sr25519Keyring::Alice.pair()
}

/// The worker's session key, distinct from its account key.
pub fn session_pair() -> sr25519::Pair {
	sr25519::Pair::from_string("//BobSession", None).expect("valid derivation")
}

pub const ENDOWMENT: Balance = 1_000_000;
pub const CREDIT: Balance = 100_000;
pub const ALLOWANCE: Balance = 50_000;
pub const ALLOWANCE_DEPOSIT: Balance = 25;
pub const DATANET: u32 = 0;
pub const ITEM_A: u32 = 0;
pub const ITEM_B: u32 = 1;
pub const ITEM_PENDING: u32 = 2;
pub const BASE_MODEL: u32 = 0;
pub const ADAPTER: u32 = 0;
pub const PROMPT: u32 = 0;
pub const TOOL: u32 = 0;
pub const TOOL_PRICE: Balance = 30;

// The fee of `receipt(..)` with the world's prices, computed by hand:
// 1000 tokens × 1000/1k (worker) + 1000 × 2000/1k (adapter) + 500 (prompt) + 2 items × 100.
pub const EXPECTED_FEE: Balance = 1_000 + 2_000 + 500 + 200;
// 10 % protocol share off each part; 50 % of the adapter's 1800 is the data part, of which the
// provenance's 50 % (450) goes to the DataNet's pool and the rest back to the owner.
pub const EXPECTED_TRAINING_POOL: Balance = 450;

pub fn expected_payout(role: Role) -> Balance {
	match role {
		Role::Worker => 900,
		Role::PromptOwner => 450,
		Role::AdapterOwner => 1_800 - 900 + 450,
		// Retrieval 200 − 20 = 180, split 480 : 320 between the two items.
		Role::ContributorA => 108,
		Role::ContributorB => 72,
		Role::Treasury => 100 + 200 + 50 + 20,
		_ => 0,
	}
}

pub fn adapter_hash() -> H256 {
	content_hash(b"adapter_model.safetensors")
}

pub fn template_hash() -> H256 {
	content_hash(b"{system}\n{context}\n{question}")
}

pub fn genesis_hash() -> H256 {
	frame_system::Pallet::<Test>::block_hash(0)
}

/// A valid receipt for request `n` of the payer, served by the worker.
pub fn receipt(n: u8) -> Receipt<AccountId> {
	let entry = |source, item, weight_ppm| AttributionEntry { source, datanet: DATANET, item, weight_ppm };
	Receipt {
		worker: account(Role::Worker),
		payer: account(Role::Payer),
		request_hash: content_hash(&[n]),
		output_hash: content_hash(b"output"),
		base_model: BASE_MODEL,
		adapter: Some((ADAPTER, adapter_hash())),
		prompt: Some((PROMPT, template_hash())),
		prompt_tokens: 300,
		completion_tokens: 700,
		attribution: BoundedVec::truncate_from(vec![
			entry(AttributionSource::Training, None, 200_000),
			entry(AttributionSource::Retrieval, Some(ITEM_A), 480_000),
			entry(AttributionSource::Span, Some(ITEM_B), 320_000),
		]),
		tools: Default::default(),
		expires_at: 100,
	}
}

/// Signs `receipt` with the worker's session key for this chain.
pub fn sign(receipt: Receipt<AccountId>) -> SignedReceipt<AccountId, Balance> {
	let signature = session_pair().sign(&receipt.signing_payload(&genesis_hash()));
	SignedReceipt { receipt, signature, voucher: None }
}

/// Sets the worker's compute price and the adapter's and prompt's prices.
pub fn set_prices(worker_rate: Balance, adapter_rate: Balance, prompt_price: Balance) {
	set_worker_price(worker_rate);
	assert_ok!(Registry::set_adapter_price(RuntimeOrigin::signed(account(Role::AdapterOwner)), ADAPTER, adapter_rate));
	assert_ok!(Registry::set_prompt_price(RuntimeOrigin::signed(account(Role::PromptOwner)), PROMPT, prompt_price));
}

fn build_world() {
	let signed = |role| RuntimeOrigin::signed(account(role));
	assert_ok!(DataNets::create_datanet(signed(Role::DataNetOwner), b"wiki".to_vec(), H256::zero(), vec![], vec![], 10));
	for (role, text) in [(Role::ContributorA, "alpha"), (Role::ContributorB, "beta"), (Role::ContributorB, "pending")] {
		assert_ok!(DataNets::contribute(signed(role), DATANET, item_hash(text), text.len() as u64));
	}
	assert_ok!(DataNets::accept(signed(Role::DataNetOwner), DATANET, ITEM_A));
	assert_ok!(DataNets::accept(signed(Role::DataNetOwner), DATANET, ITEM_B));
	for name in [&b"smollm2"[..], b"other", b"unserved"] {
		assert_ok!(Registry::register_base_model(RuntimeOrigin::root(), name.to_vec(), b"llama".to_vec(), content_hash(name)));
	}
	let salt = [0; 32];
	Registry::commit_for_test(&account(Role::AdapterOwner), RegistrationKind::Adapter, &adapter_hash(), &salt);
	assert_ok!(Registry::register_adapter(
		signed(Role::AdapterOwner), BASE_MODEL, adapter_hash(), content_hash(b"adapter_config.json"), 16,
		b"ipfs://adapter".to_vec(), vec![(DATANET, 500_000)], 2_000, salt,
	));
	Registry::commit_for_test(&account(Role::PromptOwner), RegistrationKind::Prompt, &template_hash(), &salt);
	assert_ok!(Registry::register_prompt(signed(Role::PromptOwner), template_hash(), b"ipfs://prompt".to_vec(), 500, salt));
	assert_ok!(Registry::register_tool(
		signed(Role::ToolOwner), b"http://tools.example/mcp".to_vec(), b"get_weather".to_vec(), content_hash(b"definition"), TOOL_PRICE,
	));
	register_worker(1_000);
	assert_ok!(crate::Pallet::<Test>::deposit(signed(Role::Payer), CREDIT));
	assert_ok!(crate::Pallet::<Test>::set_allowance(signed(Role::Payer), account(Role::Worker), ALLOWANCE));
	System::reset_events();
}

pub fn new_test_ext() -> TestExternalities {
	let mut storage = frame_system::GenesisConfig::<Test>::default().build_storage().unwrap();
	pallet_balances::GenesisConfig::<Test> {
		balances: everyone().into_iter().map(|who| (who, ENDOWMENT)).collect(),
		..Default::default()
	}
	.assimilate_storage(&mut storage)
	.unwrap();
	pallet_datanets::GenesisConfig::<Test>::default().assimilate_storage(&mut storage).unwrap();
	pallet_attribution::GenesisConfig::<Test> {
		protocol_share: Permill::from_percent(10),
		data_share: Permill::from_percent(50),
		retrieval_price: 100,
	}
	.assimilate_storage(&mut storage)
	.unwrap();
	let mut ext = TestExternalities::new(storage);
	// The benchmarks sign receipts and vouchers with keys kept in a keystore.
	ext.register_extension(KeystoreExt::new(MemoryKeystore::new()));
	ext.execute_with(|| {
		System::set_block_number(1);
		build_world();
	});
	ext
}

/// Runs `test` in the test world and checks every pallet's invariants afterwards.
pub fn run(test: impl FnOnce()) {
	new_test_ext().execute_with(|| {
		test();
		DataNets::do_try_state().expect("DataNets invariants hold");
		Registry::do_try_state().expect("registry invariants hold");
		Workers::do_try_state().expect("workers invariants hold");
		Attribution::do_try_state().expect("attribution invariants hold");
	});
}
