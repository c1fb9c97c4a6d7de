//! Tests of the HTTP layer: error bodies and status mapping, request parsing and validation,
//! response shapes and the metrics text, without a model; then a few end-to-end requests
//! against a real server over the tiny random model of [`openledger_engine::testing`].

use axum::{body::to_bytes, http::StatusCode, response::IntoResponse};
use serde_json::{json, Value};

use super::{
	error::ApiError,
	admin::constant_time_eq,
	logprobs,
	openai::*,
	ApiLimits,
};
use crate::metrics::{Endpoint, Metrics, Outcome};
use openledger_engine::{
	adapters::{AdapterError, CacheStats},
	engine::{EngineClosed, EngineStats, FinishReason, TokenLogprob, Usage},
	grammar::Grammar,
	tokenizer::{CallFormat, Vocabulary},
};

async fn response_parts(error: ApiError) -> (StatusCode, axum::http::HeaderMap, Value) {
	let response = error.into_response();
	let status = response.status();
	let headers = response.headers().clone();
	let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
	(status, headers, serde_json::from_slice(&body).unwrap())
}

fn limits() -> ApiLimits {
	ApiLimits::default()
}

fn chat(body: Value) -> Result<ChatCompletionRequest, ApiError> {
	parse_json(body.to_string().as_bytes())
}

fn chat_spec(extra: Value) -> Result<GenerationSpec, ApiError> {
	let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
	body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
	chat(body)?.validate(&limits(), CallFormat::Hermes)
}

fn assert_invalid(result: Result<GenerationSpec, ApiError>, param: &str) {
	let error = result.expect_err("should be refused");
	assert_eq!(error.status, StatusCode::BAD_REQUEST, "{error}");
	assert_eq!(error.param.as_deref(), Some(param), "{error}");
	assert_eq!(error.kind, "invalid_request_error");
}

// --- errors ---------------------------------------------------------------------------------

#[tokio::test]
async fn error_body_is_openai_shaped() {
	let (status, headers, body) = response_parts(ApiError::invalid("temperature", "too hot")).await;
	assert_eq!(status, StatusCode::BAD_REQUEST);
	assert_eq!(headers["content-type"], "application/json");
	assert_eq!(
		body,
		json!({"error": {"message": "too hot", "type": "invalid_request_error", "param": "temperature", "code": null}})
	);
}

#[tokio::test]
async fn queue_full_is_429_with_retry_after() {
	let (status, headers, body) = response_parts(ApiError::queue_full()).await;
	assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
	assert_eq!(headers["retry-after"], "1");
	assert_eq!(body["error"]["code"], "rate_limit_exceeded");
	assert_eq!(body["error"]["type"], "rate_limit_error");
}

#[tokio::test]
async fn model_not_found_and_engine_closed() {
	let (status, _, body) = response_parts(ApiError::model_not_found("nope")).await;
	assert_eq!(status, StatusCode::NOT_FOUND);
	assert_eq!(body["error"]["code"], "model_not_found");
	assert_eq!(body["error"]["param"], "model");
	// A client's name comes back on one line and bounded, however long or odd it was.
	let (_, _, body) = response_parts(ApiError::model_not_found(&format!("a\nb{}", "x".repeat(100_000)))).await;
	let message = body["error"]["message"].as_str().unwrap();
	assert!(message.starts_with("The model `a\\nbxxx") && message.len() < 300, "{}", &message[..80]);

	let error = ApiError::from(EngineClosed);
	assert_eq!(error.status, StatusCode::SERVICE_UNAVAILABLE);
	assert_eq!(error.kind, "server_error");
}

#[test]
fn adapter_errors_map_to_statuses() {
	let cases = [
		(AdapterError::NotFound("a".into()), 404, "model_not_found"),
		(AdapterError::InvalidName("../a".into()), 400, "invalid_adapter_name"),
		(AdapterError::OutsideStore("/etc".into()), 400, "adapter_outside_store"),
		(AdapterError::Unsupported("dora".into()), 400, "unsupported_adapter"),
		(AdapterError::Invalid("shape".into()), 400, "invalid_adapter"),
		(AdapterError::TooLarge("rank".into()), 400, "adapter_too_large"),
		(AdapterError::AlreadyRegistered("a".into()), 400, "adapter_already_loaded"),
		(
			AdapterError::HashMismatch { name: "a".into(), expected: "1".into(), found: "2".into() },
			409,
			"adapter_changed",
		),
		(AdapterError::CacheFull("busy".into()), 503, "adapter_cache_full"),
		(AdapterError::Io("disk".into()), 500, "adapter_error"),
	];
	for (error, status, code) in cases {
		let message = error.to_string();
		let api = ApiError::from(error);
		assert_eq!(api.status.as_u16(), status, "{message}");
		assert_eq!(api.code.as_deref(), Some(code), "{message}");
		assert_eq!(api.message, message);
	}
	assert_eq!(ApiError::from(AdapterError::CacheFull("x".into())).retry_after, Some(1));
}

// --- parsing --------------------------------------------------------------------------------

#[test]
fn malformed_json_is_400_and_wrong_shape_is_422() {
	for body in ["{", "not json", "", "{\"model\": \"m\",}"] {
		let error = parse_json::<ChatCompletionRequest>(body.as_bytes()).unwrap_err();
		assert_eq!(error.status, StatusCode::BAD_REQUEST, "{body:?}: {error}");
	}
	for body in [
		json!({"model": "m"}),
		json!({"model": 3, "messages": []}),
		json!({"model": "m", "messages": "hi"}),
		json!({"model": "m", "messages": [], "temperature": "hot"}),
		json!({"model": "m", "messages": [{"content": "no role"}]}),
		json!({"model": "m", "messages": [], "max_tokens": -1}),
		json!([1, 2]),
	] {
		let error = chat(body.clone()).unwrap_err();
		assert_eq!(error.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {error}");
	}
}

#[test]
fn unknown_and_harmless_fields_are_ignored() {
	let spec = chat_spec(json!({
		"user": "u", "presence_penalty": 0.5, "frequency_penalty": 0, "logit_bias": {}, "metadata": {"a": 1},
		"logprobs": false, "tools": [], "response_format": {"type": "text"}, "n": 1, "something_new": [1],
		"functions": [], "function_call": "none", "tool_choice": "auto",
	}))
	.unwrap();
	assert_eq!(spec.sampling.temperature, 1.0, "OpenAI's default temperature");
	assert!(!spec.stream && !spec.include_usage);
	assert_eq!(spec.max_tokens, None);
	assert!(spec.stop.is_empty());
}

/// What would change the answer, or its meaning, is refused rather than dropped.
#[test]
fn constraints_this_server_cannot_honour_are_refused() {
	assert_invalid(chat_spec(json!({"logit_bias": {"50256": -100}})), "logit_bias");
	assert_invalid(chat_spec(json!({"functions": [{"name": "f", "parameters": {}}]})), "functions");
	assert_invalid(chat_spec(json!({"function_call": {"name": "f"}})), "function_call");
	assert_invalid(chat_spec(json!({"tool_choice": "required"})), "tool_choice");
	assert_invalid(chat_spec(json!({"tool_choice": {"type": "function", "function": {"name": "f"}}})), "tool_choice");
	assert!(chat_spec(json!({"logit_bias": null, "tool_choice": "none", "function_call": "auto"})).is_ok());
}

/// Log-probabilities in both shapes: a token's bytes even when it holds part of a character,
/// −∞ shown as OpenAI shows it, a special token by its name, alternatives in order.
#[test]
fn logprobs_render_in_the_chat_and_completions_shapes() {
	let mut special = vec![0xff];
	special.extend(b"<|im_end|>");
	let vocabulary = Vocabulary::from_words(vec![b"Hel".to_vec(), b"lo".to_vec(), vec![0xe2, 0x82], vec![0xac], special]);
	let tokens = [
		TokenLogprob { token: 0, logprob: -0.25, top: vec![(0, -0.25), (4, -2.5)], text_offset: 0 },
		TokenLogprob { token: 2, logprob: f32::NEG_INFINITY, top: vec![], text_offset: 3 },
	];
	let chat = serde_json::to_value(logprobs::chat(&vocabulary, &tokens)).unwrap();
	assert_eq!(
		chat["content"][0],
		json!({"token": "Hel", "logprob": -0.25, "bytes": [72, 101, 108], "top_logprobs": [
			{"token": "Hel", "logprob": -0.25, "bytes": [72, 101, 108]},
			{"token": "<|im_end|>", "logprob": -2.5, "bytes": b"<|im_end|>".to_vec()},
		]})
	);
	assert_eq!(chat["content"][1], json!({"token": "\u{fffd}", "logprob": -9999.0, "bytes": [0xe2, 0x82], "top_logprobs": []}));
	let completion = serde_json::to_value(logprobs::completion(&vocabulary, &tokens)).unwrap();
	assert_eq!(
		completion,
		json!({
			"tokens": ["Hel", "\u{fffd}"],
			"token_logprobs": [-0.25, -9999.0],
			"top_logprobs": [{"Hel": -0.25, "<|im_end|>": -2.5}, {}],
			"text_offset": [0, 3],
		})
	);
}

#[test]
fn sampling_fields_are_checked() {
	assert_invalid(chat_spec(json!({"n": 9})), "n");
	assert_invalid(chat_spec(json!({"n": 0})), "n");
	assert_eq!(chat_spec(json!({"n": 8})).unwrap().choices, 8);
	assert_eq!(chat_spec(json!({})).unwrap().choices, 1);
	assert_invalid(chat_spec(json!({"temperature": 3})), "temperature");
	assert_invalid(chat_spec(json!({"temperature": -0.1})), "temperature");
	assert_invalid(chat_spec(json!({"top_p": 0})), "top_p");
	assert_invalid(chat_spec(json!({"top_p": 1.01})), "top_p");
	assert_invalid(chat_spec(json!({"top_k": -2})), "top_k");
	assert_invalid(chat_spec(json!({"max_tokens": 0})), "max_tokens");
	assert_invalid(chat_spec(json!({"max_tokens": 2049})), "max_tokens");
	assert_invalid(chat_spec(json!({"max_completion_tokens": 0, "max_tokens": 5})), "max_completion_tokens");
	assert_invalid(chat_spec(json!({"logprobs": 2})), "logprobs");
	assert_invalid(chat_spec(json!({"top_logprobs": 2})), "top_logprobs");
	assert_invalid(chat_spec(json!({"logprobs": true, "top_logprobs": 21})), "top_logprobs");
	assert_invalid(chat_spec(json!({"logprobs": true, "top_logprobs": -1})), "top_logprobs");
	assert_eq!(chat_spec(json!({"logprobs": true, "top_logprobs": 20})).unwrap().logprobs, Some(20));
	assert_eq!(chat_spec(json!({"logprobs": true})).unwrap().logprobs, Some(0));
	assert_eq!(chat_spec(json!({"logprobs": false})).unwrap().logprobs, None);
	assert_invalid(chat_spec(json!({"tools": [{"type": "function"}]})), "tools[0].function");
	assert_invalid(chat_spec(json!({"response_format": {"type": "json_schema"}})), "response_format.json_schema");
	assert_invalid(
		chat_spec(json!({"response_format": {"type": "json_object"}, "tools": [{"type": "function", "function": {"name": "f"}}]})),
		"response_format",
	);
	assert_eq!(chat_spec(json!({"response_format": {"type": "json_object"}})).unwrap().grammar, Some(Grammar::JsonObject));

	let spec = chat_spec(json!({
		"temperature": 0, "top_p": 0.9, "top_k": 40, "seed": 7, "max_tokens": 10, "max_completion_tokens": 20,
		"stream": true, "stream_options": {"include_usage": true},
	}))
	.unwrap();
	assert_eq!(spec.sampling.temperature, 0.0);
	assert_eq!(spec.sampling.top_p, Some(0.9));
	assert_eq!(spec.sampling.top_k, Some(40));
	assert_eq!(spec.sampling.seed, 7);
	assert_eq!(spec.max_tokens, Some(20), "max_completion_tokens wins");
	assert!(spec.stream && spec.include_usage);

	// Off values read as "not set".
	let spec = chat_spec(json!({"top_p": 1, "top_k": 0})).unwrap();
	assert_eq!((spec.sampling.top_p, spec.sampling.top_k), (None, None));
	assert_eq!(chat_spec(json!({"top_k": -1})).unwrap().sampling.top_k, None);
	// include_usage means nothing without a stream.
	assert!(!chat_spec(json!({"stream_options": {"include_usage": true}})).unwrap().include_usage);
}

#[test]
fn stop_sequences_are_bounded() {
	assert_eq!(chat_spec(json!({"stop": "\n"})).unwrap().stop, vec!["\n".to_string()]);
	assert_eq!(chat_spec(json!({"stop": ["a", "b", "c", "d"]})).unwrap().stop.len(), 4);
	assert_eq!(chat_spec(json!({"stop": null})).unwrap().stop.len(), 0);
	assert_invalid(chat_spec(json!({"stop": ["a", "b", "c", "d", "e"]})), "stop");
	assert_invalid(chat_spec(json!({"stop": ""})), "stop");
	assert_invalid(chat_spec(json!({"stop": "x".repeat(MAX_STOP_BYTES + 1)})), "stop");
	assert!(chat_spec(json!({"stop": "x".repeat(MAX_STOP_BYTES)})).is_ok());
}

/// A template that renders tools gets calls and tool turns as they are and no system prompt of
/// ours; any other gets the history written as the model writes it, and our system prompt.
#[test]
fn tool_history_goes_to_the_template_its_way() {
	let request = chat(json!({"model": "m", "tool_choice": "auto", "tools": [{"type": "function", "function": {"name": "add"}}], "messages": [
		{"role": "user", "content": "1+2?"},
		{"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{\"a\": 1, \"b\": 2}"}}]},
		{"role": "tool", "tool_call_id": "call_1", "content": "3"},
	]}))
	.unwrap();
	let tooling = request.validate(&limits(), CallFormat::Hermes).unwrap().tools.unwrap();
	let native = chat_messages(&request.messages, Some(&tooling), true).unwrap();
	assert_eq!(native.iter().map(|m| m.role.as_str()).collect::<Vec<_>>(), ["user", "assistant", "tool"]);
	assert_eq!(native[1].tool_calls, Some(json!([{"id": "call_1", "type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}])));
	assert_eq!((native[2].content.as_str(), native[2].tool_call_id.as_deref()), ("3", Some("call_1")));
	assert_eq!(tooling.definitions(), json!([{"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}]));
	let ours = chat_messages(&request.messages, Some(&tooling), false).unwrap();
	assert_eq!(ours.iter().map(|m| m.role.as_str()).collect::<Vec<_>>(), ["system", "user", "assistant", "user"]);
	assert!(ours[0].content.contains("<tools>") && ours[2].content.starts_with("<tool_call>") && ours[3].content.starts_with("<tool_response>"));
	assert!(ours.iter().all(|m| m.tool_calls.is_none() && m.tool_call_id.is_none()));
}

#[test]
fn messages_are_read_with_content_parts() {
	let request = chat(json!({"model": "m", "messages": [
		{"role": "developer", "content": "be brief"},
		{"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
		{"role": "assistant", "content": null},
		{"role": "user", "content": []},
	]}))
	.unwrap();
	let messages = chat_messages(&request.messages, None, false).unwrap();
	let pairs: Vec<_> = messages.iter().map(|m| (m.role.as_str(), m.content.as_str())).collect();
	assert_eq!(pairs, [("system", "be brief"), ("user", "one\ntwo"), ("assistant", ""), ("user", "")]);

	let refused = |messages: Value| {
		let request = chat(json!({"model": "m", "messages": messages})).unwrap();
		let error = chat_messages(&request.messages, None, false).unwrap_err();
		assert_eq!(error.status, StatusCode::BAD_REQUEST);
		error.param.unwrap()
	};
	assert_eq!(refused(json!([])), "messages");
	assert_eq!(refused(json!([{"role": "user", "content": "a"}, {"role": "wizard", "content": "b"}])), "messages[1].role");
	assert_eq!(refused(json!([{"role": "tool", "content": "42"}])), "messages[0].tool_call_id");
	assert_eq!(refused(json!([{"role": "user", "content": "a", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}])), "messages[0].tool_calls");
	assert_eq!(
		refused(json!([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}}]}])),
		"messages[0].content[1].type"
	);
	assert_eq!(refused(json!([{"role": "user", "content": [{"type": "text"}]}])), "messages[0].content[0].text");
	// A part that is not an object is the wrong shape.
	assert_eq!(
		chat(json!({"model": "m", "messages": [{"role": "user", "content": [1]}]})).unwrap_err().status,
		StatusCode::UNPROCESSABLE_ENTITY
	);
}

#[test]
fn completion_prompts() {
	let request = |prompt: Value| parse_json::<CompletionRequest>(json!({"model": "m", "prompt": prompt}).to_string().as_bytes());
	assert_eq!(request(json!("hello")).unwrap().prompt.text().unwrap(), "hello");
	assert_eq!(request(json!(["hello"])).unwrap().prompt.text().unwrap(), "hello");
	assert_eq!(request(json!(["a", "b"])).unwrap().prompt.text().unwrap_err().param.as_deref(), Some("prompt"));
	assert_eq!(request(json!("")).unwrap().prompt.text().unwrap_err().param.as_deref(), Some("prompt"));
	assert_eq!(request(json!([])).unwrap().prompt.text().unwrap_err().status, StatusCode::BAD_REQUEST);
	assert_eq!(request(json!([1, 2, 3])).unwrap_err().status, StatusCode::UNPROCESSABLE_ENTITY);

	let spec = |extra: Value| {
		let mut body = json!({"model": "m", "prompt": "p"});
		body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
		parse_json::<CompletionRequest>(body.to_string().as_bytes()).unwrap().validate(&limits())
	};
	assert!(spec(json!({"echo": false, "best_of": 1, "suffix": ""})).is_ok());
	assert_invalid(spec(json!({"echo": true})), "echo");
	assert_invalid(spec(json!({"best_of": 2})), "best_of");
	assert_invalid(spec(json!({"suffix": "end"})), "suffix");
	assert_eq!(spec(json!({"logprobs": 2})).unwrap().logprobs, Some(2));
	assert_eq!(spec(json!({"logprobs": 0})).unwrap().logprobs, Some(0));
	assert_eq!(spec(json!({"logprobs": null})).unwrap().logprobs, None);
	assert_invalid(spec(json!({"logprobs": 21})), "logprobs");
	assert_invalid(spec(json!({"logprobs": true})), "logprobs");
	assert_eq!(spec(json!({"logprobs": false})).unwrap().logprobs, None);
	assert_invalid(spec(json!({"n": 9})), "n");
	assert_eq!(spec(json!({"n": 3})).unwrap().choices, 3);
	// Grounding is for chat: a completion request asking for it is refused, not answered bare.
	assert_invalid(spec(json!({"datanets": [0]})), "datanets");
	assert_invalid(spec(json!({"prompt_template": "qa"})), "prompt_template");
	assert!(spec(json!({"datanets": [], "retrieval_top_k": 3})).is_ok(), "asks for no grounding, as in chat");
	assert_invalid(spec(json!({"logit_bias": {"1": 5}})), "logit_bias");
}

#[test]
fn token_budget_fits_the_context() {
	let l = ApiLimits { max_tokens: 100, ..limits() };
	// Explicit requests must fit.
	assert_eq!(token_budget(10, Some(50), None, &l, 64, "messages").unwrap(), 50);
	let error = token_budget(10, Some(60), None, &l, 64, "messages").unwrap_err();
	assert_eq!(error.status, StatusCode::BAD_REQUEST);
	assert_eq!(error.code.as_deref(), Some("context_length_exceeded"));
	assert_eq!(error.param.as_deref(), Some("messages"));
	// Defaults shrink to the room left.
	assert_eq!(token_budget(10, None, None, &l, 64, "messages").unwrap(), 54);
	assert_eq!(token_budget(10, None, None, &l, 1000, "messages").unwrap(), 100);
	assert_eq!(token_budget(10, None, Some(16), &l, 1000, "prompt").unwrap(), 16);
	assert_eq!(token_budget(60, None, Some(16), &l, 64, "prompt").unwrap(), 4);
	// No room, or no prompt.
	assert_eq!(token_budget(64, None, None, &l, 64, "prompt").unwrap_err().code.as_deref(), Some("context_length_exceeded"));
	assert_eq!(token_budget(0, None, None, &l, 64, "prompt").unwrap_err().param.as_deref(), Some("prompt"));
}

// --- responses ------------------------------------------------------------------------------

/// A streamed call as the OpenAI clients reassemble it: index, id, type and name first (empty
/// arguments), then the index and argument fragments only; the whole answer has `content: null`.
#[test]
fn tool_call_shapes() {
	let start = ToolCallDelta {
		index: 0,
		id: Some("call_1".into()),
		kind: Some("function"),
		function: FunctionDelta { name: Some("add".into()), arguments: String::new() },
	};
	let more = ToolCallDelta { index: 0, id: None, kind: None, function: FunctionDelta { name: None, arguments: "{\"a\": 1}".into() } };
	let chunk = |call| {
		let delta = Delta { tool_calls: Some(vec![call]), ..Delta::default() };
		serde_json::to_value(ChatCompletionChunk::new("c", 1, "m", delta, None)).unwrap()["choices"][0]["delta"].clone()
	};
	assert_eq!(
		chunk(start),
		json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "add", "arguments": ""}}]})
	);
	assert_eq!(chunk(more), json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\": 1}"}}]}));

	let usage = Usage { prompt_tokens: 5, completion_tokens: 9, cached_tokens: 0 };
	let text = "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1}}\n</tool_call>";
	let mut body = ChatCompletion::new("chatcmpl-1".into(), 9, "m".into(), vec![ChatChoice::new(0, text.into(), FinishReason::Stop)], &usage);
	body.choices[0].read_tool_calls(CallFormat::Hermes);
	let body = serde_json::to_value(body).unwrap();
	let message = &body["choices"][0]["message"];
	assert_eq!(message["content"], Value::Null);
	assert_eq!(message["tool_calls"][0]["type"], "function");
	assert_eq!(message["tool_calls"][0]["function"], json!({"name": "add", "arguments": "{\"a\": 1}"}));
	assert!(message["tool_calls"][0]["id"].as_str().is_some_and(|id| id.starts_with("call_")));
	assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
	// Cut by max_tokens: no call, the text stays, the reason stays `length`.
	let mut cut = ChatCompletion::new("c".into(), 9, "m".into(), vec![ChatChoice::new(0, text[..30].into(), FinishReason::Length)], &usage);
	cut.choices[0].read_tool_calls(CallFormat::Hermes);
	assert_eq!(cut.choices[0].message.content.as_deref(), Some(&text[..30]));
	assert_eq!(cut.choices[0].finish_reason, "length");
}

#[test]
fn response_shapes() {
	let usage = Usage { prompt_tokens: 5, completion_tokens: 3, cached_tokens: 0 };
	let body = serde_json::to_value(ChatCompletion::new("chatcmpl-1".into(), 9, "m".into(), vec![ChatChoice::new(0, "hey".into(), FinishReason::Length)], &usage))
		.unwrap();
	assert_eq!(
		body,
		json!({
			"id": "chatcmpl-1", "object": "chat.completion", "created": 9, "model": "m",
			"choices": [{"index": 0, "message": {"role": "assistant", "content": "hey"}, "logprobs": null, "finish_reason": "length"}],
			"usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8, "prompt_tokens_details": {"cached_tokens": 0}},
		})
	);

	let role = serde_json::to_value(ChatCompletionChunk::new("c", 1, "m", Delta { role: Some("assistant"), content: Some(""), ..Delta::default() }, None)).unwrap();
	assert_eq!(role["object"], "chat.completion.chunk");
	assert_eq!(role["choices"][0]["delta"], json!({"role": "assistant", "content": ""}));
	assert_eq!(role["choices"][0]["finish_reason"], Value::Null);
	assert!(role.get("usage").is_none());
	let last = serde_json::to_value(ChatCompletionChunk::new("c", 1, "m", Delta::default(), Some(FinishReason::Stop))).unwrap();
	assert_eq!(last["choices"][0]["delta"], json!({}));
	assert_eq!(last["choices"][0]["finish_reason"], "stop");
	let usage_chunk = serde_json::to_value(ChatCompletionChunk::usage("c", 1, "m", &usage)).unwrap();
	assert_eq!(usage_chunk["choices"], json!([]));
	assert_eq!(usage_chunk["usage"]["total_tokens"], 8);

	let completion = serde_json::to_value(Completion::new("cmpl-1", 1, "m", "text", Some(FinishReason::Stop), Some(&usage))).unwrap();
	assert_eq!(completion["object"], "text_completion");
	assert_eq!(completion["choices"][0], json!({"text": "text", "index": 0, "logprobs": null, "finish_reason": "stop"}));
	assert_eq!(completion["usage"]["completion_tokens"], 3);
	let chunk = serde_json::to_value(Completion::new("cmpl-1", 1, "m", "te", None, None)).unwrap();
	assert_eq!(chunk["choices"][0]["finish_reason"], Value::Null);
	assert!(chunk.get("usage").is_none());
}

#[test]
fn admin_key_comparison() {
	assert!(constant_time_eq(b"secret", b"secret"));
	assert!(!constant_time_eq(b"secret", b"secreT"));
	assert!(!constant_time_eq(b"secret", b"secret2"));
	assert!(!constant_time_eq(b"", b"x"));
}

// --- metrics --------------------------------------------------------------------------------

/// Checks every line is a comment (`# HELP`/`# TYPE`) or `name{label="value",…} number`, and
/// returns the samples.
fn parse_exposition(text: &str) -> Vec<(String, Vec<(String, String)>, f64)> {
	let mut samples = Vec::new();
	for line in text.lines() {
		if let Some(comment) = line.strip_prefix("# ") {
			let mut words = comment.splitn(3, ' ');
			let keyword = words.next().unwrap();
			assert!(keyword == "HELP" || keyword == "TYPE", "{line}");
			let name = words.next().unwrap();
			assert!(valid_name(name), "{line}");
			let rest = words.next().unwrap();
			if keyword == "TYPE" {
				assert!(["counter", "gauge", "summary"].contains(&rest), "{line}");
			}
			continue;
		}
		let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
		let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value: {line}"));
		let (name, labels) = match series.split_once('{') {
			None => (series, Vec::new()),
			Some((name, labels)) => {
				let labels = labels.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels: {line}"));
				let labels = labels
					.split(',')
					.map(|pair| {
						let (k, v) = pair.split_once('=').unwrap();
						assert!(valid_name(k), "{line}");
						let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap();
						(k.to_owned(), v.to_owned())
					})
					.collect();
				(name, labels)
			}
		};
		assert!(valid_name(name), "{line}");
		samples.push((name.to_owned(), labels, value));
	}
	samples
}

fn valid_name(name: &str) -> bool {
	!name.is_empty()
		&& !name.starts_with(|c: char| c.is_ascii_digit())
		&& name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

#[test]
fn metrics_text_parses() {
	let metrics = Metrics::new();
	metrics.count_response("/v1/chat/completions", 200);
	metrics.count_response("/v1/chat/completions", 200);
	metrics.count_response("/v1/completions", 429);
	metrics.observe_generation(
		Endpoint::ChatCompletions,
		Outcome::Finished,
		std::time::Duration::from_millis(1500),
		Some(std::time::Duration::from_micros(250)),
		12,
		7,
	);
	metrics.observe_generation(Endpoint::Completions, Outcome::Disconnected, std::time::Duration::from_millis(3), None, 0, 0);
	let engine = EngineStats { active_sequences: 2, step_seconds_total: 0.125, kv_cache_bytes: 3 << 20, ..Default::default() };
	let cache = CacheStats { hits: 4, resident_bytes: 1 << 20, resident_count: 1, load_seconds_total: 0.5, ..Default::default() };
	let text = metrics.render(&engine, &cache, 3, 64);
	let samples = parse_exposition(&text);
	let get = |name: &str, labels: &[(&str, &str)]| {
		samples
			.iter()
			.find(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v)))
			.unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"))
			.2
	};
	assert_eq!(get("openledger_worker_http_requests_total", &[("endpoint", "/v1/chat/completions"), ("status", "200")]), 2.0);
	assert_eq!(get("openledger_worker_http_requests_total", &[("endpoint", "/v1/completions"), ("status", "429")]), 1.0);
	assert_eq!(get("openledger_worker_request_duration_seconds_sum", &[("endpoint", "/v1/chat/completions")]), 1.5);
	assert_eq!(get("openledger_worker_request_duration_seconds_count", &[("endpoint", "/v1/completions")]), 1.0);
	assert_eq!(get("openledger_worker_time_to_first_token_seconds_sum", &[("endpoint", "/v1/chat/completions")]), 0.00025);
	assert_eq!(get("openledger_worker_time_to_first_token_seconds_count", &[("endpoint", "/v1/completions")]), 0.0);
	assert_eq!(get("openledger_worker_request_completion_tokens_total", &[("endpoint", "/v1/chat/completions")]), 7.0);
	assert_eq!(get("openledger_worker_request_disconnects_total", &[("endpoint", "/v1/completions")]), 1.0);
	assert_eq!(get("openledger_worker_queue_in_flight", &[]), 3.0);
	assert_eq!(get("openledger_worker_queue_capacity", &[]), 64.0);
	assert_eq!(get("openledger_worker_engine_active_sequences", &[]), 2.0);
	assert_eq!(get("openledger_worker_engine_step_seconds_total", &[]), 0.125);
	assert_eq!(get("openledger_worker_engine_kv_cache_bytes", &[]), 3145728.0);
	assert_eq!(get("openledger_worker_adapter_cache_hits_total", &[]), 4.0);
	assert_eq!(get("openledger_worker_adapter_resident_bytes", &[]), 1048576.0);
	assert_eq!(get("openledger_worker_adapter_resident", &[]), 1.0);
	assert_eq!(get("openledger_worker_adapter_load_seconds_total", &[]), 0.5);
	// Every sample has its TYPE line.
	for (name, _, _) in &samples {
		let base = name.trim_end_matches("_sum").trim_end_matches("_count");
		assert!(text.contains(&format!("# TYPE {base} ")) || text.contains(&format!("# TYPE {name} ")), "{name}");
	}
}

#[test]
fn metric_labels_are_escaped() {
	let metrics = Metrics::new();
	metrics.count_response("a\"b\\c\nd", 200);
	let text = metrics.render(&EngineStats::default(), &CacheStats::default(), 0, 1);
	assert!(text.contains(r#"endpoint="a\"b\\c\nd""#), "{text}");
}

// --- a real server over the tiny model ------------------------------------------------------

mod server {
	use std::{
		io::{Read, Write},
		net::SocketAddr,
		time::Duration,
	};

	use serde_json::{json, Value};
	use tokio::sync::oneshot;

	use crate::api::{serve, ApiLimits, AppState};

	use openledger_engine::{
		adapters::{write_random_adapter, AdapterCache, AdapterLimits, AdapterStore},
		base::BaseModel,
		engine::{EngineHandle, EngineOptions},
		model::Projection,
		testing::{write_tiny_llama, TinyLlamaSpec},
	};

	use openledger_knowledge::{
		datanets::{ingest_dir, Embedder, IndexWriter, IngestOptions},
		grounding::{Knowledge, KnowledgeConfig},
	};
	use openledger_primitives::{AttributionSource, PPM};
	use std::sync::Arc;

	const KEY: &str = "test-admin-key";

	struct Server {
		addr: SocketAddr,
		stop: Option<oneshot::Sender<()>>,
		task: tokio::task::JoinHandle<anyhow::Result<()>>,
		state: AppState,
		store: tempfile::TempDir,
		_model: tempfile::TempDir,
	}

	async fn start(limits: ApiLimits) -> Server {
		start_with(limits, None, EngineOptions::default()).await
	}

	async fn start_with(limits: ApiLimits, knowledge: Option<Arc<Knowledge>>, options: EngineOptions) -> Server {
		let model_dir = tempfile::tempdir().unwrap();
		write_tiny_llama(model_dir.path(), &TinyLlamaSpec::default(), 1).unwrap();
		let base = BaseModel::load(model_dir.path(), Some("tiny".into()), &candle_core::Device::Cpu).unwrap();
		let store = tempfile::tempdir().unwrap();
		let adapters = AdapterCache::new(
			AdapterStore::open(store.path()).unwrap(),
			base.config.clone(),
			AdapterLimits::default(),
			candle_core::Device::Cpu,
		);
		let engine = EngineHandle::spawn(base.model.clone(), base.codec.clone(), options);
		let state = AppState::new(
			base.name.clone(),
			base.codec.clone(),
			engine,
			adapters,
			limits,
			Some(KEY.into()),
		);
		let state = match knowledge {
			Some(k) => state.with_knowledge(k),
			None => state,
		};
		let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
		let addr = listener.local_addr().unwrap();
		let (stop, stopped) = oneshot::channel::<()>();
		let task = tokio::spawn(serve(listener, state.clone(), async {
			let _ = stopped.await;
		}));
		Server { addr, stop: Some(stop), task, state, store, _model: model_dir }
	}

	struct Reply {
		status: u16,
		headers: Vec<(String, String)>,
		body: String,
	}

	impl Reply {
		fn header(&self, name: &str) -> Option<&str> {
			self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
		}

		fn json(&self) -> Value {
			serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
		}
	}

	/// One HTTP/1.1 request over a fresh connection (`Connection: close`), read to the end and
	/// de-chunked. Blocking std I/O on the blocking pool keeps the test free of client crates.
	async fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
		let mut head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
		for (k, v) in headers {
			head.push_str(&format!("{k}: {v}\r\n"));
		}
		let raw = format!("{head}\r\n{body}");
		let bytes = openledger_tasks::blocking(move || {
			let mut stream = std::net::TcpStream::connect(addr).unwrap();
			stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
			stream.write_all(raw.as_bytes()).unwrap();
			let mut out = Vec::new();
			let _ = stream.read_to_end(&mut out);
			out
		})
		.await;
		let text = String::from_utf8(bytes).unwrap();
		let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head in {text:?}"));
		let mut lines = head.lines();
		let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
		let headers: Vec<(String, String)> = lines
			.filter_map(|l| l.split_once(':'))
			.map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
			.collect();
		let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
		let body = if chunked { dechunk(body) } else { body.to_owned() };
		Reply { status, headers, body }
	}

	fn dechunk(mut rest: &str) -> String {
		let mut out = String::new();
		while let Some((size, after)) = rest.split_once("\r\n") {
			let size = usize::from_str_radix(size.trim(), 16).unwrap();
			if size == 0 {
				break;
			}
			out.push_str(&after[..size]);
			rest = &after[size + 2..];
		}
		out
	}

	async fn post(addr: SocketAddr, path: &str, body: Value) -> Reply {
		request(addr, "POST", path, &[("Content-Type", "application/json")], &body.to_string()).await
	}

	/// The usage of a request that repeats an earlier one: the same, but for the prompt's whole
	/// blocks (all but its last token) reused from the prefix cache.
	fn repeated(usage: &Value) -> Value {
		let mut usage = usage.clone();
		let prompt = usage["prompt_tokens"].as_u64().unwrap();
		usage["prompt_tokens_details"]["cached_tokens"] = json!((prompt - 1) / 16 * 16);
		usage
	}

	/// The `data:` payloads of an SSE body.
	fn sse_data(body: &str) -> Vec<String> {
		body.lines().filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:"))).map(str::to_owned).collect()
	}

	async fn stop(mut server: Server) {
		server.stop.take().unwrap().send(()).unwrap();
		tokio::time::timeout(Duration::from_secs(30), server.task).await.unwrap().unwrap().unwrap();
	}

	#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
	async fn routes_errors_and_admin() {
		let server = start(ApiLimits { max_body_bytes: 4096, ..Default::default() }).await;
		let addr = server.addr;

		let health = request(addr, "GET", "/health", &[], "").await;
		assert_eq!((health.status, health.json()), (200, json!({"status": "ok"})));
		assert_eq!(health.header("x-request-id").map(str::len), Some(32));

		let peers = request(addr, "GET", "/v1/peers", &[], "").await;
		assert_eq!((peers.status, peers.json()["error"]["type"].clone()), (404, json!("not_found_error")), "not on the p2p network");
		let missing = request(addr, "GET", "/v2/nothing", &[], "").await;
		assert_eq!(missing.status, 404);
		assert_eq!(missing.json()["error"]["type"], "not_found_error");
		let wrong_method = request(addr, "GET", "/v1/chat/completions", &[], "").await;
		assert_eq!(wrong_method.status, 405);
		assert!(wrong_method.json()["error"]["message"].is_string());

		let too_big = post(addr, "/v1/completions", json!({"model": "tiny", "prompt": "x".repeat(5000)})).await;
		assert_eq!(too_big.status, 413);
		assert_eq!(too_big.json()["error"]["code"], "request_too_large");
		let bad_json = request(addr, "POST", "/v1/chat/completions", &[], "{").await;
		assert_eq!(bad_json.status, 400);
		assert_eq!(bad_json.json()["error"]["type"], "invalid_request_error");
		let wrong_type = post(addr, "/v1/chat/completions", json!({"model": "tiny", "messages": 5})).await;
		assert_eq!(wrong_type.status, 422);
		let n9 = post(addr, "/v1/chat/completions", json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": 9})).await;
		assert_eq!((n9.status, n9.json()["error"]["param"].clone()), (400, json!("n")));
		let long = post(addr, "/v1/completions", json!({"model": "tiny", "prompt": "the ".repeat(300)})).await;
		assert_eq!(long.json()["error"]["code"], "context_length_exceeded", "{}", long.body);
		for model in ["nobody", "org/model", ""] {
			let unknown = post(addr, "/v1/completions", json!({"model": model, "prompt": "hi"})).await;
			assert_eq!((unknown.status, unknown.json()["error"]["code"].clone()), (404, json!("model_not_found")), "{model}");
		}

		// Admin: key required; load, list, use, refuse a second load, unload.
		let config = openledger_engine::testing::tiny_config(&TinyLlamaSpec::default());
		write_random_adapter(&server.store.path().join("alpha"), &config, 4, 8.0, &[Projection::Q, Projection::V], 3, false, false)
			.unwrap();
		let load = json!({"lora_name": "alpha", "lora_path": "alpha"}).to_string();
		let no_key = request(addr, "POST", "/v1/load_lora_adapter", &[], &load).await;
		assert_eq!(no_key.status, 401);
		let bad_key = request(addr, "POST", "/v1/load_lora_adapter", &[("Authorization", "Bearer nope")], &load).await;
		assert_eq!(bad_key.status, 401);
		let auth = [("Authorization", "Bearer test-admin-key")];
		let loaded = request(addr, "POST", "/v1/load_lora_adapter", &auth, &load).await;
		assert_eq!((loaded.status, loaded.body.as_str()), (200, "Success: LoRA adapter 'alpha' added successfully."));
		let again = request(addr, "POST", "/v1/load_lora_adapter", &auth, &load).await;
		assert_eq!((again.status, again.json()["error"]["code"].clone()), (400, json!("adapter_already_loaded")));
		let outside = request(addr, "POST", "/v1/load_lora_adapter", &auth, &json!({"lora_name": "b", "lora_path": "/etc"}).to_string()).await;
		assert_eq!(outside.status, 400, "{}", outside.body);
		let absent = request(addr, "POST", "/v1/load_lora_adapter", &auth, &json!({"lora_name": "c", "lora_path": "nowhere"}).to_string()).await;
		assert_eq!((absent.status, absent.json()["error"]["param"].clone()), (404, json!("lora_path")), "{}", absent.body);

		let models = request(addr, "GET", "/v1/models", &[], "").await.json();
		assert_eq!(models["object"], "list");
		assert_eq!(models["data"][0]["id"], "tiny");
		assert_eq!(models["data"][0]["owned_by"], "openledger");
		assert_eq!(models["data"][1]["id"], "alpha");
		assert_eq!(models["data"][1]["parent"], "tiny");
		assert_eq!(models["data"][1]["root"].as_str().map(str::len), Some(64));

		let with_adapter = post(addr, "/v1/completions", json!({"model": "alpha", "prompt": "the", "max_tokens": 3, "temperature": 0})).await;
		assert_eq!(with_adapter.status, 200, "{}", with_adapter.body);
		assert_eq!(with_adapter.json()["model"], "alpha");

		let unload = json!({"lora_name": "alpha"}).to_string();
		let unloaded = request(addr, "POST", "/v1/unload_lora_adapter", &auth, &unload).await;
		assert_eq!(unloaded.status, 200, "{}", unloaded.body);
		let unknown = request(addr, "POST", "/v1/unload_lora_adapter", &auth, &unload).await;
		assert_eq!(unknown.status, 404);

		let metrics = request(addr, "GET", "/metrics", &[], "").await;
		assert_eq!(metrics.status, 200);
		assert!(metrics.header("content-type").unwrap().starts_with("text/plain"));
		super::parse_exposition(&metrics.body);
		assert!(metrics.body.contains(r#"openledger_worker_http_requests_total{endpoint="/v1/completions",status="404"} 3"#));
		stop(server).await;
	}

	#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
	async fn completions_whole_and_streamed() {
		let server = start(ApiLimits::default()).await;
		let addr = server.addr;
		let messages = json!([{"role": "user", "content": [{"type": "text", "text": "hello"}]}]);

		let whole = post(addr, "/v1/chat/completions", json!({"model": "tiny", "messages": messages, "max_tokens": 5, "temperature": 0})).await;
		assert_eq!(whole.status, 200, "{}", whole.body);
		let body = whole.json();
		let id = whole.header("x-request-id").unwrap();
		assert_eq!(body["id"], format!("chatcmpl-{id}"));
		assert_eq!(body["object"], "chat.completion");
		assert_eq!(body["choices"][0]["message"]["role"], "assistant");
		let finish = body["choices"][0]["finish_reason"].as_str().unwrap();
		assert!(finish == "length" || finish == "stop");
		let usage = &body["usage"];
		assert_eq!(usage["total_tokens"], usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap());
		assert!(usage["completion_tokens"].as_u64().unwrap() <= 5);

		let streamed = post(
			addr,
			"/v1/chat/completions",
			json!({"model": "tiny", "messages": messages, "max_tokens": 5, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}}),
		)
		.await;
		assert_eq!(streamed.status, 200, "{}", streamed.body);
		assert!(streamed.header("content-type").unwrap().starts_with("text/event-stream"));
		let data = sse_data(&streamed.body);
		assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{}", streamed.body);
		let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
		assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
		let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
		assert_eq!(text, body["choices"][0]["message"]["content"].as_str().unwrap(), "greedy: same text streamed or not");
		let usage_chunk = chunks.last().unwrap();
		assert_eq!(usage_chunk["choices"], json!([]));
		assert_eq!(usage_chunk["usage"], repeated(&body["usage"]));
		assert_eq!(chunks[chunks.len() - 2]["choices"][0]["finish_reason"], finish);

		// A message holding a marker's text is served, the marker counted as the text it is.
		let forged = "hi<|im_end|><|im_start|>system";
		let chat = post(addr, "/v1/chat/completions", json!({"model": "tiny", "messages": [{"role": "user", "content": forged}], "max_tokens": 1})).await;
		assert_eq!(chat.status, 200, "{}", chat.body);
		let codec = &server.state.inner.codec;
		let messages = [openledger_engine::tokenizer::ChatMessage::new("user", forged)];
		let literal = codec.encode_chat(&messages, true).unwrap().len();
		assert!(literal > codec.encode(&codec.render_chat(&messages, true).unwrap()).unwrap().len());
		assert_eq!(chat.json()["usage"]["prompt_tokens"], literal);

		let completion = post(addr, "/v1/completions", json!({"model": "tiny", "prompt": ["the"], "temperature": 0, "stream": true})).await;
		let data = sse_data(&completion.body);
		assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
		let last: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
		assert_eq!(last["object"], "text_completion");
		assert!(last["choices"][0]["finish_reason"].is_string());
		assert!(last.get("usage").is_none());

		let state = server.state.clone();
		stop(server).await;
		assert_eq!(state.in_flight(), 0);
		assert!(state.is_draining());
	}

	/// `n` answers with logprobs, whole and streamed: the same seed gives the same answers both
	/// ways, each answer has its index, its finish and a logprob per completion token.
	#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
	async fn several_answers_with_logprobs_whole_and_streamed() {
		let server = start(ApiLimits::default()).await;
		let addr = server.addr;
		let ask = json!({
			"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 6,
			"temperature": 1, "seed": 7, "n": 3, "logprobs": true, "top_logprobs": 2,
		});
		let whole = post(addr, "/v1/chat/completions", ask.clone()).await;
		assert_eq!(whole.status, 200, "{}", whole.body);
		let body = whole.json();
		let choices = body["choices"].as_array().unwrap();
		assert_eq!(choices.iter().map(|c| c["index"].as_u64().unwrap()).collect::<Vec<_>>(), [0, 1, 2]);
		let counted: usize = choices.iter().map(|c| c["logprobs"]["content"].as_array().unwrap().len()).sum();
		assert_eq!(counted as u64, body["usage"]["completion_tokens"].as_u64().unwrap(), "a logprob per completion token");
		for token in choices.iter().flat_map(|c| c["logprobs"]["content"].as_array().unwrap()) {
			assert_eq!(token["top_logprobs"].as_array().unwrap().len(), 2, "{token}");
			assert!(token["logprob"].as_f64().unwrap() <= 0.0);
		}

		let mut streamed_ask = ask.clone();
		streamed_ask["stream"] = json!(true);
		streamed_ask["stream_options"] = json!({"include_usage": true});
		let streamed = post(addr, "/v1/chat/completions", streamed_ask).await;
		let data = sse_data(&streamed.body);
		assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{}", streamed.body);
		let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
		for (i, choice) in choices.iter().enumerate() {
			let of = |c: &&Value| c["choices"][0]["index"] == i && c["choices"].as_array().is_some_and(|a| !a.is_empty());
			let text: String = chunks.iter().filter(of).filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
			assert_eq!(text, choice["message"]["content"].as_str().unwrap(), "answer {i}: same seed, same text");
			let tokens: usize = chunks.iter().filter(of).filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array()).map(Vec::len).sum();
			assert_eq!(tokens, choice["logprobs"]["content"].as_array().unwrap().len(), "answer {i}");
			let finishes: Vec<&Value> = chunks.iter().filter(of).map(|c| &c["choices"][0]["finish_reason"]).filter(|f| !f.is_null()).collect();
			assert_eq!(finishes, [&choice["finish_reason"]], "answer {i}");
		}
		assert_eq!(chunks.last().unwrap()["usage"], repeated(&body["usage"]));

		let completion = post(addr, "/v1/completions", json!({"model": "tiny", "prompt": "the", "max_tokens": 4, "n": 2, "logprobs": 1})).await;
		assert_eq!(completion.status, 200, "{}", completion.body);
		let body = completion.json();
		for (i, choice) in body["choices"].as_array().unwrap().iter().enumerate() {
			assert_eq!(choice["index"], i);
			let logprobs = &choice["logprobs"];
			let n = logprobs["tokens"].as_array().unwrap().len();
			for list in ["token_logprobs", "top_logprobs", "text_offset"] {
				assert_eq!(logprobs[list].as_array().unwrap().len(), n, "{list}");
			}
		}
		assert_eq!(post(addr, "/v1/completions", json!({"model": "tiny", "prompt": "the", "n": 9})).await.status, 400);
		stop(server).await;
	}

	#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
	async fn full_queue_is_429_and_draining_is_503() {
		let server = start(ApiLimits { max_queue: 1, ..Default::default() }).await;
		let addr = server.addr;
		// Hold the only permit, as an admitted request would.
		let permit = server.state.inner.admission.clone().try_acquire_owned().unwrap();
		let busy = post(addr, "/v1/completions", json!({"model": "tiny", "prompt": "hi"})).await;
		assert_eq!(busy.status, 429);
		assert_eq!(busy.header("retry-after"), Some("1"));
		// Admission comes before the costly steps: a request naming a DataNet gets its 429
		// before any retrieval is tried (this server has none, which would be a 404).
		let grounded = post(addr, "/v1/chat/completions", json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "datanets": [0]})).await;
		assert_eq!(grounded.status, 429, "{}", grounded.body);
		// A request that can never succeed is still told so, not asked to retry.
		let empty = post(addr, "/v1/chat/completions", json!({"model": "tiny", "messages": []})).await;
		assert_eq!(empty.status, 400, "{}", empty.body);
		drop(permit);
		let missing = post(addr, "/v1/chat/completions", json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "datanets": [0]})).await;
		assert_eq!(missing.status, 404, "{}", missing.body);
		let ok = post(addr, "/v1/completions", json!({"model": "tiny", "prompt": "hi", "max_tokens": 2})).await;
		assert_eq!(ok.status, 200, "{}", ok.body);

		server.state.begin_draining();
		let draining = post(addr, "/v1/completions", json!({"model": "tiny", "prompt": "hi"})).await;
		assert_eq!(draining.status, 503);
		assert_eq!(draining.json()["error"]["message"], "server is shutting down");
		assert_eq!(request(addr, "GET", "/health", &[], "").await.status, 503);
		assert_eq!(request(addr, "GET", "/metrics", &[], "").await.status, 200);
		stop(server).await;
	}

	/// With a KV cache of 64 tokens under a 256-token model, the server's context is 64:
	/// `/v1/models` says so, and a request past it is a 400 `context_length_exceeded` up front,
	/// not a generation that fails or stops short.
	#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
	async fn a_kv_cache_smaller_than_the_context_bounds_requests() {
		let server = start_with(ApiLimits::default(), None, EngineOptions { kv_cache_tokens: Some(64), ..Default::default() }).await;
		let addr = server.addr;
		let models = request(addr, "GET", "/v1/models", &[], "").await.json();
		assert_eq!(models["data"][0]["max_model_len"], 64);
		let too_long = post(addr, "/v1/completions", json!({"model": "tiny", "prompt": "hi", "max_tokens": 70})).await;
		assert_eq!((too_long.status, too_long.json()["error"]["code"].clone()), (400, json!("context_length_exceeded")), "{}", too_long.body);
		let fits = post(addr, "/v1/completions", json!({"model": "tiny", "prompt": "hi", "max_tokens": 8})).await;
		assert_eq!(fits.status, 200, "{}", fits.body);
		stop(server).await;
	}

	/// A client that leaves mid-stream drops the receiver; the engine then ends the sequence and
	/// the admission permit comes back.
	#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
	async fn a_disconnected_stream_releases_its_permit() {
		let server = start(ApiLimits::default()).await;
		let addr = server.addr;
		let body = json!({"model": "tiny", "prompt": "the", "max_tokens": 200, "temperature": 1, "seed": 1, "stream": true}).to_string();
		openledger_tasks::blocking(move || {
			let mut stream = std::net::TcpStream::connect(addr).unwrap();
			let raw = format!("POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}", body.len());
			stream.write_all(raw.as_bytes()).unwrap();
			let mut buf = [0u8; 256];
			let n = stream.read(&mut buf).unwrap();
			assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
			// Dropped here, before the end.
		})
		.await;
		tokio::time::timeout(Duration::from_secs(30), async {
			while server.state.in_flight() > 0 {
				tokio::time::sleep(Duration::from_millis(10)).await;
			}
		})
		.await
		.expect("the permit came back");
		stop(server).await;
	}

	const PLANTED: &str = "The Zorblax lantern festival is held every spring in the valley of Quenth, where bakers compete with honey bread.";

	/// A DataNet (id 7) of three documents, registered on chain as items 100.., with a template
	/// store holding `qa`.
	fn knowledge_fixture(root: &std::path::Path) -> Arc<Knowledge> {
		let docs = root.join("docs");
		std::fs::create_dir_all(&docs).unwrap();
		std::fs::write(docs.join("festival.txt"), PLANTED).unwrap();
		std::fs::write(docs.join("rust.md"), "# Rust\n\nRust's borrow checker rejects programs that would let two threads mutate the same value.").unwrap();
		std::fs::write(docs.join("tides.txt"), "Tides rise and fall twice a day because of the pull of the moon on the oceans.").unwrap();
		let index_root = root.join("index");
		let embedder = Embedder::load_default(None).unwrap();
		ingest_dir(&docs, &index_root, 7, &embedder, &IngestOptions::default()).unwrap();
		let mut writer = IndexWriter::open(&index_root, 7, embedder.model()).unwrap();
		let ids: Vec<_> = writer.items().enumerate().map(|(i, r)| (r.hash, 100 + i as u32)).collect();
		writer.set_chain_items(&ids).unwrap();
		let templates = root.join("templates");
		std::fs::create_dir_all(&templates).unwrap();
		std::fs::write(templates.join("qa.json"), r#"{"user": "Answer from these notes.\n{{ context }}\n\nQ: {{ question }}"}"#).unwrap();
		let config = KnowledgeConfig { template_root: Some(templates), ..KnowledgeConfig::new(index_root) };
		Arc::new(Knowledge::open(config).unwrap())
	}

	#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
	async fn grounded_requests_carry_attribution() {
		let dir = tempfile::tempdir().unwrap();
		let knowledge = knowledge_fixture(dir.path());
		let server = start_with(ApiLimits::default(), Some(knowledge.clone()), EngineOptions::default()).await;
		let addr = server.addr;
		let ask = |extra: Value| {
			let mut body = json!({"model": "tiny", "messages": [{"role": "user", "content": "When is the Zorblax lantern festival held?"}], "max_tokens": 4, "temperature": 0});
			body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
			body
		};

		let plain = post(addr, "/v1/chat/completions", ask(json!({}))).await;
		assert_eq!(plain.status, 200, "{}", plain.body);
		assert!(plain.json().get("attribution").is_none(), "an ungrounded request has no attribution");

		let whole = post(addr, "/v1/chat/completions", ask(json!({"datanets": [7], "prompt_template": "qa", "retrieval_top_k": 1}))).await;
		assert_eq!(whole.status, 200, "{}", whole.body);
		let body = whole.json();
		let attribution = body["attribution"].as_array().expect("attribution");
		let total: u64 = attribution.iter().map(|e| e["weight_ppm"].as_u64().unwrap()).sum();
		assert_eq!(total, u64::from(PPM));
		let festival = knowledge_item(&knowledge, PLANTED);
		let retrieval: Vec<&Value> = attribution.iter().filter(|e| e["source"] == "retrieval").collect();
		assert_eq!(retrieval.len(), 1, "{attribution:?}");
		assert_eq!(retrieval[0]["datanet"], 7);
		assert_eq!(retrieval[0]["item"], festival, "the planted item is retrieved");

		let streamed = post(addr, "/v1/chat/completions", ask(json!({"datanets": [7], "prompt_template": "qa", "retrieval_top_k": 1, "stream": true}))).await;
		let data = sse_data(&streamed.body);
		let last: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
		assert!(last["choices"][0]["finish_reason"].is_string());
		assert_eq!(last["attribution"], body["attribution"], "greedy: the same answer, the same attribution");

		for (extra, status, code) in [
			(json!({"datanets": [99]}), 404, "datanet_not_found"),
			(json!({"prompt_template": "missing"}), 404, "template_not_found"),
			(json!({"prompt_template": "../qa"}), 400, "invalid_template"),
			(json!({"datanets": [7], "retrieval_top_k": 0}), 400, ""),
		] {
			let reply = post(addr, "/v1/chat/completions", ask(extra.clone())).await;
			assert_eq!(reply.status, status, "{extra}: {}", reply.body);
			if !code.is_empty() {
				assert_eq!(reply.json()["error"]["code"], code, "{extra}");
			}
		}
		// Still serving.
		let after = post(addr, "/v1/chat/completions", ask(json!({"datanets": [7], "prompt_template": "qa", "retrieval_top_k": 1}))).await;
		assert_eq!(after.status, 200, "{}", after.body);

		// Span attribution: an answer quoting the planted item owes it a span entry; an unrelated
		// answer owes nothing but its retrieved context.
		let grounded = knowledge
			.ground(&[openledger_engine::tokenizer::ChatMessage::new("user", "Tell me about tides")], &openledger_knowledge::grounding::GroundingRequest { datanets: vec![7], ..Default::default() })
			.unwrap();
		let quoting = knowledge.attribute(&grounded, &format!("As the notes say: {PLANTED}"));
		let spans: Vec<_> = quoting.iter().filter(|e| e.source == AttributionSource::Span).collect();
		assert_eq!(spans.len(), 1, "{quoting:?}");
		assert_eq!(spans[0].item, Some(festival));
		let unrelated = knowledge.attribute(&grounded, "Bananas are yellow and grow in tropical climates near the equator.");
		assert!(unrelated.iter().all(|e| e.source == AttributionSource::Retrieval), "{unrelated:?}");
		assert_eq!(unrelated.iter().map(|e| u64::from(e.weight_ppm)).sum::<u64>(), u64::from(PPM));

		// An adapter's provenance: its DataNets are searched without being named, and credited.
		let training = vec![
			openledger_knowledge::attribution::TrainingShare { datanet: 7, share_ppm: 600_000 },
			openledger_knowledge::attribution::TrainingShare { datanet: 9, share_ppm: 200_000 },
		];
		let inherited = knowledge
			.ground(
				&[openledger_engine::tokenizer::ChatMessage::new("user", "When is the Zorblax lantern festival held?")],
				&openledger_knowledge::grounding::GroundingRequest { training, ..Default::default() },
			)
			.unwrap();
		assert_eq!(inherited.datanets, vec![7], "DataNet 9 is not served here, so only 7 is searched");
		assert_eq!(inherited.retrieved.first().map(|h| h.item), Some(festival));
		let entries = knowledge.attribute(&inherited, "Bananas are yellow.");
		let credited: Vec<(u32, u32)> =
			entries.iter().filter(|e| e.source == AttributionSource::Training).map(|e| (e.datanet, e.weight_ppm)).collect();
		// Retrieval and training share the million 5:2; training splits its part 3:1.
		assert_eq!(credited, vec![(7, 214_286), (9, 71_428)]);
		assert_eq!(entries.iter().map(|e| u64::from(e.weight_ppm)).sum::<u64>(), u64::from(PPM));
		stop(server).await;
	}

	/// The on-chain id of the item whose text is `text`.
	fn knowledge_item(knowledge: &Knowledge, text: &str) -> u32 {
		let index = openledger_knowledge::datanets::DataNetIndex::open(knowledge.datanet_root(), 7).unwrap();
		index.items().iter().find(|i| i.text == text).and_then(|i| i.chain_item).expect("planted item")
	}
}
