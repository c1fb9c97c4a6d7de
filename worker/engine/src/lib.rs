//! The worker's inference engine: one base model, many LoRA adapters loaded on demand (OpenLoRA),
//! continuous batching across adapters. It knows nothing of the chain, HTTP or money: the
//! `openledger-worker` crate serves it, `openledger-knowledge` grounds its prompts.

pub mod adapters;
pub mod base;
pub mod engine;
pub mod grammar;
pub mod model;
pub mod testing;
pub mod tokenizer;

/// A client's string safe to echo in a one-line message or log line (control characters
/// escaped, length capped).
pub fn printable(s: &str) -> String {
	let mut out: String = s.chars().take(160).flat_map(char::escape_debug).collect();
	if s.chars().count() > 160 {
		out.push('…');
	}
	out
}
