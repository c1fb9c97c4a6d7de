//! Receipts settled per second on a running dev chain with many worker keys: registers a base
//! model and K workers (each its own account and session key), gives the payer credit and an
//! allowance for each, signs N receipts (no adapter, prompt or attribution: the cheapest valid
//! receipt), then K submitters — one per worker key, as the worker runs them — submit their
//! receipts in batches and wait for inclusion. Prints a Markdown table.
//!
//! ```text
//! openledger-node --dev --rpc-port 9944 &
//! cargo run --release -p openledger-worker --example bench_settlement -- [WS] [WORKERS] [RECEIPTS] [BATCH]
//! ```
//! Defaults: ws://127.0.0.1:9944, 8 workers, 4000 receipts, batches of 250. The chain must be a
//! fresh dev chain (the dev accounts fund everything).

use std::time::Instant;

use openledger_primitives::content_hash;
use openledger_ledger::{
	chain::{runtime, ChainClient},
	keys::Sr25519Key,
	sign_receipt, Served, SignedReceipt,
};
use runtime::runtime_types::{
	bounded_collections::bounded_vec::BoundedVec, openledger_runtime::RuntimeCall, pallet_registry::pallet::Call as RegistryCall,
};
use subxt::utils::{MultiAddress, H256};

const OPEN: u128 = 1_000_000_000_000_000_000;

fn account(key: &Sr25519Key) -> subxt::utils::AccountId32 {
	subxt::utils::AccountId32(key.public().0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
	let args: Vec<String> = std::env::args().collect();
	let url = args.get(1).cloned().unwrap_or_else(|| "ws://127.0.0.1:9944".into());
	let workers: usize = args.get(2).map_or(Ok(8), |a| a.parse())?;
	let receipts: usize = args.get(3).map_or(Ok(4000), |a| a.parse())?;
	let batch: usize = args.get(4).map_or(Ok(250), |a| a.parse())?;
	let chain = ChainClient::connect(&url).await?;
	let genesis = chain.genesis();
	let alice = Sr25519Key::from_suri("//Alice")?;

	eprintln!("setting up: a base model, {workers} workers, the payer's credit and allowances");
	let seed = rand::random::<u64>();
	let model_hash = H256(content_hash(&seed.to_le_bytes()).0);
	let register = RuntimeCall::Registry(RegistryCall::register_base_model {
		name: b"bench".to_vec(),
		architecture: b"llama".to_vec(),
		weights_hash: model_hash,
	});
	let included = chain.submit(&runtime::tx().sudo().sudo(register), alice.signer()).await?;
	let base_model = included
		.events
		.find_first::<runtime::registry::events::BaseModelRegistered>()
		.ok_or_else(|| anyhow::anyhow!("no BaseModelRegistered"))??
		.base_model;
	let keys: Vec<(Sr25519Key, Sr25519Key)> = (0..workers)
		.map(|i| Ok((Sr25519Key::from_suri(&format!("//Bench{seed}/{i}"))?, Sr25519Key::from_suri(&format!("//Bench{seed}/{i}//s"))?)))
		.collect::<anyhow::Result<_>>()?;
	for (worker, _) in &keys {
		let call = runtime::tx().balances().transfer_keep_alive(MultiAddress::Id(account(worker)), 1_100 * OPEN);
		chain.submit(&call, alice.signer()).await?;
		let allowance = runtime::tx().attribution().set_allowance(account(worker), 1_000 * OPEN);
		chain.submit(&allowance, alice.signer()).await?;
	}
	chain.submit(&runtime::tx().attribution().deposit(10_000 * OPEN), alice.signer()).await?;
	let registrations = keys.iter().map(|(worker, session)| {
		let chain = chain.clone();
		async move {
			let call = runtime::tx().workers().register(session.public().0, b"bench".to_vec(), vec![base_model], OPEN / 1000, 1_000 * OPEN);
			chain.submit(&call, worker.signer()).await
		}
	});
	for result in futures::future::join_all(registrations).await {
		result?;
	}

	let expires_at = chain.best_block().await? + 1_000;
	let per_worker: Vec<Vec<SignedReceipt>> = keys
		.iter()
		.enumerate()
		.map(|(w, (worker, session))| {
			(0..receipts / workers)
				.map(|n| {
					let served = Served {
						payer: alice.account(),
						request_hash: content_hash(format!("{seed}/{w}/{n}").as_bytes()),
						output_hash: content_hash(format!("answer {n}").as_bytes()),
						base_model,
						adapter: None,
						prompt: None,
						prompt_tokens: 100,
						completion_tokens: 100,
						attribution: Vec::new(),
						tools: Vec::new(),
						expires_at,
						voucher: None,
					};
					sign_receipt(&worker.account(), session, &genesis, served)
				})
				.collect()
		})
		.collect();
	let total: usize = per_worker.iter().map(Vec::len).sum();

	eprintln!("submitting {total} receipts from {workers} worker keys in batches of {batch}");
	let start = Instant::now();
	let submitters = keys.iter().zip(per_worker).map(|((worker, _), receipts)| {
		let chain = chain.clone();
		async move {
			let (mut settled, mut rejected, mut blocks) = (0usize, 0usize, Vec::new());
			for chunk in receipts.chunks(batch.max(1)) {
				let call = runtime::tx()
					.attribution()
					.submit_receipts(BoundedVec(chunk.iter().cloned().map(subxt::utils::Static).collect()));
				let included = chain.submit(&call, worker.signer()).await?;
				settled += included.events.find::<runtime::attribution::events::ReceiptSettled>().count();
				rejected += included.events.find::<runtime::attribution::events::ReceiptRejected>().count();
				blocks.push(included.block);
			}
			anyhow::Ok((settled, rejected, blocks))
		}
	});
	let (mut settled, mut rejected, mut blocks) = (0, 0, Vec::new());
	for result in futures::future::join_all(submitters).await {
		let (s, r, b) = result?;
		settled += s;
		rejected += r;
		blocks.extend(b);
	}
	let wall = start.elapsed();
	blocks.sort();
	blocks.dedup();
	println!("| workers | receipts | batch | settled | rejected | blocks | seconds | settled per second |");
	println!("|---|---|---|---|---|---|---|---|");
	println!(
		"| {workers} | {total} | {batch} | {settled} | {rejected} | {} | {:.1} | {:.0} |",
		blocks.len(),
		wall.as_secs_f64(),
		settled as f64 / wall.as_secs_f64()
	);
	Ok(())
}
