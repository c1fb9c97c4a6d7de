//! Prompt templates: how a request's question and the retrieved DataNet items become the chat
//! messages the model sees.
//!
//! # Format
//!
//! A template is a JSON file with two [minijinja](https://docs.rs/minijinja) (Jinja2) strings:
//!
//! ```json
//! {
//!   "description": "optional, free text",
//!   "system": "optional: the system message",
//!   "user": "the user message, e.g. Context:\n{{ context }}\n\nQuestion: {{ question }}"
//! }
//! ```
//!
//! Unknown fields are refused (a typo would otherwise be ignored silently). Both strings may use
//! these variables and nothing else (using another is an error when the template is loaded):
//!
//! | variable | value |
//! |---|---|
//! | `question` | the text of the request's last user message |
//! | `system` | the request's system message(s), joined by a blank line; `""` if none |
//! | `context` | the retrieved items as `[1] text`, `[2] text`, …, joined by [`CONTEXT_SEPARATOR`] (a blank line); `""` if none |
//! | `items` | the retrieved items as a list of `{ n, datanet, item, text }` (`n` counts from 1), for templates that lay them out themselves |
//!
//! Rendering gives a `system` message (left out when it renders empty or the template has no
//! `system`), the conversation's earlier turns unchanged, then the rendered `user` message. The
//! worker's chat template (in the model's tokenizer) then turns those messages into the prompt.
//! Rendering is bounded: no auto-escaping, undefined variables are errors, and a fuel limit and
//! an output size limit stop runaway loops.
//!
//! # Store and identity
//!
//! Templates live in one store directory as `<id>.json`. An id matches
//! `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$` without `..`, and the file must canonicalize (symlinks
//! followed) to a regular file inside the store. A template's hash is blake2-256
//! ([`content_hash`]) of the file's bytes, exactly as stored; that is the `template_hash`
//! registered on chain, and [`TemplateStore::get`] refuses a file whose hash differs from the one
//! expected. Files are at most [`MAX_TEMPLATE_BYTES`].
//!
//! [`DEFAULT_TEMPLATE_JSON`] is used when a request names no template.

use std::{
	collections::BTreeSet,
	fs,
	io::Write,
	path::{Path, PathBuf},
};

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use openledger_primitives::{content_hash, DataNetId, ItemId};
use serde::{Deserialize, Serialize};

use openledger_engine::tokenizer::ChatMessage;

/// Extension of template files in the store.
pub const TEMPLATE_EXTENSION: &str = "json";
/// Largest template file accepted.
pub const MAX_TEMPLATE_BYTES: usize = 64 * 1024;
/// Largest rendered message accepted.
pub const MAX_RENDERED_BYTES: usize = 1 << 20;
/// Separator between numbered items in `context`.
pub const CONTEXT_SEPARATOR: &str = "\n\n";
/// The variables a template may use.
pub const TEMPLATE_VARIABLES: [&str; 4] = ["system", "context", "question", "items"];
/// Instructions (minijinja "fuel") one render may spend.
const RENDER_FUEL: u64 = 200_000;

/// The template used when a request names none.
pub const DEFAULT_TEMPLATE_JSON: &str = r#"{
  "description": "OpenLedger default: numbered DataNet context, then the question.",
  "system": "{% if system %}{{ system }}{% else %}You are a helpful assistant.{% if context %} Use the numbered context passages when they are relevant and cite them as [n].{% endif %}{% endif %}",
  "user": "{% if context %}Context:\n{{ context }}\n\nQuestion: {{ question }}{% else %}{{ question }}{% endif %}"
}
"#;
/// The id [`PromptTemplate::default_template`] reports.
pub const DEFAULT_TEMPLATE_ID: &str = "default";

/// Everything that can go wrong finding, checking or rendering a template.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
	/// The id does not match `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$` or contains `..`.
	#[error("invalid prompt template id `{0}`: use 1-128 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit, without `..`")]
	InvalidId(String),
	/// No such template in the store.
	#[error("prompt template `{0}` not found")]
	NotFound(String),
	/// The file's blake2-256 differs from the hash expected (registered on chain).
	#[error("prompt template `{id}` has hash 0x{}, expected 0x{}", hex(actual), hex(expected))]
	HashMismatch { id: String, expected: [u8; 32], actual: [u8; 32] },
	/// The file (after symlinks) lies outside the store.
	#[error("prompt template `{0}` is outside the template store")]
	OutsideStore(String),
	/// The file is not a valid template: too large, bad JSON, bad Jinja, unknown variables.
	#[error("prompt template `{id}` is invalid: {reason}")]
	Invalid { id: String, reason: String },
	/// Rendering failed (an undefined value, out of fuel, output too large).
	#[error("rendering prompt template `{id}`: {reason}")]
	Render { id: String, reason: String },
	/// The request does not fit a template (e.g. its last message is not from the user).
	#[error("{0}")]
	BadInput(String),
	#[error("template store {path}: {source}")]
	Io { path: PathBuf, source: std::io::Error },
}

impl TemplateError {
	/// The HTTP status an API answering with this error should use.
	pub fn http_status(&self) -> u16 {
		match self {
			Self::InvalidId(_) | Self::BadInput(_) => 400,
			Self::OutsideStore(_) => 403,
			Self::NotFound(_) => 404,
			Self::HashMismatch { .. } => 409,
			Self::Invalid { .. } | Self::Render { .. } => 422,
			Self::Io { .. } => 500,
		}
	}
}

fn hex(bytes: &[u8; 32]) -> String {
	bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$` and no `..`.
pub fn validate_id(id: &str) -> Result<(), TemplateError> {
	let b = id.as_bytes();
	let ok = !b.is_empty() &&
		b.len() <= 128 &&
		b[0].is_ascii_alphanumeric() &&
		b.iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-')) &&
		!id.contains("..");
	if ok {
		Ok(())
	} else {
		Err(TemplateError::InvalidId(openledger_engine::printable(id)))
	}
}

/// A retrieved DataNet item given to a template.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContextItem {
	pub datanet: DataNetId,
	pub item: ItemId,
	pub text: String,
}

/// The items as the `context` variable: `[1] text` blocks joined by [`CONTEXT_SEPARATOR`].
pub fn format_context(items: &[ContextItem]) -> String {
	items
		.iter()
		.enumerate()
		.map(|(i, item)| format!("[{}] {}", i + 1, item.text))
		.collect::<Vec<_>>()
		.join(CONTEXT_SEPARATOR)
}

/// What one render is given.
#[derive(Clone, Copy, Debug, Default)]
pub struct TemplateInput<'a> {
	/// The caller's system message, if any.
	pub system: Option<&'a str>,
	pub question: &'a str,
	pub context: &'a [ContextItem],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateFile {
	#[serde(default)]
	description: Option<String>,
	#[serde(default)]
	system: Option<String>,
	user: String,
}

/// A parsed and checked prompt template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptTemplate {
	id: String,
	hash: [u8; 32],
	description: Option<String>,
	system: Option<String>,
	user: String,
}

#[derive(Serialize)]
struct ItemVar<'a> {
	n: usize,
	datanet: DataNetId,
	item: ItemId,
	text: &'a str,
}

fn environment() -> Environment<'static> {
	let mut env = Environment::new();
	env.set_undefined_behavior(UndefinedBehavior::Strict);
	env.set_auto_escape_callback(|_| AutoEscape::None);
	env.set_fuel(Some(RENDER_FUEL));
	env.set_recursion_limit(64);
	env
}

impl PromptTemplate {
	/// Parses and checks a template file's bytes; `id` names it in errors.
	pub fn parse(id: &str, bytes: &[u8]) -> Result<Self, TemplateError> {
		let invalid = |reason: String| TemplateError::Invalid { id: openledger_engine::printable(id), reason };
		if bytes.len() > MAX_TEMPLATE_BYTES {
			return Err(invalid(format!("{} bytes; at most {MAX_TEMPLATE_BYTES}", bytes.len())));
		}
		let file: TemplateFile =
			serde_json::from_slice(bytes).map_err(|e| invalid(format!("not a template JSON object: {e}")))?;
		let env = environment();
		let globals: BTreeSet<&str> = env.globals().map(|(name, _)| name).collect();
		for (field, source) in [("system", file.system.as_deref()), ("user", Some(file.user.as_str()))] {
			let Some(source) = source else { continue };
			let template = env
				.template_from_named_str(field, source)
				.map_err(|e| invalid(format!("`{field}`: {}", one_line(&e))))?;
			let mut unknown: Vec<String> = template
				.undeclared_variables(false)
				.into_iter()
				.filter(|v| !TEMPLATE_VARIABLES.contains(&v.as_str()) && !globals.contains(v.as_str()))
				.collect();
			if !unknown.is_empty() {
				unknown.sort();
				return Err(invalid(format!(
					"`{field}` uses undefined variable{} {}; the variables are {}",
					if unknown.len() > 1 { "s" } else { "" },
					unknown.iter().map(|v| format!("`{v}`")).collect::<Vec<_>>().join(", "),
					TEMPLATE_VARIABLES.map(|v| format!("`{v}`")).join(", "),
				)));
			}
		}
		Ok(Self {
			id: id.to_owned(),
			hash: content_hash(bytes).0,
			description: file.description,
			system: file.system,
			user: file.user,
		})
	}

	/// The built-in [`DEFAULT_TEMPLATE_JSON`], with id [`DEFAULT_TEMPLATE_ID`].
	pub fn default_template() -> Self {
		Self::parse(DEFAULT_TEMPLATE_ID, DEFAULT_TEMPLATE_JSON.as_bytes()).expect("the default template is valid")
	}

	pub fn id(&self) -> &str {
		&self.id
	}

	/// blake2-256 of the file bytes (the on-chain `template_hash`).
	pub fn hash(&self) -> [u8; 32] {
		self.hash
	}

	pub fn description(&self) -> Option<&str> {
		self.description.as_deref()
	}

	/// Renders the system message (if any, and not empty) and the user message.
	pub fn render(&self, input: &TemplateInput<'_>) -> Result<Vec<ChatMessage>, TemplateError> {
		let (system, user) = self.render_parts(input)?;
		let mut messages = Vec::with_capacity(2);
		if let Some(system) = system {
			messages.push(ChatMessage::new("system", system));
		}
		messages.push(ChatMessage::new("user", user));
		Ok(messages)
	}

	/// Applies the template to a conversation: its leading `system` messages become `system`,
	/// its last message (which must be from the user) becomes `question`, and the turns between
	/// are kept as they are.
	pub fn render_conversation(
		&self,
		messages: &[ChatMessage],
		context: &[ContextItem],
	) -> Result<Vec<ChatMessage>, TemplateError> {
		let Some((last, rest)) = messages.split_last() else {
			return Err(TemplateError::BadInput("no messages to apply the prompt template to".into()));
		};
		if last.role != "user" {
			return Err(TemplateError::BadInput(format!(
				"a prompt template needs the last message to be from the user, not `{}`",
				openledger_engine::printable(&last.role)
			)));
		}
		let leading = rest.iter().take_while(|m| m.role == "system").count();
		let system = rest[..leading].iter().map(|m| m.content.as_str()).collect::<Vec<_>>().join("\n\n");
		let input = TemplateInput {
			system: (leading > 0).then_some(system.as_str()),
			question: &last.content,
			context,
		};
		let (system, user) = self.render_parts(&input)?;
		let mut out = Vec::with_capacity(messages.len() + 1);
		if let Some(system) = system {
			out.push(ChatMessage::new("system", system));
		}
		out.extend_from_slice(&rest[leading..]);
		out.push(ChatMessage::new("user", user));
		Ok(out)
	}

	fn render_parts(&self, input: &TemplateInput<'_>) -> Result<(Option<String>, String), TemplateError> {
		let env = environment();
		let items: Vec<ItemVar<'_>> = input
			.context
			.iter()
			.enumerate()
			.map(|(i, c)| ItemVar { n: i + 1, datanet: c.datanet, item: c.item, text: &c.text })
			.collect();
		let ctx = minijinja::context! {
			system => input.system.unwrap_or(""),
			question => input.question,
			context => format_context(input.context),
			items => items,
		};
		let render = |field: &str, source: &str| -> Result<String, TemplateError> {
			let err = |reason: String| TemplateError::Render { id: openledger_engine::printable(&self.id), reason: format!("`{field}`: {reason}") };
			let out = env
				.template_from_named_str(field, source)
				.and_then(|t| t.render(&ctx))
				.map_err(|e| err(one_line(&e)))?;
			if out.len() > MAX_RENDERED_BYTES {
				return Err(err(format!("{} bytes rendered; at most {MAX_RENDERED_BYTES}", out.len())));
			}
			Ok(out)
		};
		let system = match &self.system {
			Some(source) => Some(render("system", source)?).filter(|s| !s.trim().is_empty()),
			None => None,
		};
		Ok((system, render("user", &self.user)?))
	}
}

/// A minijinja error with its cause, on one line.
fn one_line(e: &minijinja::Error) -> String {
	let mut msg = e.to_string();
	if let Some(detail) = e.detail() {
		if !msg.contains(detail) {
			msg = format!("{msg}: {detail}");
		}
	}
	msg.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A directory of `<id>.json` templates.
#[derive(Clone, Debug)]
pub struct TemplateStore {
	root: PathBuf,
}

impl TemplateStore {
	/// Opens (creating if missing) the store directory.
	pub fn open(root: impl AsRef<Path>) -> Result<Self, TemplateError> {
		let root = root.as_ref();
		let io = |source| TemplateError::Io { path: root.to_path_buf(), source };
		fs::create_dir_all(root).map_err(io)?;
		let root = fs::canonicalize(root).map_err(io)?;
		Ok(Self { root })
	}

	/// The canonical root.
	pub fn root(&self) -> &Path {
		&self.root
	}

	/// The canonical path of template `id`'s file, checked to be a regular file in the store.
	pub fn resolve(&self, id: &str) -> Result<PathBuf, TemplateError> {
		validate_id(id)?;
		let path = self.root.join(format!("{id}.{TEMPLATE_EXTENSION}"));
		if fs::symlink_metadata(&path).is_err() {
			return Err(TemplateError::NotFound(id.to_owned()));
		}
		let canonical = fs::canonicalize(&path).map_err(|_| TemplateError::NotFound(id.to_owned()))?;
		if !canonical.starts_with(&self.root) || canonical.parent() != Some(self.root.as_path()) {
			return Err(TemplateError::OutsideStore(id.to_owned()));
		}
		let meta = fs::metadata(&canonical).map_err(|source| TemplateError::Io { path: canonical.clone(), source })?;
		if !meta.is_file() {
			return Err(TemplateError::Invalid { id: id.to_owned(), reason: "not a regular file".into() });
		}
		Ok(canonical)
	}

	/// Loads template `id`, checking its hash against `expected_hash` when given.
	pub fn get(&self, id: &str, expected_hash: Option<[u8; 32]>) -> Result<PromptTemplate, TemplateError> {
		let path = self.resolve(id)?;
		let io = |source| TemplateError::Io { path: path.clone(), source };
		let len = fs::metadata(&path).map_err(io)?.len();
		if len > MAX_TEMPLATE_BYTES as u64 {
			return Err(TemplateError::Invalid { id: id.to_owned(), reason: format!("{len} bytes; at most {MAX_TEMPLATE_BYTES}") });
		}
		let bytes = fs::read(&path).map_err(io)?;
		let actual = content_hash(&bytes).0;
		if let Some(expected) = expected_hash {
			if expected != actual {
				return Err(TemplateError::HashMismatch { id: id.to_owned(), expected, actual });
			}
		}
		PromptTemplate::parse(id, &bytes)
	}

	/// Checks `bytes` as a template and stores them as `<id>.json` (write-then-rename).
	/// Returns the template's hash.
	pub fn insert(&self, id: &str, bytes: &[u8]) -> Result<[u8; 32], TemplateError> {
		validate_id(id)?;
		let template = PromptTemplate::parse(id, bytes)?;
		let path = self.root.join(format!("{id}.{TEMPLATE_EXTENSION}"));
		let tmp = self.root.join(format!(".{id}.tmp-{}", std::process::id()));
		let io = |source| TemplateError::Io { path: path.clone(), source };
		let result = (|| {
			let mut file = fs::File::create(&tmp)?;
			file.write_all(bytes)?;
			file.sync_all()?;
			fs::rename(&tmp, &path)
		})();
		if result.is_err() {
			let _ = fs::remove_file(&tmp);
		}
		result.map_err(io)?;
		Ok(template.hash())
	}

	/// The ids of the templates present (files `<id>.json` with a valid id), sorted.
	pub fn list(&self) -> Result<Vec<String>, TemplateError> {
		let io = |source| TemplateError::Io { path: self.root.clone(), source };
		let mut ids = Vec::new();
		for entry in fs::read_dir(&self.root).map_err(io)? {
			let entry = entry.map_err(io)?;
			let name = entry.file_name();
			let Some(id) = name.to_str().and_then(|n| n.strip_suffix(&format!(".{TEMPLATE_EXTENSION}"))) else {
				continue;
			};
			if validate_id(id).is_ok() {
				ids.push(id.to_owned());
			}
		}
		ids.sort();
		Ok(ids)
	}
}

#[cfg(test)]
mod tests {
	use super::*;

	fn items() -> Vec<ContextItem> {
		vec![
			ContextItem { datanet: 1, item: 7, text: "Paris is the capital of France.".into() },
			ContextItem { datanet: 1, item: 9, text: "France is in Europe.".into() },
		]
	}

	#[test]
	fn default_template_renders_context_and_question() {
		let t = PromptTemplate::default_template();
		assert_eq!(t.hash(), content_hash(DEFAULT_TEMPLATE_JSON.as_bytes()).0);
		let messages = t.render(&TemplateInput { system: None, question: "What is the capital of France?", context: &items() }).unwrap();
		assert_eq!(messages.len(), 2);
		assert_eq!(messages[0].role, "system");
		assert!(messages[0].content.contains("cite them as [n]"));
		assert_eq!(
			messages[1],
			ChatMessage::new(
				"user",
				"Context:\n[1] Paris is the capital of France.\n\n[2] France is in Europe.\n\nQuestion: What is the capital of France?"
			)
		);
		// No context: the question alone; a caller's system message replaces the default.
		let messages = t.render(&TemplateInput { system: Some("Be terse."), question: "Hi", context: &[] }).unwrap();
		assert_eq!(messages, vec![ChatMessage::new("system", "Be terse."), ChatMessage::new("user", "Hi")]);
	}

	#[test]
	fn custom_template_with_items_loop_and_conversation() {
		let json = r#"{"user": "{% for it in items %}({{ it.n }}: {{ it.datanet }}/{{ it.item }}) {{ it.text }}\n{% endfor %}Q: {{ question }}"}"#;
		let t = PromptTemplate::parse("loop", json.as_bytes()).unwrap();
		let conversation = vec![
			ChatMessage::new("system", "S1"),
			ChatMessage::new("user", "earlier"),
			ChatMessage::new("assistant", "reply"),
			ChatMessage::new("user", "Where is France?"),
		];
		let out = t.render_conversation(&conversation, &items()).unwrap();
		// The template has no `system`: the caller's system message is dropped with it.
		assert_eq!(
			out,
			vec![
				ChatMessage::new("user", "earlier"),
				ChatMessage::new("assistant", "reply"),
				ChatMessage::new(
					"user",
					"(1: 1/7) Paris is the capital of France.\n(2: 1/9) France is in Europe.\nQ: Where is France?"
				),
			]
		);
		let with_system = PromptTemplate::default_template().render_conversation(&conversation, &[]).unwrap();
		assert_eq!(with_system[0], ChatMessage::new("system", "S1"));
		assert_eq!(with_system.len(), 4);
		let err = t.render_conversation(&conversation[..3], &[]).unwrap_err();
		assert!(matches!(err, TemplateError::BadInput(_)), "{err}");
		assert_eq!(err.http_status(), 400);
	}

	#[test]
	fn unknown_variable_is_a_clear_error() {
		let err = PromptTemplate::parse("t", br#"{"user": "{{ question }} about {{ topic }} and {{ audience.name }}"}"#)
			.unwrap_err();
		let msg = err.to_string();
		assert!(matches!(err, TemplateError::Invalid { .. }));
		assert!(msg.contains("undefined variables `audience`, `topic`"), "{msg}");
		assert!(msg.contains("`question`"), "{msg}");
		// Globals such as `range` and variables a template sets itself are fine.
		PromptTemplate::parse("t", br#"{"user": "{% set q = question %}{% for i in range(2) %}{{ q }}{% endfor %}"}"#).unwrap();
		// A missing attribute is found when rendering.
		let t = PromptTemplate::parse("t", br#"{"user": "{{ items[0].nope }}"}"#).unwrap();
		let err = t.render(&TemplateInput { question: "q", context: &items(), ..Default::default() }).unwrap_err();
		assert!(matches!(err, TemplateError::Render { .. }), "{err}");
		assert!(err.to_string().contains("undefined"), "{err}");
	}

	#[test]
	fn invalid_templates_are_refused() {
		for (bytes, expect) in [
			(&br#"{"system": "x"}"#[..], "missing field `user`"),
			(br#"{"user": "x", "usr": "y"}"#, "unknown field `usr`"),
			(br#"{"user": "{% if %}"}"#, "`user`"),
			(b"not json", "not a template JSON object"),
		] {
			let err = PromptTemplate::parse("bad", bytes).unwrap_err();
			assert!(matches!(err, TemplateError::Invalid { .. }), "{err}");
			assert!(err.to_string().contains(expect), "{err}");
		}
		let huge = format!(r#"{{"user": "{}"}}"#, "a".repeat(MAX_TEMPLATE_BYTES));
		assert!(PromptTemplate::parse("big", huge.as_bytes()).unwrap_err().to_string().contains("at most"));
		// Runaway rendering stops.
		let t = PromptTemplate::parse(
			"loop",
			br#"{"user": "{% for a in range(1000) %}{% for b in range(1000) %}x{% endfor %}{% endfor %}"}"#,
		)
		.unwrap();
		let err = t.render(&TemplateInput { question: "q", ..Default::default() }).unwrap_err();
		assert!(matches!(err, TemplateError::Render { .. }), "{err}");
	}

	#[test]
	fn store_get_checks_hash() {
		let dir = tempfile::tempdir().unwrap();
		let store = TemplateStore::open(dir.path()).unwrap();
		let bytes = br#"{"system": "You answer about {{ question }}.", "user": "{{ context }}\n{{ question }}"}"#;
		let hash = store.insert("geo.v1", bytes).unwrap();
		assert_eq!(hash, content_hash(bytes).0);
		assert_eq!(store.list().unwrap(), vec!["geo.v1".to_owned()]);
		let t = store.get("geo.v1", Some(hash)).unwrap();
		assert_eq!(t.id(), "geo.v1");
		assert_eq!(t.hash(), hash);
		assert_eq!(store.get("geo.v1", None).unwrap(), t);
		let err = store.get("geo.v1", Some([7; 32])).unwrap_err();
		assert!(matches!(err, TemplateError::HashMismatch { .. }), "{err}");
		assert_eq!(err.http_status(), 409);
		assert!(err.to_string().contains(&hex(&hash)));
		// The file changed on disk after registration.
		fs::write(dir.path().join("geo.v1.json"), br#"{"user": "{{ question }}!"}"#).unwrap();
		assert!(matches!(store.get("geo.v1", Some(hash)), Err(TemplateError::HashMismatch { .. })));
		let err = store.get("nope", None).unwrap_err();
		assert!(matches!(err, TemplateError::NotFound(_)));
		assert_eq!(err.http_status(), 404);
		// An invalid file is reported as such, not as missing.
		fs::write(dir.path().join("broken.json"), b"{").unwrap();
		assert!(matches!(store.get("broken", None), Err(TemplateError::Invalid { .. })));
	}

	#[test]
	fn path_traversal_is_refused() {
		let outer = tempfile::tempdir().unwrap();
		let root = outer.path().join("store");
		let store = TemplateStore::open(&root).unwrap();
		fs::write(outer.path().join("secret.json"), br#"{"user": "{{ question }}"}"#).unwrap();
		for id in ["../secret", "..", "a/../../secret", "/etc/passwd", ".hidden", "a/b", "", "x..y", "a\0b", &"a".repeat(129)] {
			let err = store.get(id, None).unwrap_err();
			assert!(matches!(err, TemplateError::InvalidId(_)), "{id:?}: {err}");
			assert_eq!(err.http_status(), 400);
		}
		assert!(matches!(store.insert("../secret", b"{}"), Err(TemplateError::InvalidId(_))));
		#[cfg(unix)]
		{
			// A symlink in the store pointing outside it.
			std::os::unix::fs::symlink(outer.path().join("secret.json"), root.join("link.json")).unwrap();
			let err = store.get("link", None).unwrap_err();
			assert!(matches!(err, TemplateError::OutsideStore(_)), "{err}");
			// A symlink to a directory named like a template.
			fs::create_dir(root.join("sub")).unwrap();
			std::os::unix::fs::symlink(root.join("sub"), root.join("dir.json")).unwrap();
			assert!(store.get("dir", None).is_err());
		}
	}
}
