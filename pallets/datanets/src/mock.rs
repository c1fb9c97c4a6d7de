//! A test runtime with balances and the DataNets pallet.

use crate as pallet_datanets;
use polkadot_sdk::{
	frame_support::{self, derive_impl, parameter_types, traits::ConstU32, PalletId},
	frame_system, pallet_balances,
	sp_io::TestExternalities,
	sp_runtime::{BuildStorage, Permill},
};

pub type AccountId = u64;
pub type Balance = u64;

pub const OWNER: AccountId = 1;
pub const CURATOR: AccountId = 2;
pub const ALICE: AccountId = 3;
pub const BOB: AccountId = 4;
pub const POOR: AccountId = 5;
pub const TREASURY: AccountId = 99;
pub const ENDOWMENT: Balance = 1_000_000;
pub const DATANET_DEPOSIT: Balance = 1_000;
pub const CONTRIBUTION_DEPOSIT: Balance = 100;
pub const LEAVE_HOLD: u64 = 10;

frame_support::construct_runtime!(
	pub enum Test {
		System: frame_system,
		Balances: pallet_balances,
		DataNets: pallet_datanets,
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
	pub const DataNetsPalletId: PalletId = PalletId(*b"ol/dnets");
	pub const DataNetDeposit: Balance = DATANET_DEPOSIT;
	pub const MinContributionDeposit: Balance = 10;
	pub const RejectionPenalty: Permill = Permill::from_percent(20);
}

impl pallet_datanets::Config for Test {
	type Currency = Balances;
	type RuntimeHoldReason = RuntimeHoldReason;
	type Treasury = Treasury;
	type PalletId = DataNetsPalletId;
	type DataNetDeposit = DataNetDeposit;
	type MinContributionDeposit = MinContributionDeposit;
	type RejectionPenalty = RejectionPenalty;
	type MaxNameLen = ConstU32<16>;
	type MaxUriLen = ConstU32<32>;
	type MaxLicenseLen = ConstU32<8>;
	type MaxCurators = ConstU32<2>;
	type MaxItemsPerDataNet = ConstU32<3>;
	type MaxItemBytes = frame_support::traits::ConstU64<1_000>;
	type LeaveHold = frame_support::traits::ConstU64<LEAVE_HOLD>;
	type WeightInfo = ();
}

pub fn new_test_ext() -> TestExternalities {
	let mut storage = frame_system::GenesisConfig::<Test>::default().build_storage().unwrap();
	pallet_balances::GenesisConfig::<Test> {
		balances: [OWNER, CURATOR, ALICE, BOB, TREASURY]
			.into_iter()
			.map(|who| (who, ENDOWMENT))
			.chain([(POOR, 50)])
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
		DataNets::do_try_state().expect("invariants hold");
	});
}
