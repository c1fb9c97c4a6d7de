//! Prints how many receipts fit in a block, from the runtime's benchmarked weights and the
//! pallet's own batch weight function (`pallet_attribution::Pallet::batch_weight`).
//!
//! `SKIP_WASM_BUILD=1 cargo run --release -p openledger-runtime --example receipt_throughput`

use openledger_primitives::{content_hash, AttributionEntry, AttributionSource, Receipt, SignedReceipt, PPM};
use openledger_runtime::{configs::RuntimeBlockWeights, AccountId, Runtime};
use polkadot_sdk::{
	frame_support::{dispatch::DispatchClass, traits::Get, BoundedVec},
	sp_core::sr25519,
};

type Attribution = pallet_attribution::Pallet<Runtime>;

/// `count` receipts with `entries` retrieval entries each; one worker, adapter and prompt, and
/// either one payer for all (`shared`) or a payer each. Signatures are not checked by the weight
/// function, so they are left blank.
fn batch(count: u32, entries: u32, shared: bool) -> Vec<pallet_attribution::SignedReceiptOf<Runtime>> {
	(0..count)
		.map(|n| {
			let payer = if shared { 0 } else { n + 1 };
			let attribution = (0..entries)
				.map(|i| AttributionEntry {
					source: AttributionSource::Retrieval,
					datanet: 0,
					item: Some(n * entries + i),
					weight_ppm: PPM / entries + if i == 0 { PPM % entries } else { 0 },
				})
				.collect();
			SignedReceipt {
				receipt: Receipt {
					worker: AccountId::new([1; 32]),
					payer: AccountId::new(content_hash(&payer.to_le_bytes()).0),
					request_hash: content_hash(&n.to_le_bytes()),
					output_hash: content_hash(b"output"),
					base_model: 0,
					adapter: Some((0, content_hash(b"adapter"))),
					prompt: Some((0, content_hash(b"prompt"))),
					prompt_tokens: 300,
					completion_tokens: 700,
					attribution: BoundedVec::truncate_from(attribution),
					expires_at: 100,
				},
				signature: sr25519::Signature::from_raw([0; 64]),
				voucher: None,
			}
		})
		.collect()
}

/// The largest batch (up to `max_batch`) that fits `per_tx`, its weight, and how many receipts
/// a block of `budget` settles in whole batches of it.
fn fill(budget: u64, per_tx: u64, max_batch: u32, entries: u32, shared: bool) -> (u32, u64, u64) {
	let mut count = max_batch;
	let mut weight = Attribution::batch_weight(&batch(count, entries, shared)).ref_time();
	while weight > per_tx && count > 1 {
		count = count * 9 / 10;
		weight = Attribution::batch_weight(&batch(count, entries, shared)).ref_time();
	}
	(count, weight, budget / weight * u64::from(count))
}

fn main() {
	let block = RuntimeBlockWeights::get();
	let normal = block.get(DispatchClass::Normal);
	let budget = normal.max_total.unwrap_or(block.max_block).ref_time();
	let per_tx = normal.max_extrinsic.unwrap_or(block.max_block).ref_time();
	let max_batch = <<Runtime as pallet_attribution::Config>::MaxReceiptsPerBatch as Get<u32>>::get();
	println!(
		"normal-class budget per block: {:.3} s of reference compute (max {:.3} s in one extrinsic); \
		 batches of up to {max_batch} receipts",
		budget as f64 / 1e12,
		per_tx as f64 / 1e12
	);
	println!();
	println!(
		"| attribution entries | batch | µs per receipt | receipts per 6-s block | receipts/s at 6-s blocks | receipts/s at 2-s blocks |"
	);
	println!("|---:|---|---:|---:|---:|---:|");
	for entries in [0u32, 1, 3, 8, 16, 32] {
		for (shared, who) in [(true, "one payer"), (false, "a payer each")] {
			// At 2-s blocks the same share of block time is compute: a third of the 6-s budget
			// and of the extrinsic limit.
			let (count, weight, per_block) = fill(budget, per_tx, max_batch, entries, shared);
			let (_, _, per_block_2s) = fill(budget / 3, per_tx / 3, max_batch, entries, shared);
			println!(
				"| {entries} | {count}, {who} | {:.1} | {per_block} | {:.0} | {:.0} |",
				weight as f64 / 1e6 / f64::from(count),
				per_block as f64 / 6.0,
				per_block_2s as f64 / 2.0,
			);
		}
	}
}
