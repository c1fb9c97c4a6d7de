//! The end of a generation, the same for whole and streamed answers: attribute the answer, issue
//! its receipt into the outbox, and give back what the response carries of both.

use std::sync::Arc;

use super::{error::ApiError, openai::AttributionBody, AppState};
use openledger_engine::engine::Usage;
use openledger_knowledge::{
	attribution::{combine, AttributionPolicy, TrainingShare},
	grounding::{Grounded, Knowledge},
};
use openledger_ledger::{charge::Charge, keys::hex_hash};
use openledger_primitives::{content_hash, AttributionEntry, DataNetId, ToolUse};
use openledger_tasks::blocking;

/// A grounded request's attribution, computed once the whole answer is known.
pub(super) struct Attributor {
	pub knowledge: Arc<Knowledge>,
	pub grounded: Grounded,
}

impl Attributor {
	/// The answer's attribution, computed on the blocking pool (span search scans the DataNets'
	/// suffix arrays); hands the answer back.
	async fn attribute(self, output: String) -> (String, Vec<AttributionEntry>) {
		blocking(move || {
			let entries = self.knowledge.attribute(&self.grounded, &output);
			(output, entries)
		})
		.await
	}
}

/// What a generation does with its answer once it is complete.
pub(super) struct Closing {
	/// Set when the request was grounded in DataNets.
	pub attributor: Option<Attributor>,
	/// Set when the worker charges for the request (it is on a chain).
	pub charge: Option<Charge>,
	/// The MCP tools the request called, with their successful calls: paid in the receipt and
	/// named in the attribution.
	pub tools: Vec<ToolUse>,
}

/// What the last response (or the last chunk of a stream) carries besides the answer.
pub(super) struct Finished {
	pub attribution: Option<Vec<AttributionBody>>,
	/// The receipt's id, `0x` hex.
	pub receipt_id: Option<String>,
}

impl Closing {
	/// Whether the answer's text is needed at the end (to attribute or to hash into a receipt).
	pub fn keeps_text(&self) -> bool {
		self.attributor.is_some() || self.charge.is_some()
	}

	/// Attributes the answer (retrieval, spans and training for a grounded request; training
	/// alone for a charged request whose adapter has provenance on chain; else nothing) and
	/// issues its receipt. The receipt is in the outbox when this returns: a delivered answer is
	/// always paid. Hands the answer back.
	pub async fn finish(self, state: &AppState, output: String, usage: &Usage) -> Result<(String, Finished), ApiError> {
		let (output, attribution) = match (self.attributor, &self.charge) {
			(Some(a), _) => {
				let (output, entries) = a.attribute(output).await;
				(output, Some(entries))
			},
			(None, Some(charge)) if !charge.provenance().is_empty() => {
				let policy = state.knowledge().map_or_else(AttributionPolicy::default, |k| *k.policy());
				(output, Some(combine(&[], &[], &training_shares(charge.provenance()), &policy)))
			},
			(None, _) => (output, None),
		};
		let receipt_id = match self.charge {
			Some(charge) => {
				let hash = content_hash(output.as_bytes());
				let entries = attribution.clone().unwrap_or_default();
				let tools = self.tools.clone();
				let id = charge.issue(hash, usage.prompt_tokens, usage.completion_tokens, entries, tools).await?;
				Some(hex_hash(&id))
			},
			None => None,
		};
		let mut attribution: Option<Vec<AttributionBody>> =
			attribution.map(|entries| entries.iter().map(AttributionBody::from).collect());
		if !self.tools.is_empty() {
			let tools = self.tools.iter().map(|used| AttributionBody::tool(used.tool, used.calls));
			attribution.get_or_insert_with(Vec::new).extend(tools);
		}
		Ok((output, Finished { attribution, receipt_id }))
	}
}

/// An adapter's training provenance as the chain records it, as attribution reads it.
pub(super) fn training_shares(provenance: &[(DataNetId, u32)]) -> Vec<TrainingShare> {
	provenance.iter().map(|&(datanet, share_ppm)| TrainingShare { datanet, share_ppm }).collect()
}

/// What the receipt hashes and attribution reads when a request has several answers: their
/// texts in order, a blank line between them.
pub(super) fn joined<'a>(texts: impl Iterator<Item = &'a str>) -> String {
	texts.collect::<Vec<_>>().join("\n\n")
}

pub(super) fn generation_failed(message: &str) -> ApiError {
	ApiError::internal(format!("generation failed: {message}"))
}

/// The engine dropped the request's sender without a last event: it stopped mid-request.
pub(super) fn engine_vanished() -> ApiError {
	ApiError::internal("the inference engine stopped before finishing the request")
}
