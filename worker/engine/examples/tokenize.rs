//! This engine's tokens for texts, for a comparison with another engine's tokenizer on the same
//! GGUF file (scripts/families/compare.py).
//!
//!   tokenize MODEL.gguf < texts.jsonl
//!
//! Reads one JSON string per line and prints one JSON array of token ids per line, then the
//! decoding of those ids as a JSON string on the next; the model's BOS is added when its
//! metadata asks for it.
use std::io::{BufRead, Write};

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file;
use openledger_engine::tokenizer::TextCodec;

fn main() -> Result<()> {
	let args: Vec<String> = std::env::args().skip(1).collect();
	let [model] = args.as_slice() else { bail!("usage: tokenize MODEL.gguf < texts.jsonl") };
	let mut file = std::fs::File::open(model).with_context(|| format!("opening {model}"))?;
	let content = gguf_file::Content::read(&mut file).map_err(|e| anyhow::anyhow!("{model} is not a GGUF file: {e}"))?;
	let codec = TextCodec::from_gguf(&content)?;
	let mut out = std::io::stdout().lock();
	for line in std::io::stdin().lock().lines() {
		let text: String = serde_json::from_str(&line?).context("a line that is not a JSON string")?;
		let ids = codec.encode(&text)?;
		writeln!(out, "{}", serde_json::to_string(&ids)?)?;
		writeln!(out, "{}", serde_json::to_string(&codec.decode(&ids)?)?)?;
	}
	Ok(())
}
