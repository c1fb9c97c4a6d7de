//! OpenLedger inference worker: one base model, many LoRA adapters loaded on demand (OpenLoRA),
//! continuous batching across adapters, and an OpenAI-compatible HTTP API.

pub mod adapters;
pub mod api;
pub mod attribution;
pub mod base;
pub mod datanets;
pub mod engine;
pub mod knowledge;
pub mod ledger;
pub mod metrics;
pub mod model;
pub mod p2p;
pub mod templates;
pub mod testing;
pub mod tokenizer;

/// A client's string safe to echo in a one-line message or log line (control characters
/// escaped, length capped).
pub(crate) fn printable(s: &str) -> String {
	let mut out: String = s.chars().take(160).flat_map(char::escape_debug).collect();
	if s.chars().count() > 160 {
		out.push('…');
	}
	out
}
