//! OpenAI request and response bodies, and the checks that turn a request into what the engine
//! runs. Everything here is plain functions over plain data, so it is tested without a model or
//! a server.
//!
//! Bounds (each breach is a 400 naming the field):
//! - `temperature` in `0..=2` (default 1, as OpenAI); `0` is greedy.
//! - `top_p` in `(0, 1]`; `top_k` (an extension, as in vLLM) `≥ 0`, with `0` and `-1` meaning off.
//! - `stop`: at most [`MAX_STOP_SEQUENCES`] strings, each `1..=`[`MAX_STOP_BYTES`] bytes.
//! - `max_tokens` / `max_completion_tokens` in `1..=ApiLimits::max_tokens`, and the prompt plus
//!   it within the model's context (code `context_length_exceeded`).
//! - `response_format` (both endpoints): `text`, `json_object`, or `json_schema` with a `name`
//!   of 1–64 `[A-Za-z0-9_-]` and a schema of at most [`MAX_SCHEMA_BYTES`]; a schema the grammar
//!   engine cannot compile is a 400 too (named `response_format`).
//! - `n` in `1..=`[`MAX_CHOICES`]; answer `i` samples with `seed + i`.
//! - `logprobs`: `true`/`false` on chat with `top_logprobs` in `0..=`[`MAX_TOP_LOGPROBS`] (only
//!   with `logprobs: true`); a count in that range on completions.
//! - `echo`, `best_of > 1`, `suffix`, `logit_bias`, the legacy `functions` and a `function_call`
//!   other than `none`/`auto`, and OpenLedger's grounding fields on `/v1/completions` are
//!   refused rather than silently ignored. Other unknown fields (`user`, `presence_penalty`, `frequency_penalty`, …) are
//!   accepted and ignored.
//!
//! OpenLedger's extension fields of a chat request — `datanets`, `prompt_template`,
//! `retrieval_top_k` — ground it in DataNets (see `openledger_knowledge::grounding`); the response then carries
//! an `attribution` list (on the final chunk when streaming). `mcp_tools` and `max_tool_calls`
//! let the worker call MCP tools for the request (`agent.rs`); the response then lists the calls
//! in `mcp_calls`, and `attribution` names each tool whose calls succeeded.

use openledger_primitives::{AttributionEntry, AttributionSource, DataNetId, ItemId, ToolId};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::{
	error::ApiError,
	logprobs::{ChatLogprobs, CompletionLogprobs, MAX_TOP_LOGPROBS},
	tools::{read_answer, render_calls, render_result, template_calls, ToolCall, Tooling},
	ApiLimits,
};
use openledger_engine::{
	engine::{FinishReason, SamplingParams, Usage},
	grammar::Grammar,
	tokenizer::{CallFormat, ChatMessage},
};

pub const MAX_STOP_SEQUENCES: usize = 4;
pub const MAX_STOP_BYTES: usize = 256;
/// The most answers one request may ask for (`n`).
pub const MAX_CHOICES: usize = 8;
/// OpenAI's default `max_tokens` for `/v1/completions`.
pub const COMPLETIONS_DEFAULT_MAX_TOKENS: usize = 16;

// ---------------------------------------------------------------------------------------------
// Requests

/// Parses a request body: broken JSON is a 400, JSON of the wrong shape a 422.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
	serde_json::from_slice(body).map_err(|e| match e.classify() {
		serde_json::error::Category::Data => ApiError::unprocessable(format!("invalid request: {e}")),
		_ => ApiError::bad_request(format!("request body is not valid JSON: {e}")),
	})
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatCompletionRequest {
	pub model: String,
	pub messages: Vec<RequestMessage>,
	#[serde(flatten)]
	pub params: CommonParams,
	/// Functions the model may call (see `tools.rs`).
	#[serde(default)]
	pub tools: Option<Vec<serde_json::Value>>,
	#[serde(default)]
	pub parallel_tool_calls: Option<bool>,
	/// The legacy form of tool calling: refused unless it asks for none (use `tools`).
	#[serde(default)]
	pub functions: Option<Vec<serde_json::Value>>,
	#[serde(default)]
	pub function_call: Option<serde_json::Value>,
	#[serde(default)]
	pub tool_choice: Option<serde_json::Value>,
	/// Alternatives to show per token, with `logprobs: true`.
	#[serde(default)]
	pub top_logprobs: Option<i64>,
	/// OpenLedger: DataNets to retrieve context from (besides the adapter's training DataNets).
	#[serde(default)]
	pub datanets: Option<Vec<DataNetId>>,
	/// OpenLedger: the prompt template that lays out the context and the question.
	#[serde(default)]
	pub prompt_template: Option<String>,
	/// OpenLedger: how many DataNet items to retrieve (default: the worker's setting).
	#[serde(default)]
	pub retrieval_top_k: Option<usize>,
	/// OpenLedger: ids of the worker's MCP tools the model may call; the worker calls them
	/// (see `agent.rs`).
	#[serde(default)]
	pub mcp_tools: Option<Vec<ToolId>>,
	/// OpenLedger: the most MCP tool calls the worker makes for the request (default and cap:
	/// the worker's setting).
	#[serde(default)]
	pub max_tool_calls: Option<u64>,
}

impl ChatCompletionRequest {
	/// Whether the request asks for DataNet context or a prompt template.
	pub fn wants_grounding(&self) -> bool {
		self.datanets.as_ref().is_some_and(|d| !d.is_empty()) || self.prompt_template.is_some()
	}

	/// Whether the request opts into the worker's MCP tools.
	pub fn wants_mcp_tools(&self) -> bool {
		self.mcp_tools.as_ref().is_some_and(|t| !t.is_empty())
	}
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
	pub model: String,
	pub prompt: Prompt,
	#[serde(flatten)]
	pub params: CommonParams,
	#[serde(default)]
	pub echo: Option<bool>,
	#[serde(default)]
	pub best_of: Option<u64>,
	#[serde(default)]
	pub suffix: Option<String>,
	/// OpenLedger's grounding fields belong to chat requests: here asking for grounding is
	/// refused, not dropped, so a client never takes an ungrounded answer for a grounded one. An
	/// empty list asks for nothing, as in chat.
	#[serde(default)]
	pub datanets: Option<Vec<serde_json::Value>>,
	#[serde(default)]
	pub prompt_template: Option<serde_json::Value>,
}

/// The sampling and output fields both endpoints share.
#[derive(Debug, Default, Deserialize)]
pub struct CommonParams {
	pub max_tokens: Option<u64>,
	/// The newer name of `max_tokens` in chat; wins when both are given.
	pub max_completion_tokens: Option<u64>,
	pub temperature: Option<f64>,
	pub top_p: Option<f64>,
	pub top_k: Option<i64>,
	pub seed: Option<u64>,
	pub stop: Option<Stop>,
	pub stream: Option<bool>,
	pub stream_options: Option<StreamOptions>,
	pub n: Option<u64>,
	/// `true` (chat) or a count (completions), read by each endpoint's `validate`.
	pub logprobs: Option<serde_json::Value>,
	/// Token biases are a hard constraint on the output: only an empty map is accepted.
	pub logit_bias: Option<serde_json::Value>,
	/// `text`, `json_object` or `json_schema`: the latter two constrain the output.
	pub response_format: Option<serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
	#[serde(default)]
	pub include_usage: Option<bool>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Stop {
	One(String),
	Many(Vec<String>),
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Prompt {
	Text(String),
	/// OpenAI allows a batch of prompts; this server takes exactly one.
	Batch(Vec<String>),
}

#[derive(Clone, Debug, Deserialize)]
pub struct RequestMessage {
	pub role: String,
	/// `null` is allowed (assistant turns in some clients' histories) and reads as empty.
	#[serde(default)]
	pub content: Option<MessageContent>,
	/// An assistant turn's calls.
	#[serde(default)]
	pub tool_calls: Option<Vec<ToolCall>>,
	/// A `tool` turn: the call it answers.
	#[serde(default)]
	pub tool_call_id: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum MessageContent {
	Text(String),
	Parts(Vec<ContentPart>),
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ContentPart {
	#[serde(rename = "type")]
	pub kind: String,
	#[serde(default)]
	pub text: Option<String>,
}

/// What a validated request asks of the engine, before the prompt is tokenized.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationSpec {
	/// The client's explicit limit, already within `1..=ApiLimits::max_tokens`.
	pub max_tokens: Option<usize>,
	pub sampling: SamplingParams,
	pub stop: Vec<String>,
	pub stream: bool,
	pub include_usage: bool,
	/// What the output must follow (`response_format`, or the tools' calls), compiled before
	/// the request is charged.
	pub grammar: Option<Grammar>,
	/// The tools a chat request offers, when it wants them used.
	pub tools: Option<Tooling>,
	/// Answers to generate (`n`).
	pub choices: usize,
	/// `Some(k)`: each token's log-probability and its `k` most likely alternatives.
	pub logprobs: Option<usize>,
}

impl CommonParams {
	/// Checks every shared field; `seed` defaults to a random one so unseeded requests differ.
	pub fn validate(&self, limits: &ApiLimits) -> Result<GenerationSpec, ApiError> {
		if self.logit_bias.as_ref().is_some_and(|b| !b.is_null() && b.as_object().is_none_or(|m| !m.is_empty())) {
			return Err(ApiError::invalid("logit_bias", "logit_bias is not supported"));
		}
		let choices = match self.n {
			None => 1,
			Some(n) if (1..=MAX_CHOICES as u64).contains(&n) => n as usize,
			Some(_) => return Err(ApiError::invalid("n", format!("n must be between 1 and {MAX_CHOICES}"))),
		};
		let (param, requested) = match (self.max_completion_tokens, self.max_tokens) {
			(Some(m), _) => ("max_completion_tokens", Some(m)),
			(None, m) => ("max_tokens", m),
		};
		let max_tokens = match requested {
			None => None,
			Some(0) => return Err(ApiError::invalid(param, format!("{param} must be at least 1"))),
			Some(m) if m > limits.max_tokens as u64 => {
				return Err(ApiError::invalid(
					param,
					format!("{param} is {m}, more than this server's limit of {}", limits.max_tokens),
				))
			}
			Some(m) => Some(m as usize),
		};
		let temperature = self.temperature.unwrap_or(1.0);
		if !(0.0..=2.0).contains(&temperature) {
			return Err(ApiError::invalid("temperature", "temperature must be between 0 and 2"));
		}
		let top_p = match self.top_p {
			Some(p) if !(p > 0.0 && p <= 1.0) => {
				return Err(ApiError::invalid("top_p", "top_p must be greater than 0 and at most 1"))
			}
			Some(p) if p < 1.0 => Some(p),
			_ => None,
		};
		let top_k = match self.top_k {
			Some(k) if k < -1 => {
				return Err(ApiError::invalid("top_k", "top_k must be at least 0 (0 or -1 turns it off)"))
			}
			Some(k) if k > 0 => Some(k as usize),
			_ => None,
		};
		let stop = match &self.stop {
			None => Vec::new(),
			Some(Stop::One(s)) => vec![s.clone()],
			Some(Stop::Many(v)) => v.clone(),
		};
		if stop.len() > MAX_STOP_SEQUENCES {
			return Err(ApiError::invalid(
				"stop",
				format!("at most {MAX_STOP_SEQUENCES} stop sequences are allowed"),
			));
		}
		if stop.iter().any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES) {
			return Err(ApiError::invalid(
				"stop",
				format!("each stop sequence must be 1 to {MAX_STOP_BYTES} bytes long"),
			));
		}
		let stream = self.stream.unwrap_or(false);
		let include_usage =
			stream && self.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false);
		Ok(GenerationSpec {
			max_tokens,
			sampling: SamplingParams {
				temperature,
				top_p,
				top_k,
				seed: self.seed.unwrap_or_else(rand::random),
			},
			stop,
			stream,
			include_usage,
			grammar: response_format(self.response_format.as_ref())?,
			tools: None,
			choices,
			logprobs: None,
		})
	}
}

/// The largest JSON schema accepted, serialised: compiling is bounded anyway, this keeps a
/// request from spending that bound on parsing megabytes.
pub const MAX_SCHEMA_BYTES: usize = 64 << 10;

/// The grammar a `response_format` asks for: none for `text`, any JSON object for
/// `json_object`, the schema's JSON for `json_schema` (`{"name", "schema", "strict"}`; without a
/// schema, any JSON object).
fn response_format(format: Option<&serde_json::Value>) -> Result<Option<Grammar>, ApiError> {
	let Some(format) = format.filter(|f| !f.is_null()) else { return Ok(None) };
	let invalid = |param: &str, message: &str| Err(ApiError::invalid(format!("response_format{param}"), message));
	match format.get("type").and_then(|t| t.as_str()) {
		Some("text") => Ok(None),
		Some("json_object") => Ok(Some(Grammar::JsonObject)),
		Some("json_schema") => {
			let Some(spec) = format.get("json_schema").and_then(|s| s.as_object()) else {
				return invalid(".json_schema", "a json_schema response format needs a `json_schema` object");
			};
			let name = spec.get("name").and_then(|n| n.as_str()).unwrap_or_default();
			if !valid_name(name) {
				return invalid(".json_schema.name", "the name must be 1 to 64 letters, digits, underscores or dashes");
			}
			match spec.get("schema") {
				None | Some(serde_json::Value::Null) => Ok(Some(Grammar::JsonObject)),
				Some(schema @ serde_json::Value::Object(_)) => {
					if serde_json::to_vec(schema).map_or(usize::MAX, |b| b.len()) > MAX_SCHEMA_BYTES {
						return invalid(".json_schema.schema", &format!("the schema is larger than {MAX_SCHEMA_BYTES} bytes"));
					}
					Ok(Some(Grammar::JsonSchema(schema.clone())))
				},
				Some(_) => invalid(".json_schema.schema", "the schema must be a JSON Schema object"),
			}
		},
		_ => invalid(".type", "the response format type must be `text`, `json_object` or `json_schema`"),
	}
}

/// OpenAI's rule for the names of schemas and functions.
pub fn valid_name(name: &str) -> bool {
	(1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A count of alternatives per token, `0..=MAX_TOP_LOGPROBS`, named `param` in errors.
fn top_count(value: i64, param: &str) -> Result<usize, ApiError> {
	usize::try_from(value)
		.ok()
		.filter(|&k| k <= MAX_TOP_LOGPROBS)
		.ok_or_else(|| ApiError::invalid(param, format!("{param} must be between 0 and {MAX_TOP_LOGPROBS}")))
}

impl ChatCompletionRequest {
	/// Shared checks plus the chat-only fields; tools are called in `calls`, the model's format.
	pub fn validate(&self, limits: &ApiLimits, calls: CallFormat) -> Result<GenerationSpec, ApiError> {
		if self.functions.as_ref().is_some_and(|f| !f.is_empty()) {
			return Err(ApiError::invalid("functions", "the legacy `functions` are not supported; offer them as `tools`"));
		}
		if self.function_call.as_ref().is_some_and(|c| !c.is_null() && !matches!(c.as_str(), Some("none" | "auto"))) {
			return Err(ApiError::invalid("function_call", "the legacy `function_call` is not supported; use `tool_choice`"));
		}
		let mut spec = self.params.validate(limits)?;
		let wants_logprobs = match &self.params.logprobs {
			None | Some(serde_json::Value::Null) => false,
			Some(serde_json::Value::Bool(b)) => *b,
			// What some clients send for "none", accepted before logprobs were served.
			Some(serde_json::Value::Number(n)) if n.as_f64() == Some(0.0) => false,
			Some(_) => return Err(ApiError::invalid("logprobs", "logprobs must be true or false on chat completions")),
		};
		spec.logprobs = match (wants_logprobs, self.top_logprobs) {
			(false, Some(_)) => return Err(ApiError::invalid("top_logprobs", "top_logprobs needs logprobs: true")),
			(false, None) => None,
			(true, top) => Some(top_count(top.unwrap_or(0), "top_logprobs")?),
		};
		if self.wants_mcp_tools() {
			// The request's tools are read with the MCP tools' definitions, once fetched.
			return Ok(spec);
		}
		spec.tools = Tooling::parse(self.tools.as_deref(), self.tool_choice.as_ref(), self.parallel_tool_calls)?
			.map(|tools| tools.in_format(calls));
		if let Some(tools) = &spec.tools {
			if spec.grammar.is_some() {
				return Err(ApiError::invalid(
					"response_format",
					"a JSON response format cannot be combined with tools; set tool_choice to none or drop the format",
				));
			}
			spec.grammar = Some(tools.grammar());
		}
		Ok(spec)
	}
}

impl CompletionRequest {
	pub fn validate(&self, limits: &ApiLimits) -> Result<GenerationSpec, ApiError> {
		if self.echo == Some(true) {
			return Err(ApiError::invalid("echo", "echo is not supported"));
		}
		if self.best_of.is_some_and(|b| b != 1) {
			return Err(ApiError::invalid("best_of", "only best_of = 1 is supported"));
		}
		if self.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
			return Err(ApiError::invalid("suffix", "suffix is not supported"));
		}
		let grounding = if self.datanets.as_ref().is_some_and(|d| !d.is_empty()) {
			Some("datanets")
		} else {
			self.prompt_template.as_ref().is_some_and(|t| !t.is_null()).then_some("prompt_template")
		};
		if let Some(param) = grounding {
			return Err(ApiError::invalid(param, "DataNet retrieval and prompt templates are served on /v1/chat/completions"));
		}
		let mut spec = self.params.validate(limits)?;
		spec.logprobs = match &self.params.logprobs {
			None | Some(serde_json::Value::Null) | Some(serde_json::Value::Bool(false)) => None,
			Some(serde_json::Value::Number(n)) => match n.as_i64() {
				Some(k) => Some(top_count(k, "logprobs")?),
				None => return Err(ApiError::invalid("logprobs", format!("logprobs must be between 0 and {MAX_TOP_LOGPROBS}"))),
			},
			Some(_) => return Err(ApiError::invalid("logprobs", "logprobs must be a number of alternatives on completions")),
		};
		Ok(spec)
	}
}

/// The conversation for the chat template: roles checked, text parts joined with newlines
/// (as vLLM does), `developer` read as `system`.
///
/// A `tool` turn's `tool_call_id` must name an earlier call. When the model's chat template
/// renders tools (`native_tools`), calls and `tool` turns go to it as they are (the tools too,
/// separately). Else, with `tools`, the tools' description opens the system message; an
/// assistant turn's `tool_calls` are written after its text as the model writes calls, and a
/// `tool` turn is handed over as a user turn holding the result.
pub fn chat_messages(
	messages: &[RequestMessage],
	tools: Option<&Tooling>,
	native_tools: bool,
) -> Result<Vec<ChatMessage>, ApiError> {
	if messages.is_empty() {
		return Err(ApiError::invalid("messages", "messages must not be empty"));
	}
	let mut call_ids: Vec<&str> = Vec::new();
	let mut chat: Vec<ChatMessage> = messages
		.iter()
		.enumerate()
		.map(|(i, m)| {
			let role = match m.role.as_str() {
				"system" | "developer" => "system",
				"user" | "tool" => "user",
				"assistant" => "assistant",
				other => {
					return Err(ApiError::invalid(
						format!("messages[{i}].role"),
						format!(
							"unsupported role `{other}`; expected system, developer, user, assistant or tool"
						),
					))
				}
			};
			if m.tool_calls.as_ref().is_some_and(|c| !c.is_empty()) && m.role != "assistant" {
				return Err(ApiError::invalid(format!("messages[{i}].tool_calls"), "only assistant turns carry tool_calls"));
			}
			if m.role == "tool" {
				match m.tool_call_id.as_deref() {
					Some(id) if call_ids.contains(&id) => {},
					Some(_) => return Err(ApiError::invalid(format!("messages[{i}].tool_call_id"), "it matches no earlier tool call")),
					None => return Err(ApiError::invalid(format!("messages[{i}].tool_call_id"), "a tool turn needs tool_call_id")),
				}
			}
			let content = match &m.content {
				None => String::new(),
				Some(MessageContent::Text(text)) => text.clone(),
				Some(MessageContent::Parts(parts)) => {
					let mut texts = Vec::with_capacity(parts.len());
					for (j, part) in parts.iter().enumerate() {
						match (part.kind.as_str(), &part.text) {
							("text", Some(text)) => texts.push(text.as_str()),
							("text", None) => {
								return Err(ApiError::invalid(
									format!("messages[{i}].content[{j}].text"),
									"a text content part needs `text`",
								))
							}
							(other, _) => {
								return Err(ApiError::invalid(
									format!("messages[{i}].content[{j}].type"),
									format!("content part type `{other}` is not supported; only `text`"),
								))
							}
						}
					}
					texts.join("\n")
				}
			};
			let mut message = ChatMessage::new(role, content);
			match (&m.tool_calls, m.role.as_str()) {
				(Some(calls), _) if !calls.is_empty() => {
					call_ids.extend(calls.iter().map(|c| c.id.as_str()));
					if native_tools {
						message.tool_calls = Some(template_calls(calls));
					} else {
						message.content = [message.content, render_calls(calls)].join("\n").trim_start().to_owned();
					}
				},
				(_, "tool") if native_tools => {
					message.role = "tool".to_owned();
					message.tool_call_id = m.tool_call_id.clone();
				},
				(_, "tool") => message.content = render_result(&message.content),
				_ => {},
			}
			Ok(message)
		})
		.collect::<Result<_, _>>()?;
	if let Some(tools) = tools.filter(|_| !native_tools) {
		let prompt = tools.system_prompt();
		match chat.first_mut() {
			Some(first) if first.role == "system" => first.content = format!("{}\n\n{prompt}", first.content),
			_ => chat.insert(0, ChatMessage::new("system", prompt)),
		}
	}
	Ok(chat)
}

impl Prompt {
	/// The one prompt string; empty prompts and batches are refused.
	pub fn text(&self) -> Result<&str, ApiError> {
		let text = match self {
			Prompt::Text(text) => text.as_str(),
			Prompt::Batch(batch) if batch.len() == 1 => batch[0].as_str(),
			Prompt::Batch(_) => {
				return Err(ApiError::invalid("prompt", "exactly one prompt per request is supported"))
			}
		};
		if text.is_empty() {
			return Err(ApiError::invalid("prompt", "prompt must not be empty"));
		}
		Ok(text)
	}
}

/// How many tokens to generate, given the prompt and the context length. An explicit request
/// must fit; without one, `default` (or the server limit) is cut to what is left of the context.
pub fn token_budget(
	prompt_tokens: usize,
	requested: Option<usize>,
	default: Option<usize>,
	limits: &ApiLimits,
	context_length: usize,
	param: &str,
) -> Result<usize, ApiError> {
	if prompt_tokens == 0 {
		return Err(ApiError::invalid(param, "the prompt encodes to no tokens"));
	}
	let exceeded = |message: String| {
		Err(ApiError::invalid(param, message).with_code("context_length_exceeded"))
	};
	if prompt_tokens >= context_length {
		return exceeded(format!(
			"This model's maximum context length is {context_length} tokens, and the prompt has \
			 {prompt_tokens}, which leaves no room for a completion."
		));
	}
	let room = context_length - prompt_tokens;
	match requested {
		Some(max_tokens) if max_tokens > room => exceeded(format!(
			"This model's maximum context length is {context_length} tokens. However, you requested \
			 {} tokens ({prompt_tokens} in the prompt, {max_tokens} for the completion).",
			prompt_tokens + max_tokens
		)),
		Some(max_tokens) => Ok(max_tokens),
		None => Ok(default.unwrap_or(limits.max_tokens).min(limits.max_tokens).min(room)),
	}
}

// ---------------------------------------------------------------------------------------------
// Responses

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UsageBody {
	pub prompt_tokens: usize,
	pub completion_tokens: usize,
	pub total_tokens: usize,
	pub prompt_tokens_details: PromptTokensDetails,
}

/// How many prompt tokens were reused from an earlier prompt's cache (OpenAI's field name).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PromptTokensDetails {
	pub cached_tokens: usize,
}

impl From<&Usage> for UsageBody {
	fn from(u: &Usage) -> Self {
		Self {
			prompt_tokens: u.prompt_tokens,
			completion_tokens: u.completion_tokens,
			total_tokens: u.prompt_tokens + u.completion_tokens,
			prompt_tokens_details: PromptTokensDetails { cached_tokens: u.cached_tokens },
		}
	}
}

/// `chat.completion`.
#[derive(Debug, Serialize)]
pub struct ChatCompletion {
	pub id: String,
	pub object: &'static str,
	pub created: u64,
	pub model: String,
	pub choices: Vec<ChatChoice>,
	pub usage: UsageBody,
	/// OpenLedger: what the answer owes to DataNets (present when the request was grounded).
	#[serde(skip_serializing_if = "Option::is_none")]
	pub attribution: Option<Vec<AttributionBody>>,
	/// OpenLedger: the id of the signed receipt (present when the worker is on a chain).
	#[serde(skip_serializing_if = "Option::is_none")]
	pub receipt_id: Option<String>,
	/// OpenLedger: the MCP tool calls the worker made for the request, in order (present when
	/// it asked for `mcp_tools`).
	#[serde(skip_serializing_if = "Option::is_none")]
	pub mcp_calls: Option<Vec<McpCallBody>>,
}

/// One attribution entry as the API shows it: the same entry the receipt carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum AttributionBody {
	/// What the answer owes a DataNet: `source` is `retrieval`, `span` or `training`.
	Data {
		source: &'static str,
		datanet: DataNetId,
		/// The item's on-chain id; absent for `training`.
		#[serde(skip_serializing_if = "Option::is_none")]
		item: Option<ItemId>,
		weight_ppm: u32,
	},
	/// An MCP tool the answer used (`source` is `tool`): its id and how many of its calls
	/// succeeded, each of which costs its price.
	Tool { source: &'static str, tool: ToolId, calls: u32 },
}

impl AttributionBody {
	pub fn tool(tool: ToolId, calls: u32) -> Self {
		Self::Tool { source: "tool", tool, calls }
	}
}

impl From<&AttributionEntry> for AttributionBody {
	fn from(e: &AttributionEntry) -> Self {
		let source = match e.source {
			AttributionSource::Retrieval => "retrieval",
			AttributionSource::Span => "span",
			AttributionSource::Training => "training",
		};
		Self::Data { source, datanet: e.datanet, item: e.item, weight_ppm: e.weight_ppm }
	}
}

/// A call the worker made to an MCP tool for the request, and what came of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct McpCallBody {
	/// The call's id, as the tool turn that answered it names it.
	pub id: String,
	pub tool: ToolId,
	pub name: String,
	/// The arguments the model wrote: a JSON object, as a string.
	pub arguments: String,
	/// What the model was shown: the tool's result, or why the call failed.
	pub result: String,
	/// The call failed (the server said so, timed out, was unreachable, or answered nonsense).
	pub is_error: bool,
	/// The call is paid for: it succeeded.
	pub billed: bool,
}

#[derive(Debug, Serialize)]
pub struct ChatChoice {
	pub index: u32,
	pub message: AssistantMessage,
	pub logprobs: Option<ChatLogprobs>,
	pub finish_reason: &'static str,
}

#[derive(Debug, Serialize)]
pub struct AssistantMessage {
	pub role: &'static str,
	/// `null` when the answer is only tool calls.
	pub content: Option<String>,
	#[serde(skip_serializing_if = "Option::is_none")]
	pub tool_calls: Option<Vec<ToolCall>>,
}

/// `chat.completion.chunk`: the first carries the role, the next ones text, the last the finish
/// reason; with `include_usage` one more has no choices and the usage.
#[derive(Debug, Serialize)]
pub struct ChatCompletionChunk<'a> {
	pub id: &'a str,
	pub object: &'static str,
	pub created: u64,
	pub model: &'a str,
	pub choices: Vec<ChunkChoice<'a>>,
	#[serde(skip_serializing_if = "Option::is_none")]
	pub usage: Option<UsageBody>,
	/// OpenLedger: on the chunk with the finish reason, when the request was grounded.
	#[serde(skip_serializing_if = "Option::is_none")]
	pub attribution: Option<Vec<AttributionBody>>,
	/// OpenLedger: on the chunk with the finish reason, the signed receipt's id.
	#[serde(skip_serializing_if = "Option::is_none")]
	pub receipt_id: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ChunkChoice<'a> {
	pub index: u32,
	pub delta: Delta<'a>,
	pub logprobs: Option<ChatLogprobs>,
	pub finish_reason: Option<&'static str>,
}

#[derive(Debug, Default, Serialize)]
pub struct Delta<'a> {
	#[serde(skip_serializing_if = "Option::is_none")]
	pub role: Option<&'static str>,
	#[serde(skip_serializing_if = "Option::is_none")]
	pub content: Option<&'a str>,
	#[serde(skip_serializing_if = "Option::is_none")]
	pub tool_calls: Option<Vec<ToolCallDelta>>,
}

/// A streamed call: its first delta has the index, id, type and name (and empty arguments), the
/// next ones the index and more of the arguments, as the OpenAI clients reassemble them.
#[derive(Debug, Serialize)]
pub struct ToolCallDelta {
	pub index: usize,
	#[serde(skip_serializing_if = "Option::is_none")]
	pub id: Option<String>,
	#[serde(rename = "type", skip_serializing_if = "Option::is_none")]
	pub kind: Option<&'static str>,
	pub function: FunctionDelta,
}

#[derive(Debug, Serialize)]
pub struct FunctionDelta {
	#[serde(skip_serializing_if = "Option::is_none")]
	pub name: Option<String>,
	pub arguments: String,
}

/// `text_completion`, whole or as a stream chunk (same shape, as OpenAI sends it).
#[derive(Debug, Serialize)]
pub struct Completion<'a> {
	pub id: &'a str,
	pub object: &'static str,
	pub created: u64,
	pub model: &'a str,
	pub choices: Vec<CompletionChoice<'a>>,
	#[serde(skip_serializing_if = "Option::is_none")]
	pub usage: Option<UsageBody>,
	/// OpenLedger: the answer's attribution, as on chat completions (on the chunk with the
	/// finish reason when streaming).
	#[serde(skip_serializing_if = "Option::is_none")]
	pub attribution: Option<Vec<AttributionBody>>,
	/// OpenLedger: the signed receipt's id (on the chunk with the finish reason when streaming).
	#[serde(skip_serializing_if = "Option::is_none")]
	pub receipt_id: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CompletionChoice<'a> {
	pub text: &'a str,
	pub index: u32,
	pub logprobs: Option<CompletionLogprobs>,
	pub finish_reason: Option<&'static str>,
}

impl ChatChoice {
	pub fn new(index: usize, text: String, finish: FinishReason) -> Self {
		Self {
			index: index as u32,
			message: AssistantMessage { role: "assistant", content: Some(text), tool_calls: None },
			logprobs: None,
			finish_reason: finish.as_openai(),
		}
	}

	/// Reads the answer's tool calls out of its text: with any, they go to `tool_calls`, the text
	/// before them stays the content (`null` when there is none), and a finished answer ends with
	/// `tool_calls`. A call cut short by `max_tokens` is left as text.
	pub fn read_tool_calls(&mut self, format: CallFormat) {
		let text = self.message.content.take().unwrap_or_default();
		let (content, calls) = read_answer(&text, format);
		if calls.is_empty() {
			self.message.content = Some(text);
			return;
		}
		self.message.content = content;
		self.message.tool_calls = Some(calls);
		if self.finish_reason == "stop" {
			self.finish_reason = "tool_calls";
		}
	}
}

impl ChatCompletion {
	pub fn new(id: String, created: u64, model: String, choices: Vec<ChatChoice>, usage: &Usage) -> Self {
		Self {
			id,
			object: "chat.completion",
			created,
			model,
			choices,
			usage: usage.into(),
			attribution: None,
			receipt_id: None,
			mcp_calls: None,
		}
	}
}

impl<'a> ChatCompletionChunk<'a> {
	pub fn new(id: &'a str, created: u64, model: &'a str, delta: Delta<'a>, finish: Option<FinishReason>) -> Self {
		Self {
			id,
			object: "chat.completion.chunk",
			created,
			model,
			choices: vec![ChunkChoice {
				index: 0,
				delta,
				logprobs: None,
				finish_reason: finish.map(FinishReason::as_openai),
			}],
			usage: None,
			attribution: None,
			receipt_id: None,
		}
	}

	pub fn usage(id: &'a str, created: u64, model: &'a str, usage: &Usage) -> Self {
		Self {
			id,
			object: "chat.completion.chunk",
			created,
			model,
			choices: Vec::new(),
			usage: Some(usage.into()),
			attribution: None,
			receipt_id: None,
		}
	}
}

impl<'a> Completion<'a> {
	pub fn new(
		id: &'a str,
		created: u64,
		model: &'a str,
		text: &'a str,
		finish: Option<FinishReason>,
		usage: Option<&Usage>,
	) -> Self {
		Self {
			id,
			object: "text_completion",
			created,
			model,
			choices: vec![CompletionChoice {
				text,
				index: 0,
				logprobs: None,
				finish_reason: finish.map(FinishReason::as_openai),
			}],
			usage: usage.map(UsageBody::from),
			attribution: None,
			receipt_id: None,
		}
	}

	pub fn usage(id: &'a str, created: u64, model: &'a str, usage: &Usage) -> Self {
		Self { id, object: "text_completion", created, model, choices: Vec::new(), usage: Some(usage.into()), attribution: None, receipt_id: None }
	}
}

/// `GET /v1/models`.
#[derive(Debug, Serialize)]
pub struct ModelList {
	pub object: &'static str,
	pub data: Vec<ModelCard>,
}

#[derive(Debug, Serialize)]
pub struct ModelCard {
	pub id: String,
	pub object: &'static str,
	pub created: u64,
	pub owned_by: &'static str,
	/// vLLM's fields. For the base model `root` is its own name and `parent` null; for an
	/// adapter `parent` is the base model and `root` the hex blake2-256 of its weights file,
	/// its identity on chain.
	pub root: String,
	pub parent: Option<String>,
	#[serde(skip_serializing_if = "Option::is_none")]
	pub max_model_len: Option<usize>,
	/// Adapters only: whether it is loaded now (else it loads on first use).
	#[serde(skip_serializing_if = "Option::is_none")]
	pub resident: Option<bool>,
}

/// `POST /v1/load_lora_adapter`, as vLLM takes it. `lora_path` is inside the adapter store
/// (relative to it or absolute); without it the adapter is `<store>/<lora_name>`.
#[derive(Debug, Deserialize)]
pub struct LoadLoraRequest {
	pub lora_name: String,
	#[serde(default)]
	pub lora_path: Option<String>,
}

/// `POST /v1/unload_lora_adapter`.
#[derive(Debug, Deserialize)]
pub struct UnloadLoraRequest {
	pub lora_name: String,
}
