//! Configuration of every pallet in the runtime.

use crate::{
	AccountId, Aura, Balance, Balances, Block, BlockNumber, DataNets, Hash, Nonce, PalletInfo,
	Registry, Runtime, RuntimeCall, RuntimeEvent, RuntimeFreezeReason, RuntimeHoldReason,
	RuntimeOrigin, RuntimeTask, System, Workers, DAYS, EXISTENTIAL_DEPOSIT, MILLI_UNIT,
	MICRO_UNIT, SLOT_DURATION, UNIT, VERSION,
};
use polkadot_sdk::{
	frame_support::{
		derive_impl,
		dispatch::DispatchClass,
		parameter_types,
		traits::{ConstBool, ConstU128, ConstU32, ConstU64, ConstU8, VariantCountOf},
		weights::{
			constants::{ParityDbWeight, WEIGHT_REF_TIME_PER_SECOND},
			ConstantMultiplier, Weight,
		},
		PalletId,
	},
	frame_system::{
		self,
		limits::{BlockLength, BlockWeights},
		EnsureRoot,
	},
	pallet_aura, pallet_balances, pallet_grandpa, pallet_sudo, pallet_timestamp,
	pallet_transaction_payment::{self, FungibleAdapter, Multiplier, TargetedFeeAdjustment},
	sp_consensus_aura::sr25519::AuthorityId as AuraId,
	sp_core,
	sp_runtime::{
		traits::{AccountIdConversion, Bounded, One},
		FixedPointNumber, Perbill, Permill, Perquintill,
	},
	sp_version::RuntimeVersion,
};

const NORMAL_DISPATCH_RATIO: Perbill = Perbill::from_percent(75);

parameter_types! {
	pub const BlockHashCount: BlockNumber = 2400;
	pub const Version: RuntimeVersion = VERSION;
	/// Two seconds of compute in a six-second block.
	pub RuntimeBlockWeights: BlockWeights = BlockWeights::with_sensible_defaults(
		Weight::from_parts(2u64 * WEIGHT_REF_TIME_PER_SECOND, u64::MAX),
		NORMAL_DISPATCH_RATIO,
	);
	/// 5 MiB blocks, of which normal transactions may fill 75 %.
	pub RuntimeBlockLength: BlockLength = BlockLength::builder()
		.max_length(5 * 1024 * 1024)
		.modify_max_length_for_class(DispatchClass::Normal, |max| *max = NORMAL_DISPATCH_RATIO * *max)
		.build();
	pub const SS58Prefix: u8 = 42;
}

#[derive_impl(frame_system::config_preludes::SolochainDefaultConfig)]
impl frame_system::Config for Runtime {
	type Block = Block;
	type BlockWeights = RuntimeBlockWeights;
	type BlockLength = RuntimeBlockLength;
	type AccountId = AccountId;
	type Nonce = Nonce;
	type Hash = Hash;
	type BlockHashCount = BlockHashCount;
	// The node stores state in ParityDb.
	type DbWeight = ParityDbWeight;
	type Version = Version;
	type AccountData = pallet_balances::AccountData<Balance>;
	type SS58Prefix = SS58Prefix;
	type MaxConsumers = ConstU32<16>;
}

impl pallet_aura::Config for Runtime {
	type AuthorityId = AuraId;
	type DisabledValidators = ();
	type MaxAuthorities = ConstU32<32>;
	type AllowMultipleBlocksPerSlot = ConstBool<false>;
	type SlotDuration = pallet_aura::MinimumPeriodTimesTwo<Runtime>;
}

impl pallet_grandpa::Config for Runtime {
	type RuntimeEvent = RuntimeEvent;
	type WeightInfo = ();
	type MaxAuthorities = ConstU32<32>;
	type MaxNominators = ConstU32<0>;
	type MaxSetIdSessionEntries = ConstU64<0>;
	type KeyOwnerProof = sp_core::Void;
	type EquivocationReportSystem = ();
}

impl pallet_timestamp::Config for Runtime {
	type Moment = u64;
	type OnTimestampSet = Aura;
	type MinimumPeriod = ConstU64<{ SLOT_DURATION / 2 }>;
	type WeightInfo = ();
}

impl pallet_balances::Config for Runtime {
	type MaxLocks = ConstU32<50>;
	type MaxReserves = ();
	type ReserveIdentifier = [u8; 8];
	type Balance = Balance;
	type RuntimeEvent = RuntimeEvent;
	type DustRemoval = ();
	type ExistentialDeposit = ConstU128<EXISTENTIAL_DEPOSIT>;
	type AccountStore = System;
	type WeightInfo = pallet_balances::weights::SubstrateWeight<Runtime>;
	type FreezeIdentifier = RuntimeFreezeReason;
	type MaxFreezes = VariantCountOf<RuntimeFreezeReason>;
	type RuntimeHoldReason = RuntimeHoldReason;
	type RuntimeFreezeReason = RuntimeFreezeReason;
	type DoneSlashHandler = ();
}

parameter_types! {
	/// One OPEN buys a second of block compute (a micro-OPEN per microsecond of weight), so a
	/// transfer costs about 0.5 milli-OPEN and filling a block's normal class costs 1.5 OPEN.
	pub const WeightFee: Balance = MICRO_UNIT / 1_000_000;
	/// A tenth of a micro-OPEN per byte: a receipt's bytes cost about half what checking it does.
	pub const TransactionByteFee: Balance = MICRO_UNIT / 10;
	/// Fees rise while blocks are fuller than a quarter of their normal class, and fall back
	/// when they are emptier, never below the prices above (Polkadot's slow adjustment).
	pub const TargetBlockFullness: Perquintill = Perquintill::from_percent(25);
	pub AdjustmentVariable: Multiplier = Multiplier::saturating_from_rational(75, 1_000_000);
	pub MinimumMultiplier: Multiplier = Multiplier::one();
	pub MaximumMultiplier: Multiplier = Bounded::max_value();
}

/// The weight fee's multiplier follows congestion; see `TargetBlockFullness`.
pub type FeeMultiplierUpdate = TargetedFeeAdjustment<
	Runtime,
	TargetBlockFullness,
	AdjustmentVariable,
	MinimumMultiplier,
	MaximumMultiplier,
>;

impl pallet_transaction_payment::Config for Runtime {
	type RuntimeEvent = RuntimeEvent;
	type OnChargeTransaction = FungibleAdapter<Balances, ()>;
	type OperationalFeeMultiplier = ConstU8<5>;
	type WeightToFee = ConstantMultiplier<Balance, WeightFee>;
	type LengthToFee = ConstantMultiplier<Balance, TransactionByteFee>;
	type FeeMultiplierUpdate = FeeMultiplierUpdate;
	type WeightInfo = pallet_transaction_payment::weights::SubstrateWeight<Runtime>;
}

impl pallet_sudo::Config for Runtime {
	type RuntimeEvent = RuntimeEvent;
	type RuntimeCall = RuntimeCall;
	type WeightInfo = pallet_sudo::weights::SubstrateWeight<Runtime>;
}

parameter_types! {
	pub const TreasuryPalletId: PalletId = PalletId(*b"py/trsry");
	/// Receives forfeited deposits, slashes, the protocol share and rounding remainders.
	pub TreasuryAccount: AccountId = TreasuryPalletId::get().into_account_truncating();
	pub const DataNetsPalletId: PalletId = PalletId(*b"ol/dnets");
	pub const DataNetDeposit: Balance = 10 * UNIT;
	pub const MinContributionDeposit: Balance = 10 * MILLI_UNIT;
	pub const RejectionPenalty: Permill = Permill::from_percent(50);
}

impl pallet_datanets::Config for Runtime {
	type Currency = Balances;
	type RuntimeHoldReason = RuntimeHoldReason;
	type Treasury = TreasuryAccount;
	type PalletId = DataNetsPalletId;
	type DataNetDeposit = DataNetDeposit;
	type MinContributionDeposit = MinContributionDeposit;
	type RejectionPenalty = RejectionPenalty;
	type MaxNameLen = ConstU32<64>;
	type MaxUriLen = ConstU32<256>;
	type MaxLicenseLen = ConstU32<64>;
	type MaxCurators = ConstU32<16>;
	type MaxItemsPerDataNet = ConstU32<1_000_000>;
	type MaxItemBytes = ConstU64<{ 16 * 1024 * 1024 }>;
	// A withdrawn or reaped item still pays every receipt of a request it served.
	type LeaveHold = MaxReceiptLifetime;
	type WeightInfo = pallet_datanets::weights::SubstrateWeight<Runtime>;
}

parameter_types! {
	pub const AdapterDeposit: Balance = UNIT;
	pub const PromptDeposit: Balance = UNIT;
	pub const ToolDeposit: Balance = UNIT;
}

impl pallet_registry::Config for Runtime {
	type Currency = Balances;
	type RuntimeHoldReason = RuntimeHoldReason;
	type GovernanceOrigin = EnsureRoot<AccountId>;
	type DataNets = DataNets;
	type AdapterDeposit = AdapterDeposit;
	type PromptDeposit = PromptDeposit;
	type ToolDeposit = ToolDeposit;
	// MCP's limit on a tool's name.
	type MaxToolNameLen = ConstU32<128>;
	type MaxNameLen = ConstU32<64>;
	type MaxArchitectureLen = ConstU32<32>;
	type MaxUriLen = ConstU32<256>;
	type MaxRank = ConstU32<256>;
	type MaxProvenance = ConstU32<16>;
	type PriceHold = MaxReceiptLifetime;
	// One block is enough that a registration seen in the pool cannot be committed to in time;
	// a day to register after committing.
	type CommitmentDelay = ConstU32<1>;
	type CommitmentLifetime = ConstU32<DAYS>;
	type MaxCommitments = ConstU32<8>;
	type WeightInfo = pallet_registry::weights::SubstrateWeight<Runtime>;
	#[cfg(feature = "runtime-benchmarks")]
	type BenchmarkHelper = benchmark_helpers::CreateDataNets;
}

parameter_types! {
	pub const MinStake: Balance = 1_000 * UNIT;
	/// A week: long enough for receipts signed before unbonding to be settled or disputed.
	pub const UnbondingDelay: BlockNumber = 7 * DAYS;
	pub const EquivocationSlash: Perbill = Perbill::from_percent(50);
}

impl pallet_workers::Config for Runtime {
	type Currency = Balances;
	type RuntimeHoldReason = RuntimeHoldReason;
	type Treasury = TreasuryAccount;
	type Registry = Registry;
	type GovernanceOrigin = EnsureRoot<AccountId>;
	type MinStake = MinStake;
	type UnbondingDelay = UnbondingDelay;
	type PriceHold = MaxReceiptLifetime;
	type EquivocationSlash = EquivocationSlash;
	type MaxEndpointLen = ConstU32<256>;
	type MaxServedModels = ConstU32<8>;
	// Four rotations a week; each retired key is tried when checking an equivocation proof.
	type MaxRetiredKeys = ConstU32<4>;
	type WeightInfo = pallet_workers::weights::SubstrateWeight<Runtime>;
	#[cfg(feature = "runtime-benchmarks")]
	type BenchmarkHelper = benchmark_helpers::RegisterBaseModels;
}

/// What the pallets' benchmarks need that only the runtime can provide: sibling pallets' state.
#[cfg(feature = "runtime-benchmarks")]
pub mod benchmark_helpers {
	use super::*;
	use openledger_primitives::{BaseModelId, DataNetId};
	use polkadot_sdk::{frame_support::traits::fungible::Mutate, sp_core::H256};

	pub struct CreateDataNets;
	impl pallet_registry::BenchmarkHelper for CreateDataNets {
		fn create_datanet(i: u32) -> DataNetId {
			let owner: AccountId = polkadot_sdk::frame_benchmarking::account("datanet-owner", i, 0);
			let _ = Balances::set_balance(&owner, 1_000 * UNIT);
			let id = pallet_datanets::NextDataNetId::<Runtime>::get();
			pallet_datanets::Pallet::<Runtime>::create_datanet(
				RuntimeOrigin::signed(owner),
				alloc::vec![],
				H256::zero(),
				alloc::vec![],
				alloc::vec![],
				MinContributionDeposit::get(),
			)
			.expect("a funded account can create a DataNet");
			id
		}
	}

	pub struct RegisterBaseModels;
	impl pallet_workers::BenchmarkHelper for RegisterBaseModels {
		fn active_base_models(count: u32) -> alloc::vec::Vec<BaseModelId> {
			(0..count)
				.map(|i| {
					let id = pallet_registry::NextBaseModelId::<Runtime>::get();
					pallet_registry::Pallet::<Runtime>::register_base_model(
						RuntimeOrigin::root(),
						alloc::vec![],
						alloc::vec![],
						H256::repeat_byte(i as u8),
					)
					.expect("root registers base models");
					id
				})
				.collect()
		}
	}
}

parameter_types! {
	/// A receipt may be settled up to a day after it was signed.
	pub const MaxReceiptLifetime: BlockNumber = DAYS;
	/// Credit stays drawable for a receipt's whole lifetime after a withdrawal is asked for.
	pub const WithdrawalDelay: BlockNumber = DAYS;
	/// Pays for an allowance's storage (about 130 bytes), as a contribution's deposit does.
	pub const AllowanceDeposit: Balance = 10 * MILLI_UNIT;
}

impl pallet_attribution::Config for Runtime {
	type Currency = Balances;
	type RuntimeHoldReason = RuntimeHoldReason;
	type Treasury = TreasuryAccount;
	type DataNets = DataNets;
	type Registry = Registry;
	type Workers = Workers;
	type GovernanceOrigin = EnsureRoot<AccountId>;
	type MaxReceiptsPerBatch = ConstU32<1_000>;
	type MaxReceiptLifetime = MaxReceiptLifetime;
	type WithdrawalDelay = WithdrawalDelay;
	type MaxAllowances = ConstU32<64>;
	type AllowanceDeposit = AllowanceDeposit;
	// A worker settling 2,000 receipts a second, all with one expiry, fits a set per 6-s block.
	type MaxSettledPerExpiry = ConstU32<16_384>;
	// At least the record sets a block can create (checked in `tests/config.rs`).
	type MaxPrunePerBlock = ConstU32<4_096>;
	type WeightInfo = pallet_attribution::weights::SubstrateWeight<Runtime>;
	#[cfg(feature = "runtime-benchmarks")]
	type BenchmarkHelper = pallet_attribution::benchmarking::SiblingPallets<Runtime>;
}
