//! Log-probabilities as the OpenAI API shows them: per token its text, log-probability, bytes
//! and the most likely alternatives (chat), or the legacy parallel lists (completions). The
//! engine gives token ids; the model's vocabulary gives their bytes.

use serde::{ser::SerializeMap, Serialize, Serializer};

use openledger_engine::{engine::TokenLogprob, tokenizer::Vocabulary};

/// The most alternatives a request may ask for per token (`top_logprobs`, or `logprobs` on
/// completions), as OpenAI's chat API allows.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// What JSON shows for a log-probability of −∞ (JSON has no infinities), as OpenAI does.
const FLOOR: f32 = -9999.0;

/// A choice's `logprobs` on chat completions.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChatLogprobs {
	pub content: Vec<ChatTokenLogprob>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChatTokenLogprob {
	pub token: String,
	pub logprob: f32,
	/// The token's UTF-8 bytes: a token may hold part of a character, which `token` cannot show.
	pub bytes: Vec<u8>,
	pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TopLogprob {
	pub token: String,
	pub logprob: f32,
	pub bytes: Vec<u8>,
}

/// A choice's `logprobs` on completions: parallel lists, one entry per token.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CompletionLogprobs {
	pub tokens: Vec<String>,
	pub token_logprobs: Vec<f32>,
	/// Per token, the alternatives as `{token: logprob}`, most likely first.
	pub top_logprobs: Vec<Alternatives>,
	/// Where each token's text starts in the choice's text, in characters.
	pub text_offset: Vec<usize>,
}

/// `{token: logprob}` in order of likelihood.
#[derive(Clone, Debug, PartialEq)]
pub struct Alternatives(Vec<(String, f32)>);

impl Serialize for Alternatives {
	fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
		let mut map = serializer.serialize_map(Some(self.0.len()))?;
		for (token, logprob) in &self.0 {
			map.serialize_entry(token, logprob)?;
		}
		map.end()
	}
}

fn shown(logprob: f32) -> f32 {
	if logprob.is_finite() { logprob } else { FLOOR }
}

fn text(vocabulary: &Vocabulary, token: u32) -> (String, Vec<u8>) {
	let bytes = vocabulary.bytes(token).to_vec();
	(String::from_utf8_lossy(&bytes).into_owned(), bytes)
}

/// The chat form of `tokens`.
pub fn chat(vocabulary: &Vocabulary, tokens: &[TokenLogprob]) -> ChatLogprobs {
	let content = tokens
		.iter()
		.map(|t| {
			let (token, bytes) = text(vocabulary, t.token);
			let top_logprobs = t
				.top
				.iter()
				.map(|&(id, logprob)| {
					let (token, bytes) = text(vocabulary, id);
					TopLogprob { token, logprob: shown(logprob), bytes }
				})
				.collect();
			ChatTokenLogprob { token, logprob: shown(t.logprob), bytes, top_logprobs }
		})
		.collect();
	ChatLogprobs { content }
}

/// The completions form of `tokens`.
pub fn completion(vocabulary: &Vocabulary, tokens: &[TokenLogprob]) -> CompletionLogprobs {
	let mut out = CompletionLogprobs::default();
	for t in tokens {
		out.tokens.push(text(vocabulary, t.token).0);
		out.token_logprobs.push(shown(t.logprob));
		out.top_logprobs.push(Alternatives(t.top.iter().map(|&(id, l)| (text(vocabulary, id).0, shown(l))).collect()));
		out.text_offset.push(t.text_offset);
	}
	out
}
