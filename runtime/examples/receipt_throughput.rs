//! Prints how many receipts fit in a block, from the runtime's benchmarked weights.
//!
//! `SKIP_WASM_BUILD=1 cargo run --release -p openledger-runtime --example receipt_throughput`

use openledger_runtime::{configs::RuntimeBlockWeights, Runtime};
use pallet_attribution::WeightInfo;
use polkadot_sdk::frame_support::dispatch::DispatchClass;

type AttributionWeights = <Runtime as pallet_attribution::Config>::WeightInfo;

fn main() {
	let block = RuntimeBlockWeights::get();
	let normal = block.get(DispatchClass::Normal);
	let budget = normal.max_total.unwrap_or(block.max_block).ref_time();
	let per_tx = normal.max_extrinsic.unwrap_or(block.max_block).ref_time();
	let seconds_of_compute = budget as f64 / 1e12;
	println!(
		"normal-class budget per block: {seconds_of_compute:.3} s of reference compute \
		 (max {:.3} s in one extrinsic)",
		per_tx as f64 / 1e12
	);
	println!();
	println!("| attribution entries | weight of one receipt (µs) | receipts per block | receipts/s at 6-s blocks | receipts/s at 2-s blocks |");
	println!("|---:|---:|---:|---:|---:|");
	for entries in [0u32, 1, 3, 8, 16, 32] {
		let weight = AttributionWeights::submit_receipt(entries).ref_time();
		let per_block = budget / weight;
		// At 2-s blocks the same share of block time is compute: a third of the 6-s budget.
		let per_block_2s = budget / 3 / weight;
		println!(
			"| {entries} | {:.1} | {per_block} | {:.0} | {:.0} |",
			weight as f64 / 1e6,
			per_block as f64 / 6.0,
			per_block_2s as f64 / 2.0,
		);
	}
}
