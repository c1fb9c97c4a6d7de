//! Worker-side cost of a receipt: build it from a served request (32 attribution entries, a
//! voucher), sign it with the session key, and commit it to the outbox (fsynced), one at a time
//! and from several request threads at once. Prints a Markdown table.
//!
//! ```text
//! cargo run --release -p openledger-worker --example bench_receipts -- [RECEIPTS] [THREADS] [DIR]
//! ```
//! Defaults: 2000 receipts, 8 threads, a temporary directory (give DIR to measure another disk).

use std::{
	sync::Arc,
	time::{Duration, Instant},
};

use openledger_primitives::{content_hash, AttributionEntry, AttributionSource, ContentHash, PPM};
use openledger_ledger::{keys::Sr25519Key, outbox::Outbox, sign_receipt, sign_voucher, Served};

fn served(n: u64, payer: &Sr25519Key, worker: &Sr25519Key, genesis: &ContentHash) -> Served {
	let body = format!("{{\"model\":\"tutor\",\"messages\":[{{\"role\":\"user\",\"content\":\"question {n}\"}}]}}");
	let entries = 32u32;
	let attribution = (0..entries)
		.map(|i| AttributionEntry {
			source: if i % 2 == 0 { AttributionSource::Retrieval } else { AttributionSource::Span },
			datanet: 0,
			item: Some(i),
			weight_ppm: PPM / entries,
		})
		.collect();
	Served {
		payer: payer.account(),
		request_hash: content_hash(body.as_bytes()),
		output_hash: content_hash("an answer of a few hundred bytes ".repeat(10).as_bytes()),
		base_model: 0,
		adapter: Some((1, ContentHash::repeat_byte(7))),
		prompt: Some((2, ContentHash::repeat_byte(8))),
		prompt_tokens: 200,
		completion_tokens: 128,
		attribution,
		tools: Vec::new(),
		expires_at: 10_000,
		voucher: Some(sign_voucher(payer, worker.account(), body.as_bytes(), 1 << 60, 10_000, genesis)),
	}
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
	sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn row(what: &str, mut times: Vec<Duration>, wall: Duration) {
	times.sort();
	let ms = |d: Duration| d.as_secs_f64() * 1e3;
	println!(
		"| {what} | {} | {:.3} | {:.3} | {:.3} | {:.0} |",
		times.len(),
		ms(percentile(&times, 0.5)),
		ms(percentile(&times, 0.9)),
		ms(percentile(&times, 0.99)),
		times.len() as f64 / wall.as_secs_f64()
	);
}

fn main() -> anyhow::Result<()> {
	let args: Vec<String> = std::env::args().collect();
	let receipts: u64 = args.get(1).map_or(Ok(2000), |a| a.parse())?;
	let threads: u64 = args.get(2).map_or(Ok(8), |a| a.parse())?;
	let tmp = tempfile::tempdir_in(args.get(3).map_or_else(std::env::temp_dir, Into::into))?;
	let (payer, worker, session) =
		(Sr25519Key::from_suri("//Alice")?, Sr25519Key::from_suri("//Worker")?, Sr25519Key::from_suri("//Worker//session")?);
	let genesis = ContentHash::repeat_byte(1);
	let inputs: Vec<Served> = (0..receipts * 3).map(|n| served(n, &payer, &worker, &genesis)).collect();

	println!("| step | receipts | p50 ms | p90 ms | p99 ms | per second |");
	println!("|---|---|---|---|---|---|");
	// Build + sign.
	let start = Instant::now();
	let mut times = Vec::new();
	let mut signed = Vec::new();
	for input in inputs[..receipts as usize].iter().cloned() {
		let t = Instant::now();
		signed.push(sign_receipt(&worker.account(), &session, &genesis, input));
		times.push(t.elapsed());
	}
	row("build + sign", times, start.elapsed());

	// Build + sign + commit, one request at a time.
	let outbox = Arc::new(Outbox::open(&tmp.path().join("outbox.redb"), genesis)?);
	let start = Instant::now();
	let mut times = Vec::new();
	for input in inputs[receipts as usize..2 * receipts as usize].iter().cloned() {
		let t = Instant::now();
		outbox.append(&sign_receipt(&worker.account(), &session, &genesis, input))?;
		times.push(t.elapsed());
	}
	row("build + sign + commit (fsync), serial", times, start.elapsed());

	// The same from `threads` request threads at once.
	let per_thread = receipts / threads.max(1);
	let start = Instant::now();
	let handles: Vec<_> = (0..threads)
		.map(|t| {
			let outbox = outbox.clone();
			let first = (2 * receipts + t * per_thread) as usize;
			let mine: Vec<Served> = inputs[first..first + per_thread as usize].to_vec();
			let (worker, session) = (worker.clone(), session.clone());
			std::thread::spawn(move || -> anyhow::Result<Vec<Duration>> {
				let mut times = Vec::new();
				for input in mine {
					let t = Instant::now();
					outbox.append(&sign_receipt(&worker.account(), &session, &genesis, input))?;
					times.push(t.elapsed());
				}
				Ok(times)
			})
		})
		.collect();
	let mut times = Vec::new();
	for handle in handles {
		times.extend(handle.join().expect("bench thread")?);
	}
	row(&format!("build + sign + commit (fsync), {threads} threads"), times, start.elapsed());
	Ok(())
}
