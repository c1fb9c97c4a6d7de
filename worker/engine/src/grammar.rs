//! Constrained decoding: a grammar compiled by llguidance (the library behind llama.cpp's and
//! vLLM's structured outputs) masks the logits at every step, so the output is valid JSON of a
//! schema, or a tool call whose arguments are. We use the library rather than our own: JSON
//! Schema to grammar, an Earley parser and a token trie are a solved problem, and its masks
//! cost tens of microseconds.
//!
//! [`Grammars`] is built once per model from its vocabulary; [`Grammars::compile`] turns a
//! [`Grammar`] into a [`Constraint`], which the engine consults for each token of one sequence.

use std::sync::Arc;

use llguidance::{
	api::{ParserLimits, TopLevelGrammar},
	earley::SlicedBiasComputer,
	toktrie::{ApproximateTokEnv, InferenceCapabilities, SimpleVob, TokEnv, TokRxInfo, TokTrie},
	JsonCompileOptions, Matcher, ParserFactory,
};

use crate::tokenizer::Vocabulary;

/// What a constrained sequence must produce.
#[derive(Clone, Debug, PartialEq)]
pub enum Grammar {
	/// Any JSON object (`response_format: {"type": "json_object"}`).
	JsonObject,
	/// JSON valid against this JSON Schema.
	JsonSchema(serde_json::Value),
	/// A Lark grammar (llguidance's dialect, which embeds JSON schemas with `%json`): tool calls.
	Lark(String),
}

/// Why a grammar could not be compiled: the schema uses a feature the engine lacks, cannot be
/// satisfied, or is too large for the limits below. The message is the library's, one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct GrammarError(pub String);

/// Bounds on what one grammar may cost, so a hostile schema cannot stall the engine or fill its
/// memory: compiling spends at most `initial_lexer_fuel` (about 20 ms), each mask at most
/// `step_lexer_fuel` and `step_max_items` (about 15 ms), and the lexer at most
/// `max_lexer_states` states (1–2 kB each).
fn limits() -> ParserLimits {
	ParserLimits {
		max_lexer_states: 50_000,
		max_grammar_size: 200_000,
		verbose_errors: false,
		..ParserLimits::default()
	}
}

/// A model's grammar compiler: its vocabulary as a token trie, shared by every constraint.
#[derive(Clone)]
pub struct Grammars {
	factory: Arc<ParserFactory>,
}

impl std::fmt::Debug for Grammars {
	fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
		f.debug_struct("Grammars").finish_non_exhaustive()
	}
}

impl Grammars {
	/// Builds the token trie of the model's vocabulary (its logits' width, which may exceed the
	/// tokenizer's: the ids past it are never allowed). Special tokens are marked as such, so no
	/// grammar's text can produce them.
	pub fn new(vocabulary: &Vocabulary, eos: &[u32]) -> anyhow::Result<Self> {
		let vocab_size = vocabulary.len();
		let first_eos = *eos.first().ok_or_else(|| anyhow::anyhow!("constrained decoding needs an end-of-sequence token"))?;
		let info = TokRxInfo::new(vocab_size as u32, first_eos);
		let trie = TokTrie::from(&info, vocabulary.marked_words()).with_eos_tokens(eos);
		// Approximate: masks come from the trie alone; the library then forces no tokens, which
		// keeps the model's own tokenization of what it writes.
		let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
		// Slices: the vocabulary pre-split by the lexemes JSON uses most (string contents,
		// whitespace), so a mask inside a string costs tens of microseconds, not a millisecond.
		let slices = SlicedBiasComputer::general_slices();
		let mut factory = ParserFactory::new(&env, InferenceCapabilities::default(), &slices)?;
		factory.quiet();
		*factory.limits_mut() = limits();
		Ok(Self { factory: Arc::new(factory) })
	}

	/// Compiles `grammar` (bounded by [`limits`]); a schema the engine cannot honour is an error.
	pub fn compile(&self, grammar: &Grammar) -> Result<Constraint, GrammarError> {
		let top = match grammar {
			Grammar::JsonObject => TopLevelGrammar::from_json_schema(json_layout(serde_json::json!({"type": "object"}))),
			Grammar::JsonSchema(schema) => TopLevelGrammar::from_json_schema(json_layout(schema.clone())),
			Grammar::Lark(lark) => TopLevelGrammar::from_lark(lark.clone()),
		};
		let parser = self.factory.create_parser(top).map_err(|e| GrammarError(one_line(&e.to_string())))?;
		let matcher = Matcher::new(Ok(parser));
		if let Some(e) = matcher.get_error() {
			return Err(GrammarError(one_line(&e)));
		}
		Ok(Constraint { matcher, prepared: None })
	}
}

/// Sets how JSON is laid out: `, ` and `: ` between items and keys, no other whitespace. With
/// free whitespace a small model pads its objects with newlines until `max_tokens`; this is the
/// layout models write anyway. A client's own `x-guidance` options are replaced (they could
/// turn on leniency or change the layout).
pub fn json_layout(mut schema: serde_json::Value) -> serde_json::Value {
	if let Some(object) = schema.as_object_mut() {
		let options = JsonCompileOptions {
			item_separator: ", ".into(),
			key_separator: ": ".into(),
			whitespace_flexible: false,
			..JsonCompileOptions::default()
		};
		object.insert("x-guidance".into(), serde_json::to_value(options).expect("the options serialise"));
	}
	schema
}

/// The first line of a library message, without its trailing detail.
fn one_line(message: &str) -> String {
	message.lines().next().unwrap_or("invalid grammar").trim().to_owned()
}

/// One sequence's grammar state: which tokens may come next, and whether it is complete.
pub struct Constraint {
	matcher: Matcher,
	/// The mask for the next token, computed ahead (while the model runs its forward pass).
	prepared: Option<Result<SimpleVob, String>>,
}

impl std::fmt::Debug for Constraint {
	fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
		f.debug_struct("Constraint").field("stopped", &self.matcher.is_stopped()).finish_non_exhaustive()
	}
}

impl Constraint {
	/// Computes the mask for the next token now, so [`Self::mask`] only applies it: the engine
	/// calls this on another thread while the forward pass runs.
	pub fn prepare(&mut self) {
		if self.prepared.is_none() {
			self.prepared = Some(self.matcher.compute_mask().map_err(|e| one_line(&e.to_string())));
		}
	}

	/// Sets every logit the grammar does not allow next to −∞ (end-of-sequence is allowed only
	/// where the output is complete). An error means the grammar cannot go on: a limit was hit.
	pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), String> {
		self.prepare();
		let allowed = self.prepared.take().expect("prepared above")?;
		if allowed.is_zero() {
			return Err("the grammar allows no token here".to_owned());
		}
		// A word of the bit set at a time: most words are all-allowed or all-refused.
		for (word, chunk) in allowed.as_slice().iter().copied().chain(std::iter::repeat(0)).zip(logits.chunks_mut(32)) {
			match word {
				u32::MAX => {},
				0 => chunk.fill(f32::NEG_INFINITY),
				_ => {
					for (bit, logit) in chunk.iter_mut().enumerate() {
						if word & (1 << bit) == 0 {
							*logit = f32::NEG_INFINITY;
						}
					}
				},
			}
		}
		Ok(())
	}

	/// Takes the sampled token; an error means it was not allowed (a bug: it was masked).
	pub fn accept(&mut self, token: u32) -> Result<(), String> {
		self.prepared = None;
		self.matcher.consume_token(token).map_err(|e| one_line(&e.to_string()))
	}

	/// An independent copy in the same state, for another answer to the same prompt.
	pub fn fork(&self) -> Self {
		Self { matcher: self.matcher.deep_clone(), prepared: self.prepared.clone() }
	}

	/// True once nothing more can follow: the output is complete.
	pub fn is_complete(&self) -> bool {
		self.matcher.is_stopped()
	}
}
