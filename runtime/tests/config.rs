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

/// Every settled record is pruned a lifetime later, so a block must be able to prune at least
/// as many records (and their batches' lists) as a block can settle, or storage would grow
/// without bound under full load; and the most pruning a block can do must leave half the block
/// (pruning is mandatory weight: normal transactions get what it leaves of the block).
#[test]
fn pruning_keeps_up_with_settling_and_fits_a_block() {
	use openledger_runtime::{configs::RuntimeBlockWeights, Runtime};
	use pallet_attribution::WeightInfo;
	use polkadot_sdk::frame_support::{dispatch::DispatchClass, traits::Get};
	type Weights = pallet_attribution::weights::SubstrateWeight<Runtime>;
	let max_prune: u32 = <<Runtime as pallet_attribution::Config>::MaxPrunePerBlock as Get<u32>>::get();
	let max_batch: u32 = <<Runtime as pallet_attribution::Config>::MaxReceiptsPerBatch as Get<u32>>::get();

	let block = RuntimeBlockWeights::get();
	let normal = block.get(DispatchClass::Normal).max_total.unwrap_or(block.max_block).ref_time();
	// No receipt costs less than one more in a shared context.
	let cheapest = Weights::submit_receipts_shared(2).ref_time() - Weights::submit_receipts_shared(1).ref_time();
	let settled = (normal / cheapest) as u32;
	let lists = settled.div_ceil(max_batch);
	assert!(max_prune >= settled + lists, "a block settles up to {settled} records in {lists} lists but prunes {max_prune}");

	let worst = pallet_attribution::Pallet::<Runtime>::prune_weight(max_prune / 2, max_prune / 2, 0).ref_time();
	let half = block.max_block.ref_time() / 2;
	assert!(worst <= half, "pruning may take {worst}, more than half a block ({half})");
}
