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
