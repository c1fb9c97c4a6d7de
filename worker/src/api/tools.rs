//! OpenAI tool calling on any model: the request's `tools` and `tool_choice` become a system
//! prompt that describes the tools and a grammar that holds every call to its tool's
//! `parameters`; the answer is read back into `tool_calls`.
//!
//! The calls are written the way Hermes-format models (Qwen 2.5, Hermes, SmolLM2 fine-tunes)
//! write them, as text, and so is any model whose template does not describe tools itself (our
//! system prompt asks for this format):
//!
//! ```text
//! <tool_call>
//! {"name": "get_weather", "arguments": {"city": "Oslo"}}
//! </tool_call>
//! ```
//!
//! With `tool_choice: "auto"` the model writes free text until it writes `<tool_call>`, and
//! from there the grammar holds it to a call; `required` (or a named function) starts the answer
//! with a call. A Llama 3.1+ template describes tools itself and asks for its own format, the
//! whole answer one object, `{"name": "get_weather", "parameters": {"city": "Oslo"}}`: then
//! the answer is text or one call ([`CallFormat`]). The grammar fixes the JSON's layout, which is
//! what lets [`CallReader`] read calls as they stream: the name is known before the arguments,
//! which then stream as fragments.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{error::ApiError, openai::valid_name};
use openledger_engine::{
	grammar::{json_layout, Grammar},
	tokenizer::CallFormat,
};

/// The most tools one request may offer, and the largest tool list, serialised.
pub const MAX_TOOLS: usize = 64;
pub const MAX_TOOLS_BYTES: usize = 64 << 10;
/// The most calls one answer may make with `parallel_tool_calls` (the default).
pub const MAX_PARALLEL_CALLS: usize = 8;

const OPEN: &str = "<tool_call>\n";
/// Free text that never opens a call.
const TEXT: &str = "TEXT: /(?s:.*)/ & ~/(?s:.*)<tool_call>(?s:.*)/";
const CLOSE: &str = "}\n</tool_call>";
const NAME_PREFIX: &str = "{\"name\": \"";
const ARGUMENTS_PREFIX: &str = "\", \"arguments\": ";
/// Llama 3's: the name after this, then the arguments (its "parameters").
const PARAMETERS_PREFIX: &str = "\", \"parameters\": ";
/// Llama 3's free text: anything that does not start with `{`, as a call does (the lexer takes
/// the longest lexeme, so text that could go on as a call's opening would never give way to it).
const LLAMA3_TEXT: &str = "LLAMA3_TEXT: /(?s:.*)/ & ~/\\{(?s:.*)/";

/// One function the model may call.
#[derive(Clone, Debug, PartialEq)]
pub struct Tool {
	pub name: String,
	pub description: Option<String>,
	/// A JSON Schema for the arguments object.
	pub parameters: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ToolChoice {
	Auto,
	Required,
	Named(String),
	/// The tools are described but no call may be made: the last round of an MCP tool loop,
	/// once its calls or its time are spent.
	Off,
}

/// The tools a request offers and how it wants them used; `None` from [`Tooling::parse`] when it
/// offers none or asks for none.
#[derive(Clone, Debug, PartialEq)]
pub struct Tooling {
	pub tools: Vec<Tool>,
	pub choice: ToolChoice,
	pub parallel: bool,
	/// How the model writes calls: Hermes' unless its template asks for another
	/// ([`Self::in_format`]).
	pub format: CallFormat,
}

#[derive(Debug, Deserialize)]
struct ToolBody {
	#[serde(rename = "type")]
	kind: String,
	function: Option<FunctionBody>,
}

#[derive(Debug, Deserialize)]
struct FunctionBody {
	name: String,
	#[serde(default)]
	description: Option<String>,
	#[serde(default)]
	parameters: Option<Value>,
}

impl Tooling {
	/// Checks `tools`, `tool_choice` and `parallel_tool_calls`; each fault is a 400 naming its
	/// field.
	pub fn parse(tools: Option<&[Value]>, choice: Option<&Value>, parallel: Option<bool>) -> Result<Option<Self>, ApiError> {
		Self::parse_with(tools, Vec::new(), choice, parallel)
	}

	/// [`Tooling::parse`], with `offered` (the worker's MCP tools a request opted into) after the
	/// request's own tools; `tool_choice` may name either.
	pub fn parse_with(
		tools: Option<&[Value]>,
		offered: Vec<Tool>,
		choice: Option<&Value>,
		parallel: Option<bool>,
	) -> Result<Option<Self>, ApiError> {
		let tools = tools.unwrap_or_default();
		if tools.len() > MAX_TOOLS {
			return Err(ApiError::invalid("tools", format!("at most {MAX_TOOLS} tools may be offered")));
		}
		if serde_json::to_vec(tools).map_or(usize::MAX, |b| b.len()) > MAX_TOOLS_BYTES {
			return Err(ApiError::invalid("tools", format!("the tools are larger than {MAX_TOOLS_BYTES} bytes")));
		}
		let mut parsed: Vec<Tool> = Vec::with_capacity(tools.len());
		for (i, tool) in tools.iter().enumerate() {
			let body: ToolBody = serde_json::from_value(tool.clone())
				.map_err(|e| ApiError::invalid(format!("tools[{i}]"), format!("not a tool: {e}")))?;
			if body.kind != "function" {
				return Err(ApiError::invalid(format!("tools[{i}].type"), "only `function` tools are supported"));
			}
			let Some(function) = body.function else {
				return Err(ApiError::invalid(format!("tools[{i}].function"), "a function tool needs `function`"));
			};
			if !valid_name(&function.name) {
				return Err(ApiError::invalid(
					format!("tools[{i}].function.name"),
					"a function name must be 1 to 64 letters, digits, underscores or dashes",
				));
			}
			if parsed.iter().any(|t| t.name == function.name) {
				return Err(ApiError::invalid(format!("tools[{i}].function.name"), format!("`{}` is offered twice", function.name)));
			}
			let parameters = match function.parameters {
				None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
				Some(p @ Value::Object(_)) => p,
				Some(_) => {
					return Err(ApiError::invalid(format!("tools[{i}].function.parameters"), "parameters must be a JSON Schema object"))
				},
			};
			parsed.push(Tool { name: function.name, description: function.description, parameters });
		}
		for tool in offered {
			if parsed.iter().any(|t| t.name == tool.name) {
				return Err(ApiError::invalid("mcp_tools", format!("two tools are called `{}`", tool.name)));
			}
			parsed.push(tool);
		}
		let choice = match choice.filter(|c| !c.is_null()) {
			None if parsed.is_empty() => return Ok(None),
			None => ToolChoice::Auto,
			Some(Value::String(s)) => match s.as_str() {
				"none" => return Ok(None),
				"auto" => ToolChoice::Auto,
				"required" => ToolChoice::Required,
				_ => return Err(ApiError::invalid("tool_choice", "tool_choice must be none, auto, required or a function")),
			},
			Some(named) => {
				let name = named
					.get("function")
					.and_then(|f| f.get("name"))
					.and_then(Value::as_str)
					.filter(|_| named.get("type").and_then(Value::as_str) == Some("function"))
					.ok_or_else(|| {
						ApiError::invalid("tool_choice", "a named tool_choice is {\"type\": \"function\", \"function\": {\"name\": …}}")
					})?;
				if !parsed.iter().any(|t| t.name == name) {
					return Err(ApiError::invalid("tool_choice", format!("`{}` is not among the tools", openledger_engine::printable(name))));
				}
				ToolChoice::Named(name.to_owned())
			},
		};
		match (parsed.is_empty(), &choice) {
			(true, ToolChoice::Auto) => return Ok(None),
			(true, _) => return Err(ApiError::invalid("tool_choice", "tool_choice needs tools")),
			_ => {},
		}
		Ok(Some(Self { tools: parsed, choice, parallel: parallel.unwrap_or(true), format: CallFormat::Hermes }))
	}

	/// The same tools used another way.
	pub fn with_choice(&self, choice: ToolChoice) -> Self {
		Self { choice, ..self.clone() }
	}

	/// The same tools, called in `format` (the model's own, where its template describes
	/// tools).
	pub fn in_format(self, format: CallFormat) -> Self {
		Self { format, ..self }
	}

	/// The tools a call may name: all of them, or the one `tool_choice` names.
	fn callable(&self) -> impl Iterator<Item = &Tool> {
		self.tools.iter().filter(|t| match &self.choice {
			ToolChoice::Named(name) => &t.name == name,
			_ => true,
		})
	}

	/// The schema of one call: an object with the name of one of the callable tools and its
	/// arguments under `arguments_key`.
	fn call_schema(&self, arguments_key: &str) -> Value {
		let calls: Vec<Value> = self
			.callable()
			.map(|t| {
				json!({
					"type": "object",
					"properties": {"name": {"const": t.name}, arguments_key: generated_arguments(&t.parameters)},
					"required": ["name", arguments_key],
					"additionalProperties": false
				})
			})
			.collect();
		json_layout(json!({"anyOf": calls}))
	}

	/// The grammar of the answer: free text or calls (`auto`), or calls only.
	pub fn grammar(&self) -> Grammar {
		if self.format == CallFormat::Llama3 {
			return self.llama3_grammar();
		}
		let body = self.call_schema("arguments");
		let more = if self.parallel { format!("(\"\\n\" call){{0,{}}}", MAX_PARALLEL_CALLS - 1) } else { String::new() };
		let start = match self.choice {
			ToolChoice::Auto => format!("start: TEXT | TEXT_THEN_CALL body \"\\n</tool_call>\" {more}"),
			ToolChoice::Required | ToolChoice::Named(_) => format!("start: call {more}"),
			ToolChoice::Off => return Grammar::Lark(format!("start: TEXT\n{TEXT}\n")),
		};
		Grammar::Lark(format!(
			"{start}\n\
			 call: \"<tool_call>\\n\" body \"\\n</tool_call>\"\n\
			 body: %json {body}\n\
			 {TEXT}\n\
			 TEXT_THEN_CALL: TEXT \"<tool_call>\\n\"\n"
		))
	}

	/// [`Self::grammar`] in Llama 3's format: text, or one call as the whole answer (its template
	/// takes one call to a turn, so `parallel_tool_calls` makes no second).
	fn llama3_grammar(&self) -> Grammar {
		let body = self.call_schema("parameters");
		let start = match self.choice {
			ToolChoice::Auto => "start: LLAMA3_TEXT | call",
			ToolChoice::Required | ToolChoice::Named(_) => "start: call",
			ToolChoice::Off => "start: LLAMA3_TEXT",
		};
		Grammar::Lark(format!("{start}\ncall: %json {body}\n{LLAMA3_TEXT}\n"))
	}

	/// The tools a call may name, as OpenAI's `tools` list: what a chat template that renders
	/// tools is given.
	pub fn definitions(&self) -> Value {
		let definitions = self.callable().map(|tool| {
			let mut function = json!({"name": tool.name, "parameters": tool.parameters});
			if let Some(description) = &tool.description {
				function["description"] = json!(description);
			}
			json!({"type": "function", "function": function})
		});
		Value::Array(definitions.collect())
	}

	/// What the model is told about the tools, as a system message, when its chat template does
	/// not render tools itself.
	pub fn system_prompt(&self) -> String {
		let mut prompt = String::from(
			"You may call functions to help with the user's request. The functions, as JSON, are within <tools></tools>:\n<tools>\n",
		);
		for definition in self.definitions().as_array().into_iter().flatten() {
			prompt.push_str(&definition.to_string());
			prompt.push('\n');
		}
		prompt.push_str(
			"</tools>\nTo call a function, write a JSON object with its name and arguments within <tool_call></tool_call> tags:\n\
			 <tool_call>\n{\"name\": <function name>, \"arguments\": <arguments object>}\n</tool_call>",
		);
		prompt
	}
}

/// A call as a past assistant turn carries it (and as an answer returns it).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct ToolCall {
	pub id: String,
	#[serde(rename = "type")]
	pub kind: String,
	pub function: FunctionCall,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct FunctionCall {
	pub name: String,
	/// A JSON object, as a string.
	pub arguments: String,
}

/// A past assistant turn's calls, written as the model writes them.
pub fn render_calls(calls: &[ToolCall]) -> String {
	calls
		.iter()
		.map(|c| {
			let arguments = serde_json::from_str::<Value>(&c.function.arguments).unwrap_or_else(|_| json!(c.function.arguments));
			format!("{OPEN}{NAME_PREFIX}{}{ARGUMENTS_PREFIX}{arguments}{CLOSE}", c.function.name)
		})
		.collect::<Vec<_>>()
		.join("\n")
}

/// A past assistant turn's calls as chat templates take them (`message.tool_calls`, arguments
/// as an object where they parse).
pub fn template_calls(calls: &[ToolCall]) -> Value {
	let calls = calls.iter().map(|c| {
		let arguments = serde_json::from_str::<Value>(&c.function.arguments).unwrap_or_else(|_| json!(c.function.arguments));
		json!({"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": arguments}})
	});
	Value::Array(calls.collect())
}

/// A tool's result, as the user turn that hands it to the model.
pub fn render_result(content: &str) -> String {
	format!("<tool_response>\n{content}\n</tool_response>")
}

/// A new call id, as OpenAI's look.
pub fn call_id() -> String {
	format!("call_{}", hex::encode(rand::random::<[u8; 12]>()))
}

/// What a piece of the answer holds, as [`CallReader`] reads it.
#[derive(Clone, Debug, PartialEq)]
pub enum Piece {
	Content(String),
	/// A call begins: its index among the answer's calls, its id and its function's name.
	CallStart { index: usize, id: String, name: String },
	/// More of the call's arguments (a JSON object, in fragments).
	Arguments { index: usize, fragment: String },
}

#[derive(Debug, PartialEq)]
enum Reading {
	Text,
	/// Llama 3's answer once it is known not to be a call: content to the end.
	Content,
	Name,
	Arguments,
	/// After a call: another call, or the end.
	Between,
}

/// Reads an answer, whole or as it streams, into content and calls. Text that could still turn
/// into the start of a call is held back until it is known not to.
#[derive(Debug)]
pub struct CallReader {
	format: CallFormat,
	reading: Reading,
	buffer: String,
	calls: usize,
	/// Llama 3's arguments so far: its call has no closing marker, so only the end of the
	/// answer tells whether they are whole.
	arguments: String,
}

impl CallReader {
	pub fn new(format: CallFormat) -> Self {
		Self { format, reading: Reading::Text, buffer: String::new(), calls: 0, arguments: String::new() }
	}

	/// The pieces `text` completes.
	pub fn push(&mut self, text: &str) -> Vec<Piece> {
		self.buffer.push_str(text);
		let mut pieces = Vec::new();
		while match self.format {
			CallFormat::Hermes => self.step_hermes(&mut pieces),
			CallFormat::Llama3 => self.step_llama3(&mut pieces),
		} {}
		pieces
	}

	/// Reads what it can of a Hermes answer; whether it should be called again.
	fn step_hermes(&mut self, pieces: &mut Vec<Piece>) -> bool {
		match self.reading {
			Reading::Text | Reading::Content => match self.buffer.find(OPEN) {
				Some(at) => {
					let content = self.buffer[..at].trim_end().to_owned();
					if !content.is_empty() {
						pieces.push(Piece::Content(content));
					}
					self.buffer.drain(..at + OPEN.len());
					self.reading = Reading::Name;
					true
				},
				None => {
					// Whitespace is held too: before a call it is dropped.
					let keep = held_back(&self.buffer, OPEN);
					let ready = self.buffer[..self.buffer.len() - keep].trim_end().len();
					if ready > 0 {
						pieces.push(Piece::Content(self.buffer.drain(..ready).collect()));
					}
					false
				},
			},
			Reading::Name => self.read_name(pieces),
			// JSON strings cannot hold a raw newline, so the first "}\n</tool_call>" ends it.
			Reading::Arguments => match self.buffer.find(CLOSE) {
				Some(at) => {
					let fragment: String = self.buffer.drain(..at).collect();
					self.buffer.drain(..CLOSE.len());
					if !fragment.is_empty() {
						pieces.push(Piece::Arguments { index: self.calls, fragment });
					}
					self.calls += 1;
					self.reading = Reading::Between;
					true
				},
				None => {
					self.stream_arguments(CLOSE.len(), pieces);
					false
				},
			},
			Reading::Between => {
				let next = format!("\n{OPEN}");
				if self.buffer.starts_with(&next) {
					self.buffer.drain(..next.len());
					self.reading = Reading::Name;
					true
				} else {
					false
				}
			},
		}
	}

	/// Reads what it can of a Llama 3 answer: a call from its first character, or content.
	fn step_llama3(&mut self, pieces: &mut Vec<Piece>) -> bool {
		match self.reading {
			Reading::Text if self.buffer.starts_with(NAME_PREFIX) => {
				self.buffer.drain(..NAME_PREFIX.len());
				self.reading = Reading::Name;
				true
			},
			Reading::Text if NAME_PREFIX.starts_with(self.buffer.as_str()) => false,
			Reading::Text => {
				self.reading = Reading::Content;
				true
			},
			Reading::Content | Reading::Between => {
				if !self.buffer.is_empty() {
					pieces.push(Piece::Content(std::mem::take(&mut self.buffer)));
				}
				false
			},
			Reading::Name => self.read_name(pieces),
			// The call's closing brace is held back: it ends the answer.
			Reading::Arguments => {
				let before = pieces.len();
				self.stream_arguments(1, pieces);
				if let Some(Piece::Arguments { fragment, .. }) = pieces.get(before) {
					self.arguments.push_str(fragment);
				}
				false
			},
		}
	}

	/// A call's name, once the text between it and its arguments is in.
	fn read_name(&mut self, pieces: &mut Vec<Piece>) -> bool {
		// Hermes' `{"name": "` is still in the buffer; Llama 3's went with the text that told
		// the call from content.
		let (prefix, between) = match self.format {
			CallFormat::Hermes => (NAME_PREFIX, ARGUMENTS_PREFIX),
			CallFormat::Llama3 => ("", PARAMETERS_PREFIX),
		};
		let Some(len) = self.buffer.strip_prefix(prefix).and_then(|rest| rest.find(between)) else { return false };
		let name = self.buffer[prefix.len()..prefix.len() + len].to_owned();
		self.buffer.drain(..prefix.len() + len + between.len());
		pieces.push(Piece::CallStart { index: self.calls, id: call_id(), name });
		self.reading = Reading::Arguments;
		true
	}

	/// Streams the arguments read so far, but for the last `keep` bytes, which may begin what
	/// closes them.
	fn stream_arguments(&mut self, keep: usize, pieces: &mut Vec<Piece>) {
		let ready = self.buffer.len().saturating_sub(keep);
		let ready = (0..=ready).rev().find(|&i| self.buffer.is_char_boundary(i)).unwrap_or(0);
		if ready > 0 {
			pieces.push(Piece::Arguments { index: self.calls, fragment: self.buffer.drain(..ready).collect() });
		}
	}

	/// The end of the answer: what was held back, as content (a call cut short stays unread).
	pub fn finish(&mut self) -> Vec<Piece> {
		let rest = std::mem::take(&mut self.buffer);
		match self.reading {
			Reading::Text | Reading::Content if !rest.is_empty() => vec![Piece::Content(rest)],
			// Llama 3's call is whole if what is left is the rest of its arguments and the
			// brace that closes the call.
			Reading::Arguments if self.format == CallFormat::Llama3 => {
				let Some(fragment) = rest.strip_suffix('}') else { return Vec::new() };
				self.arguments.push_str(fragment);
				if serde_json::from_str::<Value>(&self.arguments).is_err() {
					return Vec::new();
				}
				self.calls += 1;
				self.reading = Reading::Between;
				match fragment.is_empty() {
					true => Vec::new(),
					false => vec![Piece::Arguments { index: self.calls - 1, fragment: fragment.to_owned() }],
				}
			},
			_ => Vec::new(),
		}
	}

	/// How many calls were read to their end.
	pub fn calls(&self) -> usize {
		self.calls
	}
}

/// The length of the longest end of `text` that `marker` starts with (and is shorter than it).
fn held_back(text: &str, marker: &str) -> usize {
	(1..marker.len().min(text.len() + 1))
		.rev()
		.find(|&len| text.is_char_boundary(text.len() - len) && marker.starts_with(&text[text.len() - len..]))
		.unwrap_or(0)
}

/// A whole answer in `format` read at once: its content (`None` when empty) and its complete
/// calls.
pub fn read_answer(text: &str, format: CallFormat) -> (Option<String>, Vec<ToolCall>) {
	let mut reader = CallReader::new(format);
	let mut pieces = reader.push(text);
	pieces.extend(reader.finish());
	let mut content = String::new();
	let mut calls: Vec<ToolCall> = Vec::new();
	for piece in pieces {
		match piece {
			Piece::Content(text) => content.push_str(&text),
			Piece::CallStart { id, name, .. } =>
				calls.push(ToolCall { id, kind: "function".into(), function: FunctionCall { name, arguments: String::new() } }),
			Piece::Arguments { index, fragment } => calls[index].function.arguments.push_str(&fragment),
		}
	}
	calls.truncate(reader.calls());
	let content = (!content.is_empty()).then_some(content);
	(content, calls)
}

/// The schema a call's arguments are generated under: the tool's own, except that an arguments
/// object that lists its `properties` and says nothing of any others gets only those. JSON Schema
/// allows other keys there, and a small model given the room invents parameters until
/// `max_tokens` cuts the call (MCP servers' generated schemas leave them open); what it writes
/// under this stays valid under the tool's schema. Schemas that may declare properties elsewhere
/// (`allOf`, `$ref`, `dependentSchemas`, ...) or require one they do not list are left as they are.
fn generated_arguments(parameters: &Value) -> Value {
	const ELSEWHERE: [&str; 12] = [
		"additionalProperties",
		"patternProperties",
		"unevaluatedProperties",
		"allOf",
		"anyOf",
		"oneOf",
		"$ref",
		"$dynamicRef",
		"if",
		"dependentSchemas",
		"dependentRequired",
		"dependencies",
	];
	let mut arguments = parameters.clone();
	if let Some(object) = arguments.as_object_mut() {
		let declared = object.get("properties").and_then(Value::as_object);
		// A required name it does not list is a schema's mistake; closing it would make every
		// call impossible, so it is left as it is.
		let listed = |name: &Value| name.as_str().is_some_and(|n| declared.is_some_and(|d| d.contains_key(n)));
		let required_listed = object.get("required").and_then(Value::as_array).is_none_or(|names| names.iter().all(listed));
		if declared.is_some() && required_listed && !ELSEWHERE.iter().any(|key| object.contains_key(*key)) {
			object.insert("additionalProperties".into(), Value::Bool(false));
		}
	}
	arguments
}

#[cfg(test)]
mod tests {
	use super::*;

	#[test]
	fn calls_name_only_the_declared_parameters_unless_the_schema_opens_others() {
		let declared = json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]});
		assert_eq!(generated_arguments(&declared)["additionalProperties"], json!(false));
		for kept in [
			json!({"type": "object", "properties": {"city": {"type": "string"}}, "additionalProperties": true}),
			json!({"type": "object", "properties": {"a": {}}, "additionalProperties": {"type": "number"}}),
			json!({"type": "object", "properties": {"a": {}}, "allOf": [{"properties": {"b": {}}}]}),
			json!({"type": "object", "properties": {"a": {}}, "dependentSchemas": {"a": {"properties": {"b": {}}}}}),
			json!({"type": "object", "properties": {"a": {}}, "required": ["a", "b"]}),
			json!({"type": "object"}),
		] {
			assert_eq!(generated_arguments(&kept), kept);
		}
		let t = Tooling::parse(Some(&tools()), None, None).unwrap().unwrap();
		let Grammar::Lark(grammar) = t.grammar() else { panic!("a Lark grammar") };
		// Keys sorted, or in the order written, as serde_json is built.
		assert!(grammar.contains(r#""required":["city"],"additionalProperties":false"#) || grammar.contains(r#""additionalProperties":false,"properties":{"city""#), "{grammar}");
	}

	fn tools() -> Vec<Value> {
		vec![
			json!({"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}),
			json!({"type": "function", "function": {"name": "add"}}),
		]
	}

	#[test]
	fn parses_tools_and_choices() {
		let t = Tooling::parse(Some(&tools()), None, None).unwrap().unwrap();
		assert_eq!(t.choice, ToolChoice::Auto);
		assert!(t.parallel);
		assert_eq!(t.tools[1].parameters, json!({"type": "object", "properties": {}}));
		let named = json!({"type": "function", "function": {"name": "add"}});
		assert_eq!(Tooling::parse(Some(&tools()), Some(&named), Some(false)).unwrap().unwrap().choice, ToolChoice::Named("add".into()));
		assert_eq!(Tooling::parse(Some(&tools()), Some(&json!("none")), None).unwrap(), None);
		assert_eq!(Tooling::parse(None, None, None).unwrap(), None);
	}

	#[test]
	fn offered_tools_join_the_requests_and_may_be_named() {
		let offered = Tool { name: "get_time".into(), description: None, parameters: json!({"type": "object"}) };
		let named = json!({"type": "function", "function": {"name": "get_time"}});
		let t = Tooling::parse_with(Some(&tools()), vec![offered.clone()], Some(&named), None).unwrap().unwrap();
		assert_eq!(t.tools.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["get_weather", "add", "get_time"]);
		assert_eq!(t.choice, ToolChoice::Named("get_time".into()));
		// Offered tools alone are tools enough for `required`.
		let alone = Tooling::parse_with(None, vec![offered.clone()], Some(&json!("required")), None).unwrap().unwrap();
		assert_eq!(alone.choice, ToolChoice::Required);
		let clash = Tool { name: "add".into(), ..offered };
		assert_eq!(Tooling::parse_with(Some(&tools()), vec![clash], None, None).unwrap_err().param.as_deref(), Some("mcp_tools"));
	}

	#[test]
	fn with_calls_off_the_grammar_is_text_alone() {
		let t = Tooling::parse(Some(&tools()), None, None).unwrap().unwrap();
		let Grammar::Lark(auto) = t.grammar() else { panic!("a Lark grammar") };
		assert!(auto.contains("call"));
		let Grammar::Lark(off) = t.with_choice(ToolChoice::Off).grammar() else { panic!("a Lark grammar") };
		assert_eq!(off, format!("start: TEXT\n{TEXT}\n"));
		// The tools are still described: the conversation may hold their calls.
		assert_eq!(t.with_choice(ToolChoice::Off).system_prompt(), t.system_prompt());
	}

	#[test]
	fn bad_tools_name_their_field() {
		let param = |tools: Vec<Value>, choice: Option<Value>| {
			Tooling::parse(Some(&tools), choice.as_ref(), None).unwrap_err().param
		};
		let cases = [
			(vec![json!({"type": "code_interpreter"})], None, "tools[0].type"),
			(vec![json!({"type": "function", "function": {"name": "a b"}})], None, "tools[0].function.name"),
			(vec![json!({"type": "function", "function": {"name": "f", "parameters": 3}})], None, "tools[0].function.parameters"),
			(vec![json!({"type": "function"})], None, "tools[0].function"),
			(vec![tools()[1].clone(), tools()[1].clone()], None, "tools[1].function.name"),
			(tools(), Some(json!({"type": "function", "function": {"name": "nope"}})), "tool_choice"),
			(tools(), Some(json!("sometimes")), "tool_choice"),
			(vec![], Some(json!("required")), "tool_choice"),
		];
		for (tools, choice, expected) in cases {
			assert_eq!(param(tools, choice).as_deref(), Some(expected));
		}
	}

	#[test]
	fn reads_content_and_calls_whole_and_in_any_split() {
		let answer = "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo}\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"add\", \"arguments\": {}}\n</tool_call>";
		let (content, calls) = read_answer(answer, CallFormat::Hermes);
		assert_eq!(content.as_deref(), Some("Let me look."));
		assert_eq!(calls.len(), 2);
		assert_eq!((calls[0].function.name.as_str(), calls[0].function.arguments.as_str()), ("get_weather", "{\"city\": \"Oslo}\"}"));
		assert_eq!((calls[1].function.name.as_str(), calls[1].function.arguments.as_str()), ("add", "{}"));
		// Streamed in pieces of every size, the same content and calls, names before arguments.
		for size in 1..answer.len() {
			let mut reader = CallReader::new(CallFormat::Hermes);
			let mut pieces = Vec::new();
			for chunk in answer.as_bytes().chunks(size) {
				pieces.extend(reader.push(std::str::from_utf8(chunk).unwrap()));
			}
			pieces.extend(reader.finish());
			let content: String = pieces.iter().filter_map(|p| if let Piece::Content(c) = p { Some(c.as_str()) } else { None }).collect();
			assert_eq!(content, "Let me look.", "size {size}");
			let names: Vec<_> = pieces.iter().filter_map(|p| if let Piece::CallStart { name, .. } = p { Some(name.as_str()) } else { None }).collect();
			assert_eq!(names, ["get_weather", "add"], "size {size}");
			let args = |i| -> String { pieces.iter().filter_map(|p| match p { Piece::Arguments { index, fragment } if *index == i => Some(fragment.as_str()), _ => None }).collect() };
			assert_eq!((args(0), args(1)), ("{\"city\": \"Oslo}\"}".to_owned(), "{}".to_owned()), "size {size}");
			let first_argument = pieces.iter().position(|p| matches!(p, Piece::Arguments { index: 0, .. })).unwrap();
			let first_start = pieces.iter().position(|p| matches!(p, Piece::CallStart { index: 0, .. })).unwrap();
			assert!(first_start < first_argument);
		}
	}

	#[test]
	fn text_without_calls_is_content_and_a_cut_call_is_not_a_call() {
		assert_eq!(read_answer("Just text <tool", CallFormat::Hermes), (Some("Just text <tool".into()), vec![]));
		let (content, calls) = read_answer("<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1", CallFormat::Hermes);
		assert_eq!((content, calls.len()), (None, 0));
	}

	#[test]
	fn history_is_written_as_the_model_writes_it() {
		let call = ToolCall { id: "call_1".into(), kind: "function".into(), function: FunctionCall { name: "add".into(), arguments: "{\"a\":1}".into() } };
		let rendered = render_calls(&[call]);
		assert_eq!(rendered, "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\":1}}\n</tool_call>");
		let (_, calls) = read_answer(&rendered, CallFormat::Hermes);
		assert_eq!((calls[0].function.name.as_str(), calls[0].function.arguments.as_str()), ("add", "{\"a\":1}"));
		assert!(render_result("42").starts_with("<tool_response>\n42"));
	}

	/// Pieces of `answer` read in `format`, streamed in chunks of `size` bytes.
	fn streamed(answer: &str, format: CallFormat, size: usize) -> Vec<Piece> {
		let mut reader = CallReader::new(format);
		let mut pieces = Vec::new();
		let mut rest = answer;
		while !rest.is_empty() {
			let mut at = size.min(rest.len());
			while !rest.is_char_boundary(at) {
				at += 1;
			}
			pieces.extend(reader.push(&rest[..at]));
			rest = &rest[at..];
		}
		pieces.extend(reader.finish());
		pieces
	}

	#[test]
	fn reads_llama3_calls_whole_and_in_any_split() {
		let answer = "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo}\", \"note\": \"é\"}}";
		let (content, calls) = read_answer(answer, CallFormat::Llama3);
		assert_eq!(content, None);
		assert_eq!(calls.len(), 1);
		assert_eq!((calls[0].function.name.as_str(), calls[0].function.arguments.as_str()), ("get_weather", "{\"city\": \"Oslo}\", \"note\": \"é\"}"));
		for size in 1..answer.len() {
			let pieces = streamed(answer, CallFormat::Llama3, size);
			assert!(matches!(&pieces[0], Piece::CallStart { index: 0, name, .. } if name == "get_weather"), "size {size}: {pieces:?}");
			let args: String = pieces.iter().filter_map(|p| if let Piece::Arguments { fragment, .. } = p { Some(fragment.as_str()) } else { None }).collect();
			assert_eq!(args, calls[0].function.arguments, "size {size}");
			assert!(!pieces.iter().any(|p| matches!(p, Piece::Content(_))), "size {size}");
		}
		// Text is content, even text that mentions a call later or starts like one and stops.
		for text in ["It is sunny.", "Call {\"name\": \"add\"}", "{\"na", "{\"names\": 1}", ""] {
			let expected = (!text.is_empty()).then(|| text.to_owned());
			assert_eq!(read_answer(text, CallFormat::Llama3), (expected.clone(), vec![]), "{text}");
			for size in 1..text.len().max(2) {
				let content: String = streamed(text, CallFormat::Llama3, size).iter().map(|p| match p {
					Piece::Content(c) => c.as_str(),
					other => panic!("{other:?} in {text}"),
				}).collect();
				assert_eq!(content, text, "size {size}");
			}
		}
		// A call cut short by `max_tokens` (its arguments unclosed, or the call's brace missing) is
		// not a call.
		for cut in ["{\"name\": \"add\", \"parameters\": {\"a\": 1", "{\"name\": \"add\", \"parameters\": {}", "{\"name\": \"add\", \"parameters\": {\"a\": \"}\"}"] {
			assert_eq!(read_answer(cut, CallFormat::Llama3).1, vec![], "{cut}");
		}
	}

	/// The Llama 3 grammar, compiled for a real vocabulary, takes a call to an offered tool as the
	/// whole answer, or text not starting with `{` (then the end of the answer); not two calls,
	/// nor a call to a tool it does not offer.
	#[test]
	fn the_llama3_grammar_takes_one_call_or_text() {
		let path = openledger_engine::base::find_default_model().unwrap();
		let mut file = std::fs::File::open(&path).unwrap();
		let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
		let codec = openledger_engine::tokenizer::TextCodec::from_gguf(&content).unwrap();
		let vocabulary = openledger_engine::tokenizer::Vocabulary::new(&codec, codec.vocab_size()).unwrap();
		let grammars = openledger_engine::grammar::Grammars::new(&vocabulary, codec.eos_token_ids()).unwrap();
		let takes = |tooling: &Tooling, text: &str| -> bool {
			let mut constraint = grammars.compile(&tooling.grammar()).unwrap();
			let eos = codec.eos_token_ids()[0];
			codec.encode(text).unwrap().into_iter().all(|id| constraint.accept(id).is_ok()) &&
				(constraint.is_complete() || constraint.accept(eos).is_ok() && constraint.is_complete())
		};
		let auto = Tooling::parse(Some(&tools()), None, None).unwrap().unwrap().in_format(CallFormat::Llama3);
		let call = "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Oslo\"}}";
		assert!(takes(&auto, call));
		assert!(takes(&auto, "It is sunny in Oslo."));
		assert!(!takes(&auto, &format!("{call}\n{call}")));
		assert!(!takes(&auto, "{\"name\": \"get_time\", \"parameters\": {}}"));
		assert!(!takes(&auto, "{\"other\": 1}"), "text does not start as a call does");
		assert!(!takes(&auto, "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}"));
		let required = auto.with_choice(ToolChoice::Required);
		assert!(takes(&required, call));
		assert!(!takes(&required, "It is sunny in Oslo."));
		let off = auto.with_choice(ToolChoice::Off);
		assert!(!takes(&off, call));
		assert!(takes(&off, "It is sunny in Oslo."));
	}
}
