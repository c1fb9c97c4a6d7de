//! MCP tools in a chat request. `mcp_tools` names tools of the worker's catalog by id; the worker
//! opens a session with each tool's server, checks its definition against the hash it was
//! registered with (409 `tool_definition_changed`), offers the tools to the model beside the
//! request's own, and runs the loop: the model answers → its calls of MCP tools (held to each
//! tool's `inputSchema` by the grammar) go to the servers as `tools/call` → the results come back
//! as tool turns → the model answers again. The loop ends when the model answers without calling,
//! or calls one of the request's own tools (those calls go to the client, as without MCP); once
//! `max_tool_calls` or the worker's time bound is spent, one last round runs with calls off.
//!
//! `tool_choice` holds for the first round only (`required` or a named tool forces a call there);
//! later rounds are `auto`. A call that fails (the server's `isError`, a timeout, an unreachable
//! server, arguments that are not an object) is shown to the model as an error and not billed.
//! Results are bounded in size and time (`openledger_mcp::Limits`) and go to the model as message
//! content, so a result cannot write control tokens. The servers are told the tool's arguments
//! and nothing of the payer.

use std::{
	collections::BTreeMap,
	time::{Duration, Instant},
};

use axum::{
	http::{HeaderMap, StatusCode},
	response::{IntoResponse, Response},
	Json,
};
use futures::future::join_all;
use serde_json::Value;
use tokio::sync::mpsc;

use super::{
	error::ApiError,
	finish::{Attributor, Closing},
	handlers::{
		admit, authorise_payer, charge, collect, compile_grammar, encode_chat, generation_headers, ground, lease_adapter,
		training_of, Answer, Priced,
	},
	openai::{
		self, valid_name, ChatChoice, ChatCompletion, ChatCompletionRequest, GenerationSpec, McpCallBody, MessageContent,
		RequestMessage,
	},
	request_log::RequestLog,
	tools::{read_answer, Tool, ToolCall, ToolChoice, Tooling},
	unix_now, AppState,
};
use openledger_engine::{
	adapters::AdapterLease,
	engine::{FinishReason, GenerationRequest, Usage},
	tokenizer::ChatMessage,
};
use openledger_ledger::{
	authorise::Authorisation,
	charge::{Charge, ToolBudget},
};
use openledger_mcp::{definition::definition_hash, Catalog, Limits, McpError, RegisteredTool, Session};
use openledger_primitives::{ToolId, ToolUse, MAX_TOOL_ENTRIES};

/// The most MCP tools one request may name: as many as a receipt can pay.
pub const MAX_MCP_TOOLS: usize = MAX_TOOL_ENTRIES as usize;

/// How a worker serves MCP tools (`serve --mcp-tools`).
#[derive(Clone, Debug)]
pub struct McpSettings {
	pub catalog: Catalog,
	/// Each request to a server, and the size of what it may answer.
	pub limits: Limits,
	/// The most calls one request may make; `max_tool_calls` asks for fewer.
	pub max_calls: usize,
	/// How long one request's loop may run; past it the model answers without calling.
	pub loop_time: Duration,
}

impl Default for McpSettings {
	fn default() -> Self {
		Self { catalog: Catalog::default(), limits: Limits::default(), max_calls: 8, loop_time: Duration::from_secs(120) }
	}
}

/// One MCP tool opened for a request.
struct OpenTool {
	registered: RegisteredTool,
	session: Session,
	/// As the model is offered it.
	offered: Tool,
}

/// Serves a chat request that opts into MCP tools.
pub(super) async fn chat(
	state: AppState,
	mut log: RequestLog,
	headers: &HeaderMap,
	body: &[u8],
	request: ChatCompletionRequest,
	spec: GenerationSpec,
) -> Response {
	match serve(&state, &mut log, headers, body, request, spec).await {
		Ok(response) => response,
		Err(e) => log.reject(e),
	}
}

async fn serve(
	state: &AppState,
	log: &mut RequestLog,
	headers: &HeaderMap,
	body: &[u8],
	request: ChatCompletionRequest,
	spec: GenerationSpec,
) -> Result<Response, ApiError> {
	let Some(settings) = state.mcp() else {
		return Err(ApiError::not_found("this worker offers no MCP tools").with_param("mcp_tools"));
	};
	let ids = request.mcp_tools.clone().unwrap_or_default();
	check_ids(&ids)?;
	let max_calls = match request.max_tool_calls {
		None => settings.max_calls,
		Some(n) if (1..=settings.max_calls as u64).contains(&n) => n as usize,
		Some(_) => return Err(ApiError::invalid("max_tool_calls", format!("max_tool_calls must be between 1 and {}", settings.max_calls))),
	};
	if spec.choices > 1 {
		return Err(ApiError::invalid("n", "a request with mcp_tools takes one answer (n = 1)"));
	}
	if spec.stream {
		return Err(ApiError::invalid("stream", "a request with mcp_tools is answered whole; set stream to false"));
	}
	if spec.logprobs.is_some() {
		return Err(ApiError::invalid("logprobs", "logprobs are not given with mcp_tools"));
	}
	if spec.grammar.is_some() {
		return Err(ApiError::invalid("response_format", "a JSON response format cannot be combined with mcp_tools"));
	}
	if request.tool_choice.as_ref().and_then(Value::as_str) == Some("none") {
		return Err(ApiError::invalid("tool_choice", "tool_choice none leaves the MCP tools unused; drop mcp_tools"));
	}
	// Unknown ids are refused before anything is admitted or any server is called.
	let registered = ids.iter().map(|&id| registered_tool(state, settings, id)).collect::<Result<Vec<_>, _>>()?;
	let permit = admit(state)?;
	// Paid for before any server is called.
	let auth = authorise_payer(state, headers, body, &log.id).await?;
	let started = Instant::now();
	let tools = open_tools(settings, registered).await?;
	let opened = started.elapsed();
	let mut looped = run_loop(state, log, settings, &request, &spec, &tools, max_calls, auth).await;
	let mcp_names: Vec<String> = tools.iter().map(|t| t.offered.name.clone()).collect();
	let closing_started = Instant::now();
	join_all(tools.into_iter().map(|t| t.session.close())).await;
	if let Ok(looped) = &mut looped {
		looped.times.mcp += opened + closing_started.elapsed();
		looped.times.log(&log.id, started.elapsed(), looped.calls.len());
	}
	let Looped { answer, usage, calls, closing, .. } = looped?;

	let headers = generation_headers(&closing);
	let (text, finished) = closing.finish(state, answer.text, &usage).await?;
	drop(permit);
	let mut choice = ChatChoice::new(0, text, answer.finish);
	choice.read_tool_calls(state.inner.codec.call_format());
	// Calls of MCP tools in a last answer that also calls the client's own were made here.
	if let Some(own) = choice.message.tool_calls.take() {
		let own: Vec<ToolCall> = own.into_iter().filter(|c| !mcp_names.contains(&c.function.name)).collect();
		choice.message.tool_calls = (!own.is_empty()).then_some(own);
	}
	let mut body = ChatCompletion::new(format!("chatcmpl-{}", log.id), unix_now(), request.model, vec![choice], &usage);
	body.attribution = finished.attribution;
	body.receipt_id = finished.receipt_id;
	body.mcp_calls = Some(calls);
	log.finished(&usage);
	Ok((headers, Json(body)).into_response())
}

/// The tool registered under `id`: on a chain, the registry's (as last read); else the
/// operator's catalog. 404 for an id neither knows.
fn registered_tool(state: &AppState, settings: &McpSettings, id: ToolId) -> Result<RegisteredTool, ApiError> {
	let not_found =
		|| ApiError::not_found(format!("no MCP tool {id} is registered for this worker")).with_param("mcp_tools").with_code("tool_not_found");
	let Some(ledger) = state.ledger() else { return settings.catalog.get(id).cloned().ok_or_else(not_found) };
	let info = ledger.tool(id).ok_or_else(not_found)?;
	// Registered bytes that are not UTF-8 name no URL or tool a server could have.
	let text = |bytes: Vec<u8>, what: &str| {
		String::from_utf8(bytes).map_err(|_| unusable(id, McpError::BadEndpoint(format!("the registered {what} is not UTF-8"))))
	};
	Ok(RegisteredTool {
		id,
		endpoint: text(info.endpoint, "endpoint")?,
		tool: text(info.name, "tool name")?,
		price: info.price_per_call,
		definition_hash: Some(info.definition_hash.0),
	})
}

fn check_ids(ids: &[ToolId]) -> Result<(), ApiError> {
	if ids.len() > MAX_MCP_TOOLS {
		return Err(ApiError::invalid("mcp_tools", format!("at most {MAX_MCP_TOOLS} MCP tools may be named")));
	}
	for (i, id) in ids.iter().enumerate() {
		if ids[..i].contains(id) {
			return Err(ApiError::invalid("mcp_tools", format!("MCP tool {id} is named twice")));
		}
	}
	Ok(())
}

/// Opens every tool's session at once (one slow server does not add to another's time) and
/// checks each definition; the first failure, after the sessions that did open are closed.
async fn open_tools(settings: &McpSettings, registered: Vec<RegisteredTool>) -> Result<Vec<OpenTool>, ApiError> {
	let opened = join_all(registered.into_iter().map(|r| open_tool(&settings.limits, r))).await;
	let mut tools = Vec::with_capacity(opened.len());
	let mut failure = None;
	for result in opened {
		match result {
			Ok(tool) => tools.push(tool),
			Err(e) => {
				failure.get_or_insert(e);
			},
		}
	}
	match failure {
		Some(e) => {
			join_all(tools.into_iter().map(|t| t.session.close())).await;
			Err(e)
		},
		None => Ok(tools),
	}
}

async fn open_tool(limits: &Limits, registered: RegisteredTool) -> Result<OpenTool, ApiError> {
	let id = registered.id;
	let session = Session::connect(&registered.endpoint, limits.clone()).await.map_err(|e| unusable(id, e))?;
	let checked = async {
		let definition = session.definition(&registered.tool).await.map_err(|e| unusable(id, e))?;
		if registered.definition_hash.is_some_and(|expected| definition_hash(&definition) != expected) {
			return Err(ApiError::new(
				StatusCode::CONFLICT,
				"invalid_request_error",
				format!("MCP tool {id}'s server now defines it differently from the definition it was registered with"),
			)
			.with_param("mcp_tools")
			.with_code("tool_definition_changed"));
		}
		offered_tool(id, &definition)
	}
	.await;
	match checked {
		Ok(offered) => Ok(OpenTool { registered, session, offered }),
		Err(e) => {
			session.close().await;
			Err(e)
		},
	}
}

/// The tool as the model is offered it: its name, description and `inputSchema`.
fn offered_tool(id: ToolId, definition: &Value) -> Result<Tool, ApiError> {
	let name = definition.get("name").and_then(Value::as_str).unwrap_or_default();
	if !valid_name(name) {
		return Err(unusable(id, McpError::Protocol(format!("the tool's name `{}` cannot be offered to a model", openledger_engine::printable(name)))));
	}
	let parameters = match definition.get("inputSchema") {
		Some(schema @ Value::Object(_)) => schema.clone(),
		_ => return Err(unusable(id, McpError::Protocol("the tool's inputSchema is not a JSON Schema object".into()))),
	};
	let description = definition.get("description").and_then(Value::as_str).map(str::to_owned);
	Ok(Tool { name: name.to_owned(), description, parameters })
}

/// A tool the worker cannot use now: its endpoint is refused by the worker's address policy
/// (403), or its server failed (502).
fn unusable(id: ToolId, e: McpError) -> ApiError {
	match e {
		McpError::AddressRefused(_) | McpError::BadEndpoint(_) => ApiError::forbidden(format!("MCP tool {id}: {e}"))
			.with_param("mcp_tools")
			.with_code("tool_endpoint_refused"),
		_ => ApiError::new(StatusCode::BAD_GATEWAY, "api_error", format!("MCP tool {id} is unavailable: {e}"))
			.with_param("mcp_tools")
			.with_code("tool_unavailable"),
	}
}

/// What the loop leaves: the last answer, the usage of all rounds, the calls made, and what
/// closes the request (attribution, the charge, the tools to pay).
struct Looped {
	answer: Answer,
	usage: Usage,
	calls: Vec<McpCallBody>,
	closing: Closing,
	times: Times,
}

/// Where a loop's time went: the model's rounds and the MCP servers (sessions opened, calls,
/// sessions closed); the rest is the worker's own overhead (rendering, tokenizing, grammars).
#[derive(Default)]
struct Times {
	model: Duration,
	mcp: Duration,
}

impl Times {
	fn log(&self, id: &str, total: Duration, calls: usize) {
		let ms = |d: Duration| d.as_secs_f64() * 1000.0;
		let overhead = total.saturating_sub(self.model + self.mcp);
		tracing::info!(id, calls, model_ms = ms(self.model), mcp_ms = ms(self.mcp), overhead_ms = ms(overhead), "tool loop");
	}
}

/// The rounds of the loop. On a chain the request is charged once its first prompt is known, for
/// the tokens of every round and every call at the dearest tool's price; the rounds then stay
/// within the tokens that charge holds.
#[allow(clippy::too_many_arguments)]
async fn run_loop(
	state: &AppState,
	log: &mut RequestLog,
	settings: &McpSettings,
	request: &ChatCompletionRequest,
	spec: &GenerationSpec,
	tools: &[OpenTool],
	max_calls: usize,
	mut auth: Option<Authorisation>,
) -> Result<Looped, ApiError> {
	let offered = tools.iter().map(|t| t.offered.clone()).collect();
	let tooling = Tooling::parse_with(request.tools.as_deref(), offered, request.tool_choice.as_ref(), request.parallel_tool_calls)?
		.ok_or_else(|| ApiError::invalid("mcp_tools", "no tool is offered"))?
		.in_format(state.inner.codec.call_format());
	// Every round describes every tool (the conversation holds calls of any of them); the
	// grammar says which may be called now.
	let described = tooling.with_choice(ToolChoice::Auto);
	let native = state.inner.codec.native_call_format().is_some();
	let first = openai::chat_messages(&request.messages, Some(&described), native)?;
	let adapter = lease_adapter(state, &request.model).await?;
	let training = training_of(state, &request.model, adapter.as_ref())?;
	let mut attributor = ground(state, request, &first, training).await?;
	let grounded = match &mut attributor {
		// Attribution needs what was retrieved, not the rendered messages.
		Some(a) => std::mem::take(&mut a.grounded.messages),
		None => first,
	};

	let deadline = Instant::now() + settings.loop_time;
	let mut choice = tooling.choice.clone();
	let mut turns: Vec<RequestMessage> = Vec::new();
	let mut calls: Vec<McpCallBody> = Vec::new();
	let mut usage = Usage::default();
	let mut charged: Option<(Option<Charge>, Option<usize>)> = None;
	let mut last: Option<Answer> = None;
	let mut times = Times::default();
	loop {
		let spent = calls.len() >= max_calls || Instant::now() >= deadline;
		let round = tooling.with_choice(if spent { ToolChoice::Off } else { choice });
		let constraint = compile_grammar(state, Some(round.grammar()), "tools").await?;
		let messages = with_turns(&grounded, &request.messages, &turns, &described, native)?;
		let prompt = encode_chat(state, messages, Some(&described)).await?;
		let budget = openai::token_budget(
			prompt.len(),
			spec.max_tokens,
			None,
			state.limits(),
			state.inner.engine.context_length(),
			"messages",
		);
		let mut max_tokens = match budget {
			Ok(max_tokens) => max_tokens,
			// The calls' results filled the context: the last answer stands, cut short.
			Err(e) => match last.take() {
				Some(mut answer) => {
					answer.finish = FinishReason::Length;
					return Ok(looped(answer, usage, calls, attributor, charged, times));
				},
				None => return Err(e),
			},
		};
		let (_, token_cap) = match &charged {
			Some(charged) => charged,
			None => {
				// Every round may be as long as this one, and every later prompt as long as this
				// one plus what came before it; the cap below keeps the rounds to what is held.
				let rounds = max_calls + 1;
				let asked = (max_tokens * rounds).saturating_add(prompt.len().saturating_mul(max_calls));
				let prices = tools.iter().map(|t| (t.registered.id, t.registered.price)).collect();
				let budget = ToolBudget { prices, max_calls: max_calls as u32 };
				let priced = Priced { adapter: adapter.as_ref(), attributor: attributor.as_ref(), tools: budget };
				let charge = charge(state, auth.take(), priced, prompt.len(), asked)?;
				let cap = charge.as_ref().map(|c| prompt.len() + c.max_tokens());
				charged.insert((charge, cap))
			},
		};
		if let Some(cap) = *token_cap {
			let room = cap.saturating_sub(usage.prompt_tokens + usage.completion_tokens + prompt.len());
			if room == 0 {
				// The payer's budget ends the loop: the last answer stands, cut short.
				let mut answer = last.expect("the charge leaves the first round room");
				answer.finish = FinishReason::Length;
				return Ok(looped(answer, usage, calls, attributor, charged, times));
			}
			max_tokens = max_tokens.min(room);
		}
		let generating = Instant::now();
		let (answer, round_usage) = generate_once(state, log, prompt, max_tokens, spec, adapter.clone(), constraint).await?;
		times.model += generating.elapsed();
		usage.prompt_tokens += round_usage.prompt_tokens;
		usage.cached_tokens += round_usage.cached_tokens;
		usage.completion_tokens += round_usage.completion_tokens;
		let (content, answer_calls) = read_answer(&answer.text, tooling.format);
		// Each call of an MCP tool beside its tool; the rest are the client's own.
		let mut mcp: Vec<(ToolCall, &OpenTool)> = Vec::new();
		let mut own: Vec<ToolCall> = Vec::new();
		for call in answer_calls {
			match tools.iter().find(|t| t.offered.name == call.function.name) {
				Some(tool) => mcp.push((call, tool)),
				None => own.push(call),
			}
		}
		if mcp.is_empty() {
			return Ok(looped(answer, usage, calls, attributor, charged, times));
		}
		let room = max_calls - calls.len();
		let calling = Instant::now();
		let outcomes = join_all(mcp.iter().enumerate().map(|(i, (call, tool))| async move {
			if i >= room {
				return (format!("error: this request's {max_calls} tool calls are spent; answer without calling"), true, false);
			}
			call_tool(tool, call).await
		}))
		.await;
		times.mcp += calling.elapsed();
		turns.push(RequestMessage {
			role: "assistant".into(),
			content: content.map(MessageContent::Text),
			tool_calls: Some(mcp.iter().map(|(call, _)| call.clone()).collect()),
			tool_call_id: None,
		});
		for (i, ((call, tool), (result, is_error, billed))) in mcp.into_iter().zip(outcomes).enumerate() {
			tracing::debug!(id = %log.id, tool = tool.registered.id, is_error, "MCP tool called");
			turns.push(RequestMessage {
				role: "tool".into(),
				content: Some(MessageContent::Text(result.clone())),
				tool_calls: None,
				tool_call_id: Some(call.id.clone()),
			});
			// A call past the budget was never made: the model is told, the client is not.
			if i >= room {
				continue;
			}
			calls.push(McpCallBody {
				id: call.id,
				tool: tool.registered.id,
				name: call.function.name,
				arguments: call.function.arguments,
				result,
				is_error,
				billed,
			});
		}
		if !own.is_empty() {
			// The client's own tools were called too: the answer, with those calls, is its to act on.
			return Ok(looped(answer, usage, calls, attributor, charged, times));
		}
		last = Some(answer);
		choice = ToolChoice::Auto;
	}
}

fn looped(
	answer: Answer,
	usage: Usage,
	calls: Vec<McpCallBody>,
	attributor: Option<Attributor>,
	charged: Option<(Option<Charge>, Option<usize>)>,
	times: Times,
) -> Looped {
	let tools = billed_calls(&calls).into_iter().map(|(tool, calls)| ToolUse { tool, calls }).collect();
	let charge = charged.and_then(|(charge, _)| charge);
	Looped { answer, usage, calls, closing: Closing { attributor, charge, tools }, times }
}

/// Calls one tool: what the model is shown, whether the call failed, whether it is billed.
async fn call_tool(tool: &OpenTool, call: &ToolCall) -> (String, bool, bool) {
	let arguments = match serde_json::from_str::<Value>(&call.function.arguments) {
		Ok(Value::Object(arguments)) => arguments,
		_ => return ("error: the arguments are not a JSON object".into(), true, false),
	};
	match tool.session.call(&tool.registered.tool, arguments).await {
		Ok(outcome) if outcome.is_error => (format!("error: {}", outcome.text), true, false),
		Ok(outcome) => (outcome.text, false, true),
		Err(e) => (format!("error: {e}"), true, false),
	}
}

/// The conversation of a round: the first round's (grounded) messages and the turns the loop
/// added, rendered as the request's own turns are.
fn with_turns(
	first: &[ChatMessage],
	original: &[RequestMessage],
	turns: &[RequestMessage],
	described: &Tooling,
	native: bool,
) -> Result<Vec<ChatMessage>, ApiError> {
	let mut messages = first.to_vec();
	if turns.is_empty() {
		return Ok(messages);
	}
	let all: Vec<RequestMessage> = original.iter().chain(turns).cloned().collect();
	// Each turn renders to one message, and only the first message is ever changed: the
	// rendered turns are the last ones.
	let rendered = openai::chat_messages(&all, Some(described), native)?;
	messages.extend_from_slice(&rendered[rendered.len() - turns.len()..]);
	Ok(messages)
}

/// One round: a single answer, whole. The request's admission permit stays with the loop.
async fn generate_once(
	state: &AppState,
	log: &mut RequestLog,
	prompt_tokens: Vec<u32>,
	max_tokens: usize,
	spec: &GenerationSpec,
	adapter: Option<AdapterLease>,
	constraint: Option<openledger_engine::grammar::Constraint>,
) -> Result<(Answer, Usage), ApiError> {
	let (events, rx) = mpsc::unbounded_channel();
	let request = GenerationRequest {
		prompt_tokens,
		max_tokens,
		sampling: spec.sampling.clone(),
		stop: spec.stop.clone(),
		adapter,
		constraint,
		choices: 1,
		logprobs: None,
		events,
		permit: None,
	};
	state.inner.engine.submit(request)?;
	let (mut answers, usage) = collect(log, rx, 1).await?;
	Ok((answers.remove(0), usage))
}

/// Successful calls per tool: what the tools are paid for.
fn billed_calls(calls: &[McpCallBody]) -> BTreeMap<ToolId, u32> {
	let mut billed = BTreeMap::new();
	for call in calls.iter().filter(|c| c.billed) {
		*billed.entry(call.tool).or_insert(0) += 1;
	}
	billed
}

#[cfg(test)]
mod tests {
	use super::*;
	use serde_json::json;

	fn call(tool: ToolId, billed: bool) -> McpCallBody {
		McpCallBody {
			id: "call_1".into(),
			tool,
			name: "t".into(),
			arguments: "{}".into(),
			result: String::new(),
			is_error: !billed,
			billed,
		}
	}

	#[test]
	fn only_successful_calls_are_billed_per_tool() {
		let calls = [call(7, true), call(8, false), call(7, true), call(9, false), call(8, true)];
		assert_eq!(billed_calls(&calls).into_iter().collect::<Vec<_>>(), vec![(7, 2), (8, 1)]);
	}

	#[test]
	fn tool_ids_are_bounded_and_unique() {
		assert!(check_ids(&[1, 2, 3]).is_ok());
		assert_eq!(check_ids(&[1, 2, 1]).unwrap_err().param.as_deref(), Some("mcp_tools"));
		let many: Vec<ToolId> = (0..=MAX_MCP_TOOLS as u32).collect();
		assert_eq!(check_ids(&many).unwrap_err().param.as_deref(), Some("mcp_tools"));
	}

	#[test]
	fn a_served_definition_becomes_the_offered_tool() {
		let served = json!({"name": "get_weather", "description": "Weather now", "inputSchema": {"type": "object"}, "title": "x"});
		let tool = offered_tool(7, &served).unwrap();
		assert_eq!((tool.name.as_str(), tool.description.as_deref()), ("get_weather", Some("Weather now")));
		assert_eq!(tool.parameters, json!({"type": "object"}));
		for bad in [json!({"name": "a.b", "inputSchema": {}}), json!({"name": "ok", "inputSchema": true}), json!({"inputSchema": {}})] {
			let error = offered_tool(7, &bad).unwrap_err();
			assert_eq!((error.status, error.code.as_deref()), (StatusCode::BAD_GATEWAY, Some("tool_unavailable")), "{bad}");
		}
	}

	#[test]
	fn refused_endpoints_are_403_and_failing_servers_502() {
		let refused = unusable(1, McpError::AddressRefused("loopback".into()));
		assert_eq!((refused.status, refused.code.as_deref()), (StatusCode::FORBIDDEN, Some("tool_endpoint_refused")));
		for e in [McpError::Timeout("t".into()), McpError::Unreachable("u".into()), McpError::UnknownTool("x".into())] {
			assert_eq!(unusable(1, e).status, StatusCode::BAD_GATEWAY);
		}
	}

	#[test]
	fn a_rounds_turns_follow_the_first_rounds_messages() {
		let tooling = Tooling::parse_with(None, vec![Tool { name: "f".into(), description: None, parameters: json!({"type": "object"}) }], None, None)
			.unwrap()
			.unwrap();
		let original: Vec<RequestMessage> = serde_json::from_value(json!([{"role": "user", "content": "hi"}])).unwrap();
		let first = openai::chat_messages(&original, Some(&tooling), false).unwrap();
		let grounded: Vec<ChatMessage> = first.iter().cloned().map(|mut m| {
			m.content.push_str(" [grounded]");
			m
		}).collect();
		assert_eq!(with_turns(&grounded, &original, &[], &tooling, false).unwrap(), grounded);
		let turns: Vec<RequestMessage> = serde_json::from_value(json!([
			{"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
			{"role": "tool", "tool_call_id": "call_1", "content": "42"}
		]))
		.unwrap();
		let messages = with_turns(&grounded, &original, &turns, &tooling, false).unwrap();
		assert_eq!(messages.len(), grounded.len() + 2);
		assert_eq!(&messages[..grounded.len()], &grounded[..], "the grounded messages stay as they were");
		assert!(messages[grounded.len()].content.contains("<tool_call>"));
		assert_eq!(messages[grounded.len() + 1].content, "<tool_response>\n42\n</tool_response>");
	}
}
