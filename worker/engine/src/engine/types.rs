//! What the HTTP layer hands the engine, and what the engine sends back per request.

use tokio::sync::{mpsc, OwnedSemaphorePermit};

use crate::{adapters::AdapterLease, grammar::Constraint};

/// How the next token is chosen. `temperature == 0` is greedy; the same seed gives the same text
/// (answer `i` of several draws with `seed + i`).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
	pub temperature: f64,
	pub top_p: Option<f64>,
	pub top_k: Option<usize>,
	pub seed: u64,
}

impl Default for SamplingParams {
	fn default() -> Self {
		Self { temperature: 0.0, top_p: None, top_k: None, seed: 0 }
	}
}

/// One admitted request. The engine owns it until it sends `Done` or `Failed`.
pub struct GenerationRequest {
	/// Already templated and tokenized; `1 ≤ len` and `len + max_tokens ≤ context length`
	/// are checked by the caller.
	pub prompt_tokens: Vec<u32>,
	pub max_tokens: usize,
	pub sampling: SamplingParams,
	/// Generation stops before the first occurrence of any of these in the output text.
	pub stop: Vec<String>,
	/// The adapter, already resident and leased (never loaded on the engine thread).
	pub adapter: Option<AdapterLease>,
	/// A grammar the output must follow (structured outputs, tool calls); it masks the logits
	/// before sampling and ends the sequence when the output is complete.
	pub constraint: Option<Constraint>,
	/// Answers to generate from the one prompt (OpenAI's `n`, at least 1): the prompt is
	/// prefilled once and its KV blocks are shared by the answers.
	pub choices: usize,
	/// `Some(k)`: report each generated token's log-probability and the `k` most likely
	/// alternatives (see [`TokenLogprob`]).
	pub logprobs: Option<usize>,
	pub events: mpsc::UnboundedSender<GenerationEvent>,
	/// Admission permit: held until the request's last answer finishes, so the queue bound
	/// counts it.
	pub permit: Option<OwnedSemaphorePermit>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
	/// End-of-sequence token or a stop sequence.
	Stop,
	/// `max_tokens` reached.
	Length,
}

impl FinishReason {
	pub fn as_openai(self) -> &'static str {
		match self {
			FinishReason::Stop => "stop",
			FinishReason::Length => "length",
		}
	}
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
	pub prompt_tokens: usize,
	pub completion_tokens: usize,
	/// Prompt tokens whose keys and values were reused from an earlier prompt, not computed
	/// (a part of `prompt_tokens`).
	pub cached_tokens: usize,
}

/// A generated token's log-probability under the model: the log-softmax of its logits at
/// temperature 1, before top-k, top-p and a grammar's mask cut them (what the model thinks, not
/// what the sampler was allowed to draw), with the `k` most likely tokens, most likely first.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
	pub token: u32,
	pub logprob: f32,
	pub top: Vec<(u32, f32)>,
	/// Where the token's text starts in the answer, in characters.
	pub text_offset: usize,
}

/// What the engine tells the client about one request. `choice` says which of its answers an
/// event is about; every answer ends with its own `Done`, and `Failed` ends them all.
#[derive(Clone, Debug, PartialEq)]
pub enum GenerationEvent {
	/// New output text (already cut before any stop sequence; may be empty of whole tokens),
	/// with the completion tokens of this answer so far (what a client that leaves now was
	/// served) and, when asked for, the log-probabilities of the tokens whose text starts in it
	/// (the last event of an answer carries any left).
	Text { choice: usize, text: String, completion_tokens: usize, logprobs: Vec<TokenLogprob> },
	Done { choice: usize, finish_reason: FinishReason, usage: Usage },
	Failed(String),
}
