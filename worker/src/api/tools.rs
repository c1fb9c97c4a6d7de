//! OpenAI tool calling on any model: the request's `tools` and `tool_choice` become a system
//! prompt that describes the tools and a grammar that holds every call to its tool's
//! `parameters`; the answer is read back into `tool_calls`.
//!
//! The calls are written the way Hermes-format models (Qwen 2.5, Hermes, SmolLM2 fine-tunes)
//! write them, as text:
//!
//! ```text
//! <tool_call>
//! {"name": "get_weather", "arguments": {"city": "Oslo"}}
//! </tool_call>
//! ```
//!
//! With `tool_choice: "auto"` the model writes free text until it writes `<tool_call>`, and
//! from there the grammar holds it to a call; `required` (or a named function) starts the answer
//! with a call. The grammar fixes the JSON's layout, which is what lets [`CallReader`] read
//! calls as they stream: the name is known before the arguments, which then stream as fragments.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{error::ApiError, openai::valid_name};
use openledger_engine::grammar::{json_layout, Grammar};

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
		Ok(Some(Self { tools: parsed, choice, parallel: parallel.unwrap_or(true) }))
	}

	/// The same tools used another way.
	pub fn with_choice(&self, choice: ToolChoice) -> Self {
		Self { choice, ..self.clone() }
	}

	/// The tools a call may name: all of them, or the one `tool_choice` names.
	fn callable(&self) -> impl Iterator<Item = &Tool> {
		self.tools.iter().filter(|t| match &self.choice {
			ToolChoice::Named(name) => &t.name == name,
			_ => true,
		})
	}

	/// The grammar of the answer: free text or calls (`auto`), or calls only.
	pub fn grammar(&self) -> Grammar {
		let calls: Vec<Value> = self
			.callable()
			.map(|t| {
				json!({
					"type": "object",
					"properties": {"name": {"const": t.name}, "arguments": generated_arguments(&t.parameters)},
					"required": ["name", "arguments"],
					"additionalProperties": false
				})
			})
			.collect();
		let body = json_layout(json!({"anyOf": calls}));
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
	Name,
	Arguments,
	/// After a call: another call, or the end.
	Between,
}

/// Reads an answer, whole or as it streams, into content and calls. Text that could still turn
/// into the start of a call is held back until it is known not to.
#[derive(Debug)]
pub struct CallReader {
	reading: Reading,
	buffer: String,
	calls: usize,
}

impl Default for CallReader {
	fn default() -> Self {
		Self { reading: Reading::Text, buffer: String::new(), calls: 0 }
	}
}

impl CallReader {
	/// The pieces `text` completes.
	pub fn push(&mut self, text: &str) -> Vec<Piece> {
		self.buffer.push_str(text);
		let mut pieces = Vec::new();
		loop {
			let progressed = match self.reading {
				Reading::Text => match self.buffer.find(OPEN) {
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
				Reading::Name => {
					let name_end = self.buffer.strip_prefix(NAME_PREFIX).and_then(|rest| rest.find(ARGUMENTS_PREFIX));
					match name_end {
						Some(len) => {
							let name = self.buffer[NAME_PREFIX.len()..NAME_PREFIX.len() + len].to_owned();
							self.buffer.drain(..NAME_PREFIX.len() + len + ARGUMENTS_PREFIX.len());
							pieces.push(Piece::CallStart { index: self.calls, id: call_id(), name });
							self.reading = Reading::Arguments;
							true
						},
						None => false,
					}
				},
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
						let ready = self.buffer.len().saturating_sub(CLOSE.len());
						let ready = (0..=ready).rev().find(|&i| self.buffer.is_char_boundary(i)).unwrap_or(0);
						if ready > 0 {
							pieces.push(Piece::Arguments { index: self.calls, fragment: self.buffer.drain(..ready).collect() });
						}
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
			};
			if !progressed {
				return pieces;
			}
		}
	}

	/// The end of the answer: what was held back, as content (a call cut short stays unread).
	pub fn finish(&mut self) -> Vec<Piece> {
		let rest = std::mem::take(&mut self.buffer);
		match self.reading {
			Reading::Text if !rest.is_empty() => vec![Piece::Content(rest)],
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

/// A whole answer read at once: its content (`None` when empty) and its complete calls.
pub fn read_answer(text: &str) -> (Option<String>, Vec<ToolCall>) {
	let mut reader = CallReader::default();
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
		let (content, calls) = read_answer(answer);
		assert_eq!(content.as_deref(), Some("Let me look."));
		assert_eq!(calls.len(), 2);
		assert_eq!((calls[0].function.name.as_str(), calls[0].function.arguments.as_str()), ("get_weather", "{\"city\": \"Oslo}\"}"));
		assert_eq!((calls[1].function.name.as_str(), calls[1].function.arguments.as_str()), ("add", "{}"));
		// Streamed in pieces of every size, the same content and calls, names before arguments.
		for size in 1..answer.len() {
			let mut reader = CallReader::default();
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
		assert_eq!(read_answer("Just text <tool"), (Some("Just text <tool".into()), vec![]));
		let (content, calls) = read_answer("<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1");
		assert_eq!((content, calls.len()), (None, 0));
	}

	#[test]
	fn history_is_written_as_the_model_writes_it() {
		let call = ToolCall { id: "call_1".into(), kind: "function".into(), function: FunctionCall { name: "add".into(), arguments: "{\"a\":1}".into() } };
		let rendered = render_calls(&[call]);
		assert_eq!(rendered, "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\":1}}\n</tool_call>");
		let (_, calls) = read_answer(&rendered);
		assert_eq!((calls[0].function.name.as_str(), calls[0].function.arguments.as_str()), ("add", "{\"a\":1}"));
		assert!(render_result("42").starts_with("<tool_response>\n42"));
	}
}
