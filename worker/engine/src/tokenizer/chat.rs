//! Chats: the chat template (rendered as `transformers` renders it) and the safe encoding of
//! messages, where only the template makes control tokens.

use std::collections::HashMap;

use aho_corasick::{AhoCorasick, MatchKind};
use anyhow::{anyhow, bail, Context, Result};
use minijinja::{context, Environment, ErrorKind};
use serde::{Deserialize, Serialize};
use tokenizers::AddedToken;

use super::{SharedTokenizer, TextCodec};

/// The template used when a model brings none: plain ChatML, each message as
/// `<|im_start|>{role}\n{content}<|im_end|>\n`, then `<|im_start|>assistant\n` when a generation
/// prompt is asked for. No system message is inserted. On a model whose vocabulary lacks the
/// ChatML markers they are tokenized as ordinary text.
pub const DEFAULT_CHAT_TEMPLATE: &str = concat!(
	"{% for message in messages %}",
	"{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}",
	"{% endfor %}",
	"{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
);

/// Gemma's turn format, for Gemma GGUF files that carry no template: `<start_of_turn>{role}\n`,
/// the content, `<end_of_turn>\n`; the assistant's role is `model`, and a system message is put
/// at the head of the first user turn, as Gemma's own template does. What Gemma's turns cannot
/// say is an error, as in its own template: a system message that is not first or has no user
/// turn after it, turns that do not alternate from the user's, other roles (`tool`).
pub const GEMMA_CHAT_TEMPLATE: &str = concat!(
	"{{ bos_token }}",
	"{% set leading_system = messages and messages[0]['role'] == 'system' %}",
	"{% set system = messages[0]['content'] + '\\n\\n' if leading_system else '' %}",
	"{% set turns = messages[1:] if leading_system else messages %}",
	"{% if not turns %}{{ raise_exception('Gemma needs a user turn (after an optional first system message)') }}{% endif %}",
	"{% for message in turns %}",
	"{% if message['role'] != ('user' if loop.index0 % 2 == 0 else 'assistant') %}",
	"{{ raise_exception('Gemma turns must alternate user, assistant, user, … after an optional first system message') }}",
	"{% endif %}",
	"{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else 'user') + '\\n' }}",
	"{{ (system if loop.first else '') + message['content'] | trim }}{{ '<end_of_turn>\\n' }}",
	"{% endfor %}",
	"{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}",
);

/// End-of-turn markers (ChatML's, Gemma's): chat models stop on them even where they are not
/// the EOS token.
pub(super) const TURN_ENDS: [&str; 2] = ["<|im_end|>", "<end_of_turn>"];
pub(super) const TEMPLATE_NAME: &str = "chat_template";
/// Around the markers [`TextCodec::encode_chat`] puts where a message holds a special token's
/// text, and around its sentinel tokens' indexes: Unicode noncharacters, which no tokenizer
/// gives meaning to, text is not meant to carry, and a template's string methods leave alone.
pub(super) const MARKER_OPEN: char = '\u{FDD0}';
pub(super) const MARKER_CLOSE: char = '\u{FDD1}';
pub(super) const SENTINEL_OPEN: char = '\u{FDD2}';
pub(super) const SENTINEL_CLOSE: char = '\u{FDD3}';

pub(super) fn sentinel(index: usize) -> String {
	format!("{SENTINEL_OPEN}{index}{SENTINEL_CLOSE}")
}

/// The numbers `n` for which `{open}{n}{close}` occurs in `text`.
pub(super) fn bracketed_numbers(text: &str, open: char, close: char) -> impl Iterator<Item = u64> + '_ {
	text.match_indices(open).filter_map(move |(at, _)| {
		let after = &text[at + open.len_utf8()..];
		let digits = after.find(|c: char| !c.is_ascii_digit()).unwrap_or(after.len());
		(digits > 0 && after[digits..].starts_with(close)).then(|| after[..digits].parse().ok()).flatten()
	})
}

/// `text` with every sentinel's text in it broken (its opening character becomes U+FFFD), so a
/// message cannot write a sentinel token.
pub(super) fn break_sentinels(text: &str) -> std::borrow::Cow<'_, str> {
	if !text.contains(SENTINEL_OPEN) {
		return text.into();
	}
	let mut out = String::with_capacity(text.len());
	let mut rest = text;
	while let Some(at) = rest.find(SENTINEL_OPEN) {
		let after = &rest[at + SENTINEL_OPEN.len_utf8()..];
		let digits = after.find(|c: char| !c.is_ascii_digit()).unwrap_or(after.len());
		out.push_str(&rest[..at]);
		out.push(if digits > 0 && after[digits..].starts_with(SENTINEL_CLOSE) { '\u{FFFD}' } else { SENTINEL_OPEN });
		rest = after;
	}
	out.push_str(rest);
	out.into()
}

/// A model's special tokens, and a matcher of their texts.
#[derive(Clone)]
pub(super) struct SpecialTexts {
	/// Finds special tokens' texts, the longest where two start at one place; pattern `i` is
	/// `tokens[i]`.
	pub(super) matcher: AhoCorasick,
	/// One token per text, sorted by text.
	pub(super) tokens: Vec<(u32, AddedToken)>,
	/// Every special token's id (two ids may share a text).
	pub(super) ids: std::collections::HashSet<u32>,
	/// Some special token is matched after normalization, which a look at the raw text can
	/// miss: then every chat is encoded literally.
	pub(super) normalized: bool,
}

impl SpecialTexts {
	pub(super) fn new<'a>(added: impl IntoIterator<Item = (&'a u32, &'a AddedToken)>) -> Result<Self> {
		let mut tokens: Vec<(u32, AddedToken)> = added
			.into_iter()
			.filter(|(_, t)| t.special && !t.content.is_empty())
			.map(|(&id, t)| (id, t.clone()))
			.collect();
		tokens.sort_by(|a, b| a.1.content.cmp(&b.1.content).then(a.0.cmp(&b.0)));
		let ids = tokens.iter().map(|(id, _)| *id).collect();
		tokens.dedup_by(|a, b| a.1.content == b.1.content);
		let matcher = AhoCorasick::builder()
			.match_kind(MatchKind::LeftmostLongest)
			.build(tokens.iter().map(|(_, t)| &t.content))
			.map_err(|e| anyhow!("matching special tokens: {e}"))?;
		let normalized = tokens.iter().any(|(_, t)| t.normalized);
		Ok(Self { matcher, tokens, ids, normalized })
	}

	pub(super) fn text(&self, pattern: aho_corasick::PatternID) -> &str {
		&self.tokens[pattern.as_usize()].1.content
	}
}

/// What [`TextCodec::encode_chat`] needs for messages that hold special tokens' texts: the
/// model's tokenizer with special tokens' texts read as ordinary text, plus a sentinel token for
/// special token `i` of [`SpecialTexts`] (matched as it would be: same stripping), in which the
/// template's own special tokens are written.
#[derive(Clone)]
pub(super) struct LiteralChat {
	pub(super) tokenizer: SharedTokenizer,
	/// Sentinel token id → the special token's id.
	pub(super) sentinel_ids: HashMap<u32, u32>,
}

impl LiteralChat {
	pub(super) fn new(tokenizer: &SharedTokenizer, specials: &SpecialTexts) -> Result<Self> {
		let mut literal = tokenizer.clone();
		literal.set_encode_special_tokens(true);
		let sentinels: Vec<AddedToken> = specials
			.tokens
			.iter()
			.enumerate()
			.map(|(i, (_, t))| AddedToken { content: sentinel(i), special: false, ..t.clone() })
			.collect();
		literal.add_tokens(sentinels).map_err(|e| anyhow!("adding the sentinel tokens: {e}"))?;
		let mut sentinel_ids = HashMap::new();
		for (i, (id, _)) in specials.tokens.iter().enumerate() {
			let sentinel_id = literal.token_to_id(&sentinel(i)).context("the tokenizer refused a sentinel token")?;
			// New ids are numbered from the vocabulary's size: where its ids have gaps, that
			// can be a real token's id, which must never be mapped to a special one.
			if tokenizer.id_to_token(sentinel_id).is_some() || sentinel_ids.insert(sentinel_id, *id).is_some() {
				bail!("a sentinel token got id {sentinel_id}, which the vocabulary already uses");
			}
		}
		Ok(Self { tokenizer: literal, sentinel_ids })
	}
}

/// Why [`TextCodec::encode_chat`] failed: the messages (a template that refuses them) or the
/// tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
	#[error("{0:#}")]
	Template(anyhow::Error),
	#[error("{0:#}")]
	Tokenizer(anyhow::Error),
}

/// One chat message as the OpenAI API and the chat template see it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
	pub role: String,
	pub content: String,
	/// An assistant turn's calls, for a template that renders them: `[{"id", "type":
	/// "function", "function": {"name", "arguments"}}]`, arguments as an object.
	#[serde(default, skip_serializing_if = "Option::is_none")]
	pub tool_calls: Option<serde_json::Value>,
	/// A `tool` turn: the id of the call it answers.
	#[serde(default, skip_serializing_if = "Option::is_none")]
	pub tool_call_id: Option<String>,
}

impl ChatMessage {
	pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
		Self { role: role.into(), content: content.into(), ..Self::default() }
	}

	/// Every text of the message a template may write: its content, the id of the call it
	/// answers, and the strings in its calls.
	fn texts(&self) -> impl Iterator<Item = &str> {
		std::iter::once(self.content.as_str())
			.chain(self.tool_call_id.as_deref())
			.chain(self.tool_calls.iter().flat_map(strings))
	}
}

/// Every string in `value` (object keys too).
fn strings(value: &serde_json::Value) -> Box<dyn Iterator<Item = &str> + '_> {
	use serde_json::Value;
	match value {
		Value::String(s) => Box::new(std::iter::once(s.as_str())),
		Value::Array(items) => Box::new(items.iter().flat_map(strings)),
		Value::Object(map) => Box::new(map.iter().flat_map(|(k, v)| std::iter::once(k.as_str()).chain(strings(v)))),
		_ => Box::new(std::iter::empty()),
	}
}

/// `value` with `f` applied to every string in it (object keys too).
fn map_strings(value: &serde_json::Value, f: &mut impl FnMut(&str) -> String) -> serde_json::Value {
	use serde_json::Value;
	match value {
		Value::String(s) => Value::String(f(s)),
		Value::Array(items) => Value::Array(items.iter().map(|v| map_strings(v, f)).collect()),
		Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (f(k), map_strings(v, f))).collect()),
		other => other.clone(),
	}
}

impl TextCodec {
	/// Token ids of `messages` rendered with the chat template, where only the template makes
	/// control tokens: a special token's text inside a message (a user's, a prompt template's,
	/// a retrieved document's) is encoded as the ordinary text it is, so no message can close
	/// its turn and forge another (a system message, say). Without such text in any message
	/// this is exactly `encode(render_chat(..))`.
	///
	/// With it, each such text is replaced by a marker the template passes through like any
	/// text; in the rendered prompt the template's own special tokens become sentinel tokens
	/// and the markers become the texts again, and the whole prompt is encoded in one call with
	/// special tokens' texts read as text, the sentinels then mapped to the special ids. One
	/// call, as for any prompt, so pre-tokenizers that treat the start of the text specially
	/// (a SentencePiece-style prefix space) behave as they would on the plain prompt.
	pub fn encode_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<Vec<u32>, ChatError> {
		self.encode_chat_with_tools(messages, None, add_generation_prompt)
	}

	/// [`encode_chat`](Self::encode_chat) with the request's tools (OpenAI's `tools` list) handed
	/// to a template that renders them; their texts are guarded like the messages'.
	pub fn encode_chat_with_tools(
		&self,
		messages: &[ChatMessage],
		tools: Option<&serde_json::Value>,
		add_generation_prompt: bool,
	) -> Result<Vec<u32>, ChatError> {
		let holds_special = messages.iter().flat_map(ChatMessage::texts).chain(tools.into_iter().flat_map(strings))
			.any(|text| self.specials.matcher.is_match(text));
		match &self.literal {
			Ok(literal) if holds_special || self.specials.normalized => {
				self.encode_chat_literally(literal, messages, tools, add_generation_prompt)
			},
			// A message's special token's text cannot be told from the template's: refuse
			// rather than read it as the token.
			Err(reason) if holds_special => Err(ChatError::Template(anyhow!(
				"a message holds a special token's text, which this model's tokenizer cannot encode as text ({reason})"
			))),
			_ => {
				let text = self.render_chat_with_tools(messages, tools, add_generation_prompt).map_err(ChatError::Template)?;
				self.encode(&text).map_err(ChatError::Tokenizer)
			},
		}
	}

	/// Token ids of a document's text where every special token's text is ordinary text: what a
	/// model is trained on from a DataNet item, which must no more write control tokens than a
	/// chat message can. BOS where the model asks for it; no EOS.
	pub fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
		if !self.specials.matcher.is_match(text) && !self.specials.normalized {
			return self.encode(text);
		}
		let literal = self.literal.as_ref().map_err(|reason| {
			anyhow!("the text holds a special token's text, which this model's tokenizer cannot encode as text ({reason})")
		})?;
		let encoding = literal
			.tokenizer
			.encode(break_sentinels(text).as_ref(), false)
			.map_err(|e| anyhow!("tokenization failed: {e}"))?;
		if let Some(id) = encoding.get_ids().iter().find(|id| self.specials.ids.contains(id)) {
			bail!(
				"this model's tokenizer reads the text `{}` as a special token",
				self.tokenizer.id_to_token(*id).unwrap_or_default()
			);
		}
		let encoding = literal.tokenizer.post_process(encoding, None, true).map_err(|e| anyhow!("tokenization failed: {e}"))?;
		Ok(self.with_bos(encoding.get_ids().to_vec()))
	}

	/// [`encode_chat`](Self::encode_chat)'s way for messages that hold a special token's text.
	pub(super) fn encode_chat_literally(
		&self,
		literal: &LiteralChat,
		messages: &[ChatMessage],
		tools: Option<&serde_json::Value>,
		add_generation_prompt: bool,
	) -> Result<Vec<u32>, ChatError> {
		// A marker tag no text holds: the smallest number not written after MARKER_OPEN.
		let used: std::collections::HashSet<u64> = messages
			.iter()
			.flat_map(ChatMessage::texts)
			.chain(tools.into_iter().flat_map(strings))
			.flat_map(|text| bracketed_numbers(text, MARKER_OPEN, ':'))
			.collect();
		let tag = format!("{MARKER_OPEN}{}:", (0u64..).find(|n| !used.contains(n)).expect("some number is free"));
		let mut literals: Vec<&str> = Vec::new();
		let mut mark = |text: &str| {
			let text = break_sentinels(text);
			let mut marked = String::with_capacity(text.len());
			let mut at = 0;
			for found in self.specials.matcher.find_iter(text.as_ref()) {
				marked.push_str(&text[at..found.start()]);
				marked.push_str(&format!("{tag}{}{MARKER_CLOSE}", literals.len()));
				literals.push(self.specials.text(found.pattern()));
				at = found.end();
			}
			marked.push_str(&text[at..]);
			marked
		};
		let stand_ins: Vec<ChatMessage> = messages
			.iter()
			.map(|message| ChatMessage {
				role: message.role.clone(),
				content: mark(&message.content),
				tool_calls: message.tool_calls.as_ref().map(|calls| map_strings(calls, &mut mark)),
				tool_call_id: message.tool_call_id.as_deref().map(&mut mark),
			})
			.collect();
		let tools = tools.map(|tools| map_strings(tools, &mut mark));
		let rendered =
			self.render_chat_with_tools(&stand_ins, tools.as_ref(), add_generation_prompt).map_err(ChatError::Template)?;
		let mut prompt = String::with_capacity(rendered.len() + 64);
		let mut rest = rendered.as_str();
		loop {
			let (template, marker) = match rest.find(tag.as_str()) {
				Some(start) => (&rest[..start], Some(&rest[start + tag.len()..])),
				None => (rest, None),
			};
			// The template's text, its special tokens written as their sentinels.
			let mut at = 0;
			for found in self.specials.matcher.find_iter(template) {
				prompt.push_str(&template[at..found.start()]);
				prompt.push_str(&sentinel(found.pattern().as_usize()));
				at = found.end();
			}
			prompt.push_str(&template[at..]);
			let Some(marker) = marker else { break };
			let text = marker
				.split_once(MARKER_CLOSE)
				.and_then(|(index, tail)| Some((*literals.get(index.parse::<usize>().ok()?)?, tail)));
			let Some((text, tail)) = text else {
				return Err(ChatError::Template(anyhow!(
					"the chat template cut a message's text apart where it holds the special token `{}`; \
					 remove it from the message",
					literals.first().copied().unwrap_or("?")
				)));
			};
			prompt.push_str(text);
			rest = tail;
		}
		let tokenize = |e: tokenizers::Error| ChatError::Tokenizer(anyhow!("tokenization failed: {e}"));
		let encoding = literal.tokenizer.encode(prompt, false).map_err(tokenize)?;
		// Some models (a Unigram vocabulary holding `</s>`, say) can still spell a special token
		// from ordinary text: refuse rather than pass it on.
		if let Some(id) = encoding.get_ids().iter().find(|id| self.specials.ids.contains(id)) {
			return Err(ChatError::Template(anyhow!(
				"this model's tokenizer reads the text `{}` in a message as a special token; remove it",
				self.tokenizer.id_to_token(*id).unwrap_or_default()
			)));
		}
		let encoding = literal.tokenizer.post_process(encoding, None, true).map_err(tokenize)?;
		let ids = encoding.get_ids().iter().map(|id| literal.sentinel_ids.get(id).copied().unwrap_or(*id)).collect();
		Ok(self.with_bos(ids))
	}

	/// Renders `messages` with the chat template (variables `messages`, `add_generation_prompt`,
	/// `bos_token`, `eos_token`). The result is meant for [`encode`](Self::encode).
	pub fn render_chat(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
		self.render_chat_with_tools(messages, None, add_generation_prompt)
	}

	/// [`render_chat`](Self::render_chat) with `tools` (OpenAI's list) for a template that
	/// renders them.
	pub fn render_chat_with_tools(
		&self,
		messages: &[ChatMessage],
		tools: Option<&serde_json::Value>,
		add_generation_prompt: bool,
	) -> Result<String> {
		let template =
			self.env.get_template(TEMPLATE_NAME).map_err(|e| anyhow!("chat template: {e}"))?;
		template
			.render(context! {
				messages => messages,
				tools => tools,
				add_generation_prompt => add_generation_prompt,
				bos_token => self.bos_token.as_deref().unwrap_or(""),
				eos_token => self.eos_token.as_deref().unwrap_or(""),
			})
			.map_err(|e| {
				anyhow!("rendering the chat template failed: {}", describe_template_error(&e))
			})
	}
}

/// The minijinja environment HF templates expect: `transformers` renders them with
/// `trim_blocks` and `lstrip_blocks`, Python string and dict methods, and `raise_exception`.
pub(super) fn chat_environment(template: &str) -> Result<Environment<'static>> {
	let mut env = Environment::new();
	env.set_trim_blocks(true);
	env.set_lstrip_blocks(true);
	env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
	env.add_function("raise_exception", |message: String| -> Result<String, minijinja::Error> {
		Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
	});
	env.add_template_owned(TEMPLATE_NAME, template.to_owned()).map_err(|e| {
		anyhow!("the chat template does not parse: {}", describe_template_error(&e))
	})?;
	Ok(env)
}

pub(super) fn describe_template_error(e: &minijinja::Error) -> String {
	let mut text = e.to_string();
	let mut source = std::error::Error::source(e);
	while let Some(inner) = source {
		text.push_str(&format!(": {inner}"));
		source = inner.source();
	}
	text
}

