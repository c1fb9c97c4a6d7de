//! A test runtime with balances, the real DataNets pallet and the registry.

use crate as pallet_registry;
use polkadot_sdk::{
	frame_support::{self, derive_impl, parameter_types, traits::ConstU32},
	frame_system::{self, EnsureRoot},
	pallet_balances,
	sp_io::TestExternalities,
	sp_runtime::BuildStorage,
};

pub type AccountId = u64;
pub type Balance = u64;

pub const OWNER: AccountId = 1;
pub const ALICE: AccountId = 2;
pub const BOB: AccountId = 3;
pub const POOR: AccountId = 4;
pub const TREASURY: AccountId = 99;
pub const ENDOWMENT: Balance = 1_000_000;
pub const POOR_ENDOWMENT: Balance = 150;
pub const ADAPTER_DEPOSIT: Balance = 500;
pub const PROMPT_DEPOSIT: Balance = 200;
pub const TOOL_DEPOSIT: Balance = 300;
pub const MAX_TOOL_NAME_LEN: u32 = 12;
pub const DATANET_DEPOSIT: Balance = 1_000;
/// Blocks a price rise waits before it is charged.
pub const PRICE_HOLD: u64 = 10;
pub const MAX_NAME_LEN: u32 = 16;
pub const MAX_ARCHITECTURE_LEN: u32 = 8;
pub const MAX_URI_LEN: u32 = 32;
pub const MAX_RANK: u32 = 64;
pub const MAX_PROVENANCE: u32 = 3;
/// Blocks from a registration's commitment to the registration.
pub const COMMITMENT_DELAY: u64 = 1;
pub const COMMITMENT_LIFETIME: u64 = 5;
pub const MAX_COMMITMENTS: u32 = 3;

frame_support::construct_runtime!(
	pub enum Test {
		System: frame_system,
		Balances: pallet_balances,
		DataNets: pallet_datanets,
		Registry: pallet_registry,
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

parameter_types! {
	pub const Treasury: AccountId = TREASURY;
	pub const DataNetDeposit: Balance = DATANET_DEPOSIT;
	pub const AdapterDeposit: Balance = ADAPTER_DEPOSIT;
	pub const PromptDeposit: Balance = PROMPT_DEPOSIT;
	pub const ToolDeposit: Balance = TOOL_DEPOSIT;
	pub const PriceHold: u64 = PRICE_HOLD;
	pub const CommitmentDelay: u64 = COMMITMENT_DELAY;
	pub const CommitmentLifetime: u64 = COMMITMENT_LIFETIME;
}

#[derive_impl(pallet_datanets::config_preludes::TestDefaultConfig)]
impl pallet_datanets::Config for Test {
	type Currency = Balances;
	type Treasury = Treasury;
	type DataNetDeposit = DataNetDeposit;
}

impl pallet_registry::Config for Test {
	type Currency = Balances;
	type RuntimeHoldReason = RuntimeHoldReason;
	type GovernanceOrigin = EnsureRoot<AccountId>;
	type DataNets = DataNets;
	type AdapterDeposit = AdapterDeposit;
	type PromptDeposit = PromptDeposit;
	type ToolDeposit = ToolDeposit;
	type MaxToolNameLen = ConstU32<MAX_TOOL_NAME_LEN>;
	type MaxNameLen = ConstU32<MAX_NAME_LEN>;
	type MaxArchitectureLen = ConstU32<MAX_ARCHITECTURE_LEN>;
	type MaxUriLen = ConstU32<MAX_URI_LEN>;
	type MaxRank = ConstU32<MAX_RANK>;
	type PriceHold = PriceHold;
	type MaxProvenance = ConstU32<MAX_PROVENANCE>;
	type CommitmentDelay = CommitmentDelay;
	type CommitmentLifetime = CommitmentLifetime;
	type MaxCommitments = ConstU32<MAX_COMMITMENTS>;
	type WeightInfo = ();
	#[cfg(feature = "runtime-benchmarks")]
	type BenchmarkHelper = DataNetsHelper;
}

/// Creates DataNets through the real DataNets pallet, each owned by its own funded account.
#[cfg(feature = "runtime-benchmarks")]
pub struct DataNetsHelper;

#[cfg(feature = "runtime-benchmarks")]
impl crate::BenchmarkHelper for DataNetsHelper {
	fn create_datanet(i: u32) -> openledger_primitives::DataNetId {
		use polkadot_sdk::frame_support::traits::fungible::Mutate;
		let owner = 10_000 + AccountId::from(i);
		Balances::set_balance(&owner, ENDOWMENT);
		let id = pallet_datanets::NextDataNetId::<Test>::get();
		DataNets::create_datanet(
			RuntimeOrigin::signed(owner),
			b"bench".to_vec(),
			openledger_primitives::content_hash(&i.to_le_bytes()),
			b"ipfs://bench".to_vec(),
			b"MIT".to_vec(),
			100,
		)
		.expect("the benchmark DataNet is valid and its owner funded");
		id
	}
}

pub fn new_test_ext() -> TestExternalities {
	let mut storage = frame_system::GenesisConfig::<Test>::default().build_storage().unwrap();
	pallet_balances::GenesisConfig::<Test> {
		balances: [OWNER, ALICE, BOB, TREASURY]
			.into_iter()
			.map(|who| (who, ENDOWMENT))
			.chain([(POOR, POOR_ENDOWMENT)])
			.collect(),
		..Default::default()
	}
	.assimilate_storage(&mut storage)
	.unwrap();
	pallet_datanets::GenesisConfig::<Test>::default()
		.assimilate_storage(&mut storage)
		.unwrap();
	let mut ext = TestExternalities::new(storage);
	ext.execute_with(|| System::set_block_number(1));
	ext
}

/// Runs `test` in a fresh externality and checks the pallet's invariants afterwards.
pub fn run(test: impl FnOnce()) {
	new_test_ext().execute_with(|| {
		test();
		Registry::do_try_state().expect("invariants hold");
	});
}
