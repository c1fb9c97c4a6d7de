//! Text ⇄ token ids, the chat template, and streaming detokenization.
//!
//! A [`TextCodec`] is built either from the tokenizer a GGUF file carries in its metadata
//! ([`TextCodec::from_gguf`]: byte-level BPE, the `gpt2` kind, and SentencePiece, `llama`) or
//! from an HF model directory ([`TextCodec::from_hf_dir`]). Either way it wraps a `tokenizers`
//! tokenizer, the model's Jinja chat template (rendered with minijinja the way `transformers`
//! renders it: `trim_blocks` and `lstrip_blocks` on, Python string methods available,
//! `raise_exception` defined) and the ids that end a generation.
//!
//! The module's files, one job each: `gguf.rs` reads a GGUF file's vocabulary, `hf.rs` an HF
//! model directory, `chat.rs` renders and encodes chats (only the template makes control
//! tokens), `decode.rs` detokenizes as tokens stream out, `shared.rs` lets the codec's two
//! tokenizers hold one vocabulary, `sentencepiece.rs` tokenizes a GGUF SentencePiece vocabulary,
//! `vocabulary.rs` gives each token's bytes.

mod chat;
mod decode;
mod gguf;
mod hf;
mod sentencepiece;
mod shared;
mod vocabulary;
#[cfg(test)]
mod tests;

use std::fmt;

use anyhow::{anyhow, Result};
use minijinja::Environment;
pub use shared::{SharedModel, SharedTokenizer};

pub use chat::{ChatError, ChatMessage, DEFAULT_CHAT_TEMPLATE};
use chat::{chat_environment, LiteralChat, SpecialTexts, TURN_ENDS};
pub use decode::IncrementalDecoder;
pub use vocabulary::Vocabulary;

/// How a model writes a tool call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallFormat {
	/// Hermes' (Qwen 2.5, Hermes, SmolLM2's fine-tunes, and any model told by our own system
	/// prompt): `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`, several to an answer.
	Hermes,
	/// Llama 3.1's and later: the whole answer one `{"name": …, "parameters": {…}}`, one call to an
	/// answer (its template refuses more).
	Llama3,
}

impl CallFormat {
	/// The format a chat template that describes tools asks its model for, by the words it
	/// uses to ask.
	fn of_template(template: &str) -> Option<Self> {
		if template.contains("<tool_call>") {
			Some(Self::Hermes)
		} else if template.contains(r#""parameters": dictionary of argument name"#) {
			Some(Self::Llama3)
		} else {
			None
		}
	}
}

/// A model's tokenizer, chat template and special tokens.
#[derive(Clone)]
pub struct TextCodec {
	tokenizer: SharedTokenizer,
	specials: SpecialTexts,
	/// For chats whose messages hold special tokens' texts; the reason when this tokenizer
	/// cannot have it (such chats are then refused).
	literal: Result<LiteralChat, String>,
	env: Environment<'static>,
	chat_template: String,
	/// False when [`DEFAULT_CHAT_TEMPLATE`] stands in for a missing one.
	model_has_template: bool,
	/// How the template has its model write calls, when it describes tools itself.
	native_call_format: Option<CallFormat>,
	bos_token: Option<String>,
	eos_token: Option<String>,
	bos_id: Option<u32>,
	/// `Some(bos)` when every encoding must start with BOS (GGUF `add_bos_token`, or an HF
	/// post-processor that adds it); `encode` then also collapses a doubled BOS.
	auto_bos: Option<u32>,
	eos_ids: Vec<u32>,
	vocab_size: usize,
}

impl fmt::Debug for TextCodec {
	fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
		f.debug_struct("TextCodec")
			.field("vocab_size", &self.vocab_size)
			.field("bos_token", &self.bos_token)
			.field("eos_token", &self.eos_token)
			.field("eos_ids", &self.eos_ids)
			.field("auto_bos", &self.auto_bos)
			.field("model_has_template", &self.model_has_template)
			.finish_non_exhaustive()
	}
}

impl TextCodec {
	fn assemble(
		tokenizer: SharedTokenizer,
		chat_template: Option<String>,
		bos_token: Option<String>,
		eos_token: Option<String>,
		bos_id: Option<u32>,
		auto_bos: Option<u32>,
		mut eos_ids: Vec<u32>,
	) -> Result<Self> {
		let model_has_template = chat_template.as_deref().is_some_and(|t| !t.trim().is_empty());
		let chat_template = if model_has_template {
			chat_template.unwrap_or_default()
		} else {
			DEFAULT_CHAT_TEMPLATE.to_owned()
		};
		let env = chat_environment(&chat_template)?;
		// Only a template whose model writes calls in a format the worker reads.
		let reads_tools =
			env.get_template(chat::TEMPLATE_NAME).is_ok_and(|t| t.undeclared_variables(false).contains("tools"));
		let native_call_format = reads_tools.then(|| CallFormat::of_template(&chat_template)).flatten();
		let added = tokenizer.get_added_tokens_decoder();
		// A chat model ends its turn with a marker (`<|im_end|>`, `<end_of_turn>`); stop there
		// even when EOS is another token.
		for marker in TURN_ENDS.into_iter().filter(|m| chat_template.contains(m)) {
			if let Some((&id, _)) = added.iter().find(|(_, t)| t.special && t.content == marker) {
				eos_ids.push(id);
			}
		}
		let specials = SpecialTexts::new(&added)?;
		let literal = LiteralChat::new(&tokenizer, &specials).map_err(|e| {
			tracing::warn!("chats whose messages hold special tokens' texts will be refused: {e:#}");
			format!("{e:#}")
		});
		let mut seen = std::collections::HashSet::new();
		eos_ids.retain(|id| seen.insert(*id));
		if eos_ids.is_empty() {
			tracing::warn!("the tokenizer names no end-of-sequence token; generation stops only at max_tokens or a stop string");
		}
		let vocab_size = tokenizer
			.get_vocab(true)
			.values()
			.copied()
			.chain(added.keys().copied())
			.max()
			.map_or(0, |m| m as usize + 1);
		Ok(Self {
			tokenizer,
			specials,
			literal,
			env,
			chat_template,
			model_has_template,
			native_call_format,
			bos_token,
			eos_token,
			bos_id,
			auto_bos,
			eos_ids,
			vocab_size,
		})
	}

	/// Token ids of `text`. Special tokens written in the text (`<|im_start|>`) become their ids;
	/// BOS is prepended only where the model asks for it, and never twice. This is for raw
	/// prompts (`/v1/completions`), whose writer means the markers; chats go through
	/// [`encode_chat`](Self::encode_chat).
	pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
		let encoding =
			self.tokenizer.encode(text, true).map_err(|e| anyhow!("tokenization failed: {e}"))?;
		Ok(self.with_bos(encoding.get_ids().to_vec()))
	}
	/// `ids` starting with BOS where the model asks for it, and never with two.
	fn with_bos(&self, mut ids: Vec<u32>) -> Vec<u32> {
		if let Some(bos) = self.auto_bos {
			if ids.first() != Some(&bos) {
				ids.insert(0, bos);
			} else if ids.get(1) == Some(&bos) {
				ids.remove(0);
			}
		}
		ids
	}

	/// The text of `ids`, special tokens left out. An incomplete UTF-8 sequence at the end comes
	/// out as U+FFFD (see [`IncrementalDecoder`] for streaming).
	pub fn decode(&self, ids: &[u32]) -> Result<String> {
		self.tokenizer.decode(ids, true).map_err(|e| anyhow!("detokenization failed: {e}"))
	}

	/// Ids that end a generation: EOS (and GGUF's end-of-turn token, generation_config's EOS
	/// ids), plus `<|im_end|>` when it is a special token the chat template uses.
	pub fn eos_token_ids(&self) -> &[u32] {
		&self.eos_ids
	}

	pub fn is_eos(&self, id: u32) -> bool {
		self.eos_ids.contains(&id)
	}

	/// Number of token ids (largest id + 1, added tokens included): the smallest logits width
	/// the model may have.
	pub fn vocab_size(&self) -> usize {
		self.vocab_size
	}

	pub fn bos_token_id(&self) -> Option<u32> {
		self.bos_id
	}

	pub fn token_to_id(&self, token: &str) -> Option<u32> {
		self.tokenizer.token_to_id(token)
	}

	pub fn id_to_token(&self, id: u32) -> Option<String> {
		self.tokenizer.id_to_token(id)
	}

	/// The Jinja source `render_chat` uses.
	pub fn chat_template(&self) -> &str {
		&self.chat_template
	}

	/// Whether the model brought its own chat template (else [`DEFAULT_CHAT_TEMPLATE`] is used).
	pub fn has_model_chat_template(&self) -> bool {
		self.model_has_template
	}

	/// The format the chat template has its model write calls in, when the template describes
	/// tools itself (its `tools` variable: Qwen 2.5's, Hermes', Llama 3.1's and later); `None`
	/// when tools are described in a system message of our own, with Hermes calls.
	pub fn native_call_format(&self) -> Option<CallFormat> {
		self.native_call_format
	}

	/// The format the model's calls are asked for and read in: its template's own, else
	/// Hermes', which our system prompt asks for.
	pub fn call_format(&self) -> CallFormat {
		self.native_call_format.unwrap_or(CallFormat::Hermes)
	}

	/// The wrapped `tokenizers` tokenizer.
	pub fn tokenizer(&self) -> &SharedTokenizer {
		&self.tokenizer
	}
}
