//! Prints how many receipts a block settles in the steady state, from the runtime's benchmarked
//! weights and the pallet's own weight functions (`pallet_attribution::Pallet::batch_weight` for
//! settling, which includes removing the batch's record set once it expires; the pruning hook
//! that does so in a later block is counted against that block's total as well).
//!
//! `SKIP_WASM_BUILD=1 cargo run --release -p openledger-runtime --example receipt_throughput`

use openledger_primitives::{
	content_hash, AttributionEntry, AttributionSource, Receipt, SignedReceipt, SignedVoucher, Voucher, PPM,
};
use codec::Encode;
use openledger_runtime::{
	configs::{RuntimeBlockLength, RuntimeBlockWeights},
	AccountId, Runtime, RuntimeCall,
};
use polkadot_sdk::{
	frame_support::{dispatch::DispatchClass, traits::Get, BoundedVec},
	sp_core::sr25519,
};

type Attribution = pallet_attribution::Pallet<Runtime>;

/// `count` receipts with `entries` retrieval entries each; one worker, adapter and prompt, and
/// either one payer for all (`shared`) or a payer each; paid by voucher or from an allowance.
/// Signatures are not checked by the weight function, so they are left blank.
fn batch(count: u32, entries: u32, shared: bool, voucher: bool) -> Vec<pallet_attribution::SignedReceiptOf<Runtime>> {
	(0..count)
		.map(|n| {
			let payer = AccountId::new(content_hash(&(if shared { 0 } else { n + 1 }).to_le_bytes()).0);
			let worker = AccountId::new([1; 32]);
			let request_hash = content_hash(&n.to_le_bytes());
			let attribution = (0..entries)
				.map(|i| AttributionEntry {
					source: AttributionSource::Retrieval,
					datanet: 0,
					item: Some(n * entries + i),
					weight_ppm: PPM / entries + if i == 0 { PPM % entries } else { 0 },
				})
				.collect();
			let voucher = voucher.then(|| SignedVoucher {
				voucher: Voucher { payer: payer.clone(), worker: worker.clone(), request_hash, max_fee: 0, expires_at: 100 },
				signature: sr25519::Signature::from_raw([0; 64]).into(),
			});
			SignedReceipt {
				receipt: Receipt {
					worker,
					payer,
					request_hash,
					output_hash: content_hash(b"output"),
					base_model: 0,
					adapter: Some((0, content_hash(b"adapter"))),
					prompt: Some((0, content_hash(b"prompt"))),
					prompt_tokens: 300,
					completion_tokens: 700,
					attribution: BoundedVec::truncate_from(attribution),
					tools: Default::default(),
					expires_at: 100,
				},
				signature: sr25519::Signature::from_raw([0; 64]),
				voucher,
			}
		})
		.collect()
}

/// What a signed extrinsic adds to its call: address, signature and transaction extensions.
const ENVELOPE_BYTES: u64 = 128;

/// Pruning a batch's record set (one worker and expiry) and passing its block.
fn prune_per_batch() -> u64 {
	Attribution::prune_weight(1, 1).ref_time()
}

/// The runtime's limits for one block of `seconds`: at 2-s blocks a block gets a third of the
/// 6-s compute, of the extrinsic limit and of the block length.
struct Limits {
	/// Compute for normal transactions.
	normal: u64,
	/// Compute for everything, the pruning hook included.
	total: u64,
	per_tx: u64,
	/// Bytes for normal transactions.
	length: u64,
}

/// The largest batch (up to `max_batch`) that fits `limits.per_tx`, its weight, its encoded
/// length, and how many receipts a block settles in whole batches of it while its pruning hook
/// removes as many expired record sets (the steady state: each batch's set is pruned once it
/// expires), limited by compute or by length, whichever binds first.
fn fill(limits: &Limits, max_batch: u32, entries: u32, shared: bool, voucher: bool) -> (u32, u64, u64, u64) {
	let weight_of = |count| Attribution::batch_weight(&batch(count, entries, shared, voucher)).ref_time();
	let mut count = max_batch;
	let mut weight = weight_of(count);
	while weight > limits.per_tx && count > 1 {
		count = count * 9 / 10;
		weight = weight_of(count);
	}
	let prune = prune_per_batch();
	let call = RuntimeCall::Attribution(pallet_attribution::Call::submit_receipts {
		receipts: BoundedVec::truncate_from(batch(count, entries, shared, voucher)),
	});
	let length = call.encoded_size() as u64 + ENVELOPE_BYTES;
	let batches = (limits.normal / weight).min(limits.total / (weight + prune)).min(limits.length / length);
	(count, weight, length, batches * u64::from(count))
}

fn main() {
	let block = RuntimeBlockWeights::get();
	let normal = block.get(DispatchClass::Normal);
	let six = Limits {
		normal: normal.max_total.unwrap_or(block.max_block).ref_time(),
		total: block.max_block.ref_time(),
		per_tx: normal.max_extrinsic.unwrap_or(block.max_block).ref_time(),
		length: u64::from(*RuntimeBlockLength::get().max.get(DispatchClass::Normal)),
	};
	let two = Limits {
		normal: six.normal / 3,
		total: six.total / 3,
		per_tx: six.per_tx / 3,
		length: six.length / 3,
	};
	let max_batch = <<Runtime as pallet_attribution::Config>::MaxReceiptsPerBatch as Get<u32>>::get();
	println!(
		"per 6-s block: {:.3} s of reference compute, {:.3} s of it for normal transactions \
		 (max {:.3} s in one extrinsic), {:.2} MiB for normal transactions; batches of up to \
		 {max_batch} receipts",
		six.total as f64 / 1e12,
		six.normal as f64 / 1e12,
		six.per_tx as f64 / 1e12,
		six.length as f64 / (1024.0 * 1024.0)
	);
	println!();
	println!(
		"| attribution entries | batch | paid by | µs per receipt | + pruning µs | bytes per receipt | receipts per 6-s block | bound by | receipts/s at 6-s blocks | receipts/s at 2-s blocks |"
	);
	println!("|---:|---|---|---:|---:|---:|---:|---|---:|---:|");
	for entries in [0u32, 1, 3, 8, 16, 32] {
		for (shared, who) in [(true, "one payer"), (false, "a payer each")] {
			for (voucher, paid_by) in [(false, "allowance"), (true, "voucher")] {
				let (count, weight, length, per_block) = fill(&six, max_batch, entries, shared, voucher);
				let (_, _, _, per_block_2s) = fill(&two, max_batch, entries, shared, voucher);
				let prune = prune_per_batch();
				let by_length = six.length / length * u64::from(count);
				let bound = if per_block == by_length { "length" } else { "compute" };
				println!(
					"| {entries} | {count}, {who} | {paid_by} | {:.1} | {:.1} | {} | {per_block} | {bound} | {:.0} | {:.0} |",
					weight as f64 / 1e6 / f64::from(count),
					prune as f64 / 1e6 / f64::from(count),
					length / u64::from(count),
					per_block as f64 / 6.0,
					per_block_2s as f64 / 2.0,
				);
			}
		}
	}
}
