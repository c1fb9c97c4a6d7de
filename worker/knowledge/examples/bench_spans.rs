//! Span attribution benchmark: builds a span index over synthetic DataNet items (deterministic,
//! from a seeded word list), saves and reloads it, then times `find_spans` on 200-word outputs
//! with a few planted verbatim spans. Prints a Markdown table.
//!
//! ```text
//! cargo run --release -p openledger-worker --example bench_spans -- [ITEMS] [QUERIES]
//! ```
//! Defaults: 100000 items of about 500 bytes, 200 queries.

use std::time::{Duration, Instant};

use openledger_knowledge::attribution::SpanIndex;
use rand::{rngs::StdRng, Rng as _, SeedableRng};

/// A seeded generator, so every run indexes the same corpus.
struct Rng(StdRng);

impl Rng {
	fn next(&mut self) -> u64 {
		self.0.random()
	}

	fn below(&mut self, n: usize) -> usize {
		(self.next() % n as u64) as usize
	}
}

/// A vocabulary of pronounceable words, and a Zipf-like pick (frequent words are short).
struct Vocab(Vec<String>);

impl Vocab {
	fn new(rng: &mut Rng, size: usize) -> Self {
		const SYL: [&str; 24] = [
			"ka", "lo", "mi", "ne", "ru", "sa", "te", "vo", "zi", "pa", "qu", "do", "fe", "gi", "ho", "ju", "ban",
			"tor", "lin", "mes", "cap", "dun", "rel", "sto",
		];
		let words = (0..size)
			.map(|i| {
				let syllables = 1 + (i as f64).log(24.0).floor() as usize + rng.below(2);
				(0..syllables).map(|_| SYL[rng.below(SYL.len())]).collect()
			})
			.collect();
		Self(words)
	}

	fn pick(&self, rng: &mut Rng) -> &str {
		// Roughly Zipf: take the minimum of a uniform draw over a shrinking range.
		let r = rng.below(self.0.len());
		let r = r.min(rng.below(self.0.len()));
		&self.0[r]
	}
}

fn sentence(vocab: &Vocab, rng: &mut Rng, min_bytes: usize) -> String {
	let mut out = String::with_capacity(min_bytes + 16);
	let mut since_stop = 0;
	while out.len() < min_bytes {
		if !out.is_empty() {
			out.push(' ');
		}
		out.push_str(vocab.pick(rng));
		since_stop += 1;
		if since_stop > 6 && rng.below(8) == 0 {
			out.push(if rng.below(3) == 0 { ',' } else { '.' });
			since_stop = 0;
		}
	}
	out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
	let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
	sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
	format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn main() {
	let args: Vec<String> = std::env::args().collect();
	let n_items: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
	let n_queries: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(200);

	let mut rng = Rng(StdRng::seed_from_u64(0x5EED_0F_5A4E5));
	let vocab = Vocab::new(&mut rng, 20_000);
	let t = Instant::now();
	let items: Vec<(u32, u32, String)> =
		(0..n_items).map(|i| ((i % 16) as u32, (i / 16) as u32, sentence(&vocab, &mut rng, 500))).collect();
	let gen_time = t.elapsed();
	let corpus_bytes: usize = items.iter().map(|i| i.2.len()).sum();

	let t = Instant::now();
	let index = SpanIndex::build(items.iter().map(|(d, i, s)| (*d, *i, s.as_str()))).expect("build");
	let build_time = t.elapsed();

	let dir = std::env::temp_dir().join(format!("bench-spans-{}", std::process::id()));
	std::fs::create_dir_all(&dir).expect("temp dir");
	let path = dir.join("spans.idx");
	let t = Instant::now();
	index.save(&path).expect("save");
	let save_time = t.elapsed();
	let file_bytes = std::fs::metadata(&path).expect("stat").len();
	let t = Instant::now();
	let loaded = SpanIndex::load(&path).expect("load");
	let load_time = t.elapsed();
	assert_eq!(loaded.token_count(), index.token_count());
	drop(index);
	let _ = std::fs::remove_dir_all(&dir);

	// Outputs: 200 words of fresh text with 3 planted spans of 12-20 words copied from items.
	let mut times = Vec::with_capacity(n_queries);
	let mut found_planted = 0usize;
	let mut spans_total = 0usize;
	for _ in 0..n_queries {
		let mut words: Vec<String> = Vec::new();
		let mut planted = Vec::new();
		for _ in 0..3 {
			let filler = sentence(&vocab, &mut rng, 250);
			words.extend(filler.split(' ').take(45).map(str::to_owned));
			let src = rng.below(items.len());
			let src_words: Vec<&str> = items[src].2.split(' ').collect();
			let len = 12 + rng.below(9);
			let start = rng.below(src_words.len().saturating_sub(len).max(1));
			words.extend(src_words[start..(start + len).min(src_words.len())].iter().map(|w| w.to_string()));
			planted.push((items[src].0, items[src].1));
		}
		while words.len() < 200 {
			words.push(vocab.pick(&mut rng).to_owned());
		}
		let output = words.join(" ");
		let t = Instant::now();
		let spans = loaded.find_spans(&output);
		times.push(t.elapsed());
		spans_total += spans.len();
		found_planted += planted.iter().filter(|p| spans.iter().any(|s| s.items.contains(p))).count();
	}
	times.sort();
	let mean = times.iter().sum::<Duration>() / times.len() as u32;

	println!("| metric | value |");
	println!("|---|---|");
	println!("| items | {n_items} |");
	println!("| corpus | {:.1} MB, {} tokens, {} distinct |", corpus_bytes as f64 / 1e6, loaded.token_count(), loaded.vocab_len());
	println!("| generate items | {} ms |", ms(gen_time));
	println!("| build index (tokenise + SA-IS) | {} ms |", ms(build_time));
	println!("| index file | {:.1} MB |", file_bytes as f64 / 1e6);
	println!("| save (write + fsync + rename) | {} ms |", ms(save_time));
	println!("| load (read + checksum + validate) | {} ms |", ms(load_time));
	println!("| queries | {n_queries} outputs of 200 words, 3 planted spans each |");
	println!("| planted spans found | {found_planted} / {} |", 3 * n_queries);
	println!("| spans reported (mean per output) | {:.2} |", spans_total as f64 / n_queries as f64);
	println!("| find_spans p50 | {} ms |", ms(percentile(&times, 0.5)));
	println!("| find_spans p99 | {} ms |", ms(percentile(&times, 0.99)));
	println!("| find_spans mean | {} ms |", ms(mean));
	println!("| find_spans max | {} ms |", ms(*times.last().expect("queries")));
}
