//! The runtime's constants keep the promises the pallets rely on across each other.

use openledger_runtime::configs::{MaxReceiptLifetime, UnbondingDelay, WithdrawalDelay};

/// A payer who asks for their credit back cannot take it before every receipt they authorised
/// can be settled: otherwise a worker could serve a request and find nothing left to pay it.
#[test]
fn credit_stays_drawable_for_a_receipts_lifetime() {
	assert!(WithdrawalDelay::get() >= MaxReceiptLifetime::get());
}

/// A worker who unbonds stays slashable until every receipt it signed has expired, so an
/// equivocation found late can still be punished.
#[test]
fn stake_stays_slashable_for_a_receipts_lifetime() {
	assert!(UnbondingDelay::get() >= MaxReceiptLifetime::get());
}

/// A price rise (an adapter's, a prompt's, a worker's) is charged only after every receipt
/// signed at the old price has expired, so no allowance-paid request costs more than it was
/// quoted.
#[test]
fn a_price_rise_waits_out_a_receipts_lifetime() {
	use openledger_runtime::Runtime;
	use polkadot_sdk::frame_support::traits::Get;
	let registry: u32 = <<Runtime as pallet_registry::Config>::PriceHold as Get<u32>>::get();
	let workers: u32 = <<Runtime as pallet_workers::Config>::PriceHold as Get<u32>>::get();
	assert!(registry >= MaxReceiptLifetime::get() && workers >= MaxReceiptLifetime::get());
}

/// Every record set is pruned once its expiry has passed, so a block must be able to prune at
/// least as many sets as a block can create, or storage would grow without bound under full
/// load; and the most pruning a block can do must leave half the block (pruning is mandatory
/// weight: normal transactions get what it leaves of the block).
#[test]
fn pruning_keeps_up_with_settling_and_fits_a_block() {
	use openledger_runtime::{configs::RuntimeBlockWeights, Runtime};
	use polkadot_sdk::frame_support::{dispatch::DispatchClass, traits::Get};
	type Attribution = pallet_attribution::Pallet<Runtime>;
	let max_prune: u32 = <<Runtime as pallet_attribution::Config>::MaxPrunePerBlock as Get<u32>>::get();

	let block = RuntimeBlockWeights::get();
	let normal = block.get(DispatchClass::Normal).max_total.unwrap_or(block.max_block).ref_time();
	// A batch is charged at least this for each record set it touches (and more for the
	// receipts in it), so no block creates more sets than this.
	let sets = (normal / Attribution::record_set_weight().ref_time()) as u32;
	assert!(max_prune >= sets, "a block can create up to {sets} record sets but prunes {max_prune}");

	let worst = Attribution::prune_weight(max_prune, 0).ref_time();
	let half = block.max_block.ref_time() / 2;
	assert!(worst <= half, "pruning may take {worst}, more than half a block ({half})");
}

mod fees {
	use openledger_runtime::{
		configs::{FeeMultiplierUpdate, RuntimeBlockWeights},
		Runtime, RuntimeCall, TxExtension, UncheckedExtrinsic, MILLI_UNIT, UNIT,
	};
	use pallet_attribution::WeightInfo as _;
	use polkadot_sdk::{
		frame_support::{
			dispatch::{DispatchClass, DispatchInfo, GetDispatchInfo, Pays},
			weights::{Weight, WeightToFee as _},
		},
		frame_system::{self, CheckEra, CheckGenesis, CheckNonZeroSender, CheckNonce, CheckSpecVersion, CheckTxVersion, CheckWeight},
		pallet_balances,
		pallet_transaction_payment::{self, Multiplier, MultiplierUpdate},
		sp_io::TestExternalities,
		sp_keyring::Sr25519Keyring,
		sp_core::sr25519,
		sp_runtime::{
			generic::Era,
			traits::{Convert, One},
			FixedPointNumber, MultiSignature,
		},
	};

	type TransactionPayment = pallet_transaction_payment::Pallet<Runtime>;
	type WeightToFee = <Runtime as pallet_transaction_payment::Config>::WeightToFee;

	/// The fee of a signed transaction of `len` bytes at the floor multiplier.
	fn fee(info: &DispatchInfo, len: u32) -> u128 {
		TestExternalities::default().execute_with(|| TransactionPayment::compute_fee(len, info, 0))
	}

	/// `call` signed as a user's wallet signs it: its dispatch info with the runtime's extension
	/// weight, and its encoded length.
	fn signed(call: RuntimeCall) -> (DispatchInfo, u32) {
		let extensions: TxExtension = (
			CheckNonZeroSender::new(),
			CheckSpecVersion::new(),
			CheckTxVersion::new(),
			CheckGenesis::new(),
			CheckEra::from(Era::Immortal),
			CheckNonce::from(0),
			CheckWeight::new(),
			pallet_transaction_payment::ChargeTransactionPayment::from(0),
		);
		let signature = MultiSignature::Sr25519(sr25519::Signature::from_raw([0; 64]));
		let signer = Sr25519Keyring::Alice.to_account_id().into();
		let extrinsic = UncheckedExtrinsic::new_signed(call.clone(), signer, signature, extensions);
		let info = DispatchInfo { extension_weight: extrinsic.extension_weight(), ..call.get_dispatch_info() };
		(info, codec::Encode::encoded_size(&extrinsic) as u32)
	}

	/// A user can afford to move money: a transfer costs well under a milli-OPEN.
	#[test]
	fn a_transfer_costs_a_fraction_of_a_milli_open() {
		let call = RuntimeCall::Balances(pallet_balances::Call::transfer_keep_alive {
			dest: Sr25519Keyring::Bob.to_account_id().into(),
			value: UNIT,
		});
		let (info, len) = signed(call);
		let transfer = fee(&info, len);
		println!("a transfer costs {transfer} planck");
		assert!(transfer > MILLI_UNIT / 20 && transfer < MILLI_UNIT, "a transfer costs {transfer}");
	}

	/// Block space is not free: keeping the normal class of one block full costs over an OPEN, so
	/// filling blocks for a day costs tens of thousands (more as the multiplier climbs).
	#[test]
	fn filling_a_block_costs_over_an_open() {
		let block = RuntimeBlockWeights::get();
		let normal = block.get(DispatchClass::Normal).max_total.expect("normal class is capped");
		assert!(WeightToFee::weight_to_fee(&normal) > UNIT);
	}

	/// A worker settles its receipts for a small share of what they earn: in a batch of 32 with
	/// vouchers (the heaviest kind), each receipt's share of the transaction fee (about 0.2
	/// milli-OPEN) stays under a quarter of a milli-OPEN, against the ~7 milli-OPEN each of the
	/// demo's receipts earns.
	#[test]
	fn settling_a_receipt_costs_a_small_share_of_its_fee() {
		let batch = 32u32;
		let weight = <Runtime as pallet_attribution::Config>::WeightInfo::submit_receipts_shared_vouchers(batch);
		// The extensions weigh the same whatever the call: take them from a signed remark.
		let (remark, _) = signed(RuntimeCall::System(frame_system::Call::remark { remark: vec![] }));
		let info = DispatchInfo { call_weight: weight, class: DispatchClass::Normal, pays_fee: Pays::Yes, ..remark };
		// About 450 bytes per receipt with its voucher (SCALE of the receipt, two signatures).
		let per_receipt = fee(&info, 450 * batch) / batch as u128;
		println!("settling a receipt in a batch of {batch} costs {per_receipt} planck");
		assert!(per_receipt < MILLI_UNIT / 4, "a receipt costs {per_receipt} to settle");
	}

	/// Sustained congestion raises the weight fee; quiet blocks bring it back down, but never
	/// below the floor, and a congested block at the floor still raises it.
	#[test]
	fn congestion_moves_the_fee_and_the_floor_holds() {
		TestExternalities::default().execute_with(|| {
			let normal = RuntimeBlockWeights::get().get(DispatchClass::Normal).max_total.unwrap();
			let one = Multiplier::one();
			frame_system::Pallet::<Runtime>::set_block_consumed_resources(normal, 0);
			assert!(FeeMultiplierUpdate::convert(one) > one, "a full block raises fees");
			frame_system::Pallet::<Runtime>::set_block_consumed_resources(Weight::zero(), 0);
			let high = Multiplier::saturating_from_integer(2);
			assert!(FeeMultiplierUpdate::convert(high) < high, "an empty block lowers them");
			assert_eq!(FeeMultiplierUpdate::convert(one), one, "never below the floor");
			assert_eq!(FeeMultiplierUpdate::min(), one);
		});
	}
}
