//! A test runtime with balances and the workers pallet.

use crate as pallet_workers;
use openledger_primitives::{
	traits::{AdapterView, PromptView, RegistryInspect, ToolView},
	AdapterId, BaseModelId, PromptId, ToolId,
};
use polkadot_sdk::{
	frame_support::{
		self, derive_impl, parameter_types,
		traits::{ConstU32, ConstU64},
	},
	frame_system::{self, EnsureRoot},
	pallet_balances,
	sp_io::TestExternalities,
	sp_keystore::{testing::MemoryKeystore, KeystoreExt},
	sp_runtime::{BuildStorage, Perbill},
};

pub type AccountId = u64;
pub type Balance = u64;

pub const ALICE: AccountId = 1;
pub const BOB: AccountId = 2;
pub const CHARLIE: AccountId = 3;
pub const POOR: AccountId = 4;
pub const TREASURY: AccountId = 99;
pub const ENDOWMENT: Balance = 1_000_000;
pub const MIN_STAKE: Balance = 1_000;
pub const UNBONDING_DELAY: u64 = 10;
pub const MAX_ENDPOINT_LEN: u32 = 32;
pub const MAX_SERVED_MODELS: u32 = 3;
pub const MAX_RETIRED_KEYS: u32 = 2;
/// The base models the test registry reports active: `0..=LAST_ACTIVE_MODEL`.
pub const LAST_ACTIVE_MODEL: BaseModelId = 2;

frame_support::construct_runtime!(
	pub enum Test {
		System: frame_system,
		Balances: pallet_balances,
		Workers: pallet_workers,
	}
);

#[derive_impl(frame_system::config_preludes::TestDefaultConfig)]
impl frame_system::Config for Test {
	type Block = frame_system::mocking::MockBlock<Test>;
	type AccountData = pallet_balances::AccountData<Balance>;
}

#[derive_impl(pallet_balances::config_preludes::TestDefaultConfig)]
impl pallet_balances::Config for Test {
	type Balance = Balance;
	type AccountStore = System;
	type RuntimeHoldReason = RuntimeHoldReason;
}

/// A test double for pallet-registry (a sibling pallet, wired in by the runtime): base models
/// `0..=LAST_ACTIVE_MODEL` are registered and active, nothing else is.
pub struct TestRegistry;

impl RegistryInspect<AccountId, Balance> for TestRegistry {
	fn base_model_active(id: BaseModelId) -> bool {
		id <= LAST_ACTIVE_MODEL
	}

	fn adapter(_id: AdapterId) -> Option<AdapterView<AccountId, Balance>> {
		None
	}

	fn prompt(_id: PromptId) -> Option<PromptView<AccountId, Balance>> {
		None
	}

	fn tool(_id: ToolId) -> Option<ToolView<AccountId, Balance>> {
		None
	}
}

parameter_types! {
	pub const Treasury: AccountId = TREASURY;
	pub const MinStake: Balance = MIN_STAKE;
	pub const UnbondingDelay: u64 = UNBONDING_DELAY;
	pub const EquivocationSlash: Perbill = Perbill::from_percent(10);
}

impl pallet_workers::Config for Test {
	type Currency = Balances;
	type RuntimeHoldReason = RuntimeHoldReason;
	type Treasury = Treasury;
	type Registry = TestRegistry;
	type GovernanceOrigin = EnsureRoot<AccountId>;
	type MinStake = MinStake;
	type UnbondingDelay = UnbondingDelay;
	type PriceHold = ConstU64<10>;
	type EquivocationSlash = EquivocationSlash;
	type MaxEndpointLen = ConstU32<MAX_ENDPOINT_LEN>;
	type MaxServedModels = ConstU32<MAX_SERVED_MODELS>;
	type MaxRetiredKeys = ConstU32<MAX_RETIRED_KEYS>;
	type WeightInfo = ();
	// The test registry already reports base models `0..MAX_SERVED_MODELS` active.
	#[cfg(feature = "runtime-benchmarks")]
	type BenchmarkHelper = ();
}

pub fn new_test_ext() -> TestExternalities {
	let mut storage = frame_system::GenesisConfig::<Test>::default().build_storage().unwrap();
	pallet_balances::GenesisConfig::<Test> {
		balances: [ALICE, BOB, CHARLIE, TREASURY]
			.into_iter()
			.map(|who| (who, ENDOWMENT))
			.chain([(POOR, 500)])
			.collect(),
		..Default::default()
	}
	.assimilate_storage(&mut storage)
	.unwrap();
	let mut ext = TestExternalities::new(storage);
	// The benchmarks sign receipts with keys kept in a keystore.
	ext.register_extension(KeystoreExt::new(MemoryKeystore::new()));
	ext.execute_with(|| System::set_block_number(1));
	ext
}

/// Runs `test` in a fresh externality and checks the pallet's invariants afterwards.
pub fn run(test: impl FnOnce()) {
	new_test_ext().execute_with(|| {
		test();
		Workers::do_try_state().expect("invariants hold");
	});
}
