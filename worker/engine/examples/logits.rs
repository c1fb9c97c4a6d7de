//! This engine's next-token log-probabilities at every position of token sequences, for a
//! comparison with another engine on the same model (scripts/families/compare.py).
//!
//!   logits MODEL OUT IDS [PREFILL]
//!   logits MODEL OUT @SEQUENCES
//!
//! MODEL is a GGUF file or an HF directory; IDS comma-separated token ids. The first PREFILL ids
//! (default: half of them) go in as one prompt chunk, then the rest one decode step at a time,
//! so both of the engine's paths are compared. SEQUENCES is a file of lines `PREFILL:IDS`, run
//! one after the other on the model loaded once. OUT receives little-endian f32
//! log-probabilities, one row of `vocab` per position from PREFILL - 1 to the last, sequence
//! after sequence.
use std::{io::Write, path::PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, D};
use openledger_engine::model::{Llama, SeqStep};

fn parse_ids(text: &str) -> Result<Vec<u32>> {
	text.split(',').map(|s| s.trim().parse().with_context(|| format!("token id `{s}`"))).collect()
}

fn main() -> Result<()> {
	let args: Vec<String> = std::env::args().skip(1).collect();
	if !(3..=4).contains(&args.len()) {
		bail!("usage: logits MODEL OUT IDS [PREFILL] | logits MODEL OUT @SEQUENCES");
	}
	let model = PathBuf::from(&args[0]);
	let sequences: Vec<(usize, Vec<u32>)> = match args[2].strip_prefix('@') {
		Some(file) => std::fs::read_to_string(file)
			.with_context(|| format!("reading {file}"))?
			.lines()
			.map(|line| {
				let (prefill, ids) = line.split_once(':').context("a line that is not PREFILL:IDS")?;
				Ok((prefill.parse().context("PREFILL is not a number")?, parse_ids(ids)?))
			})
			.collect::<Result<_>>()?,
		None => {
			let ids = parse_ids(&args[2])?;
			let prefill = match args.get(3) {
				Some(n) => n.parse().context("PREFILL is not a number")?,
				None => ids.len().div_ceil(2),
			};
			vec![(prefill, ids)]
		},
	};
	let device = Device::Cpu;
	let llama = if model.is_dir() { Llama::from_hf_dir(&model, &device, |_, _| {})? } else { Llama::from_gguf(&model, &device, |_, _| {})? };
	let mut out = std::io::BufWriter::new(std::fs::File::create(&args[1]).with_context(|| format!("creating {}", args[1]))?);
	for (prefill, ids) in sequences {
		if prefill == 0 || prefill > ids.len() {
			bail!("PREFILL must be between 1 and the number of ids ({})", ids.len());
		}
		let mut cache = llama.kv_pool(ids.len()).cache();
		let chunks = std::iter::once(&ids[..prefill]).chain(ids[prefill..].chunks(1));
		for chunk in chunks {
			let logits = llama.forward(&mut [SeqStep { tokens: chunk, cache: &mut cache, adapter: None }])?;
			let logprobs = candle_nn::ops::log_softmax(&logits.squeeze(0)?, D::Minus1)?.to_vec1::<f32>()?;
			for value in logprobs {
				out.write_all(&value.to_le_bytes())?;
			}
		}
	}
	out.flush()?;
	Ok(())
}
