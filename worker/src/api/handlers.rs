//! The generation handlers. Chat and completions take one way through a request: parse and
//! validate (`openai.rs`), admit, authorise the payer, lease the adapter, ground the messages in
//! DataNets (chat), tokenize, charge, generate, and finish the answer whole or as a stream
//! (`finish.rs`, `stream.rs`).

use axum::{
	body::Bytes,
	extract::{rejection::BytesRejection, Extension, State},
	http::{header, HeaderMap, StatusCode},
	response::{IntoResponse, Response},
	Json,
};
use std::sync::Arc;

use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::{
	agent,
	error::ApiError,
	finish::{engine_vanished, generation_failed, joined, training_shares, Attributor, Closing},
	logprobs,
	openai::{
		self, parse_json, ChatChoice, ChatCompletion, ChatCompletionRequest, Completion, CompletionChoice,
		CompletionRequest, GenerationSpec, COMPLETIONS_DEFAULT_MAX_TOKENS,
	},
	request_log::RequestLog,
	stream,
	tools::Tooling,
	unix_now, AppState, RequestId,
};
use crate::metrics::Endpoint;
use openledger_engine::{
	adapters::{AdapterError, AdapterLease},
	engine::{FinishReason, GenerationEvent, GenerationRequest, TokenLogprob, Usage},
	grammar::{Constraint, Grammar},
	tokenizer::{ChatError, ChatMessage, Vocabulary},
};
use openledger_knowledge::{
	attribution::TrainingShare,
	grounding::GroundingRequest,
	templates::DEFAULT_TEMPLATE_ID,
};
use openledger_ledger::{
	authorise::Authorisation,
	charge::{Charge, ToolBudget},
	keys::hex_hash,
	service::LedgerError,
	REQUEST_HASH_HEADER, VOUCHER_HEADER,
};
use openledger_primitives::ContentHash;
use openledger_tasks::blocking;

/// What a request asks for, parsed and validated.
struct Asked {
	model: String,
	spec: GenerationSpec,
	input: Input,
}

enum Input {
	Chat { request: Box<ChatCompletionRequest>, messages: Vec<ChatMessage> },
	Prompt(String),
}

/// A request admitted, authorised, tokenized and charged, ready for the engine.
struct Prepared {
	model: String,
	prompt_tokens: Vec<u32>,
	max_tokens: usize,
	spec: GenerationSpec,
	adapter: Option<AdapterLease>,
	/// The compiled `response_format`, when the output is constrained.
	constraint: Option<Constraint>,
	/// The token bytes logprobs are shown with, when they are asked for.
	vocabulary: Option<Arc<Vocabulary>>,
	closing: Closing,
	/// The request's place among those admitted; it goes with the request to the engine.
	permit: OwnedSemaphorePermit,
}

pub(super) async fn chat_completions(
	State(state): State<AppState>,
	Extension(id): Extension<RequestId>,
	headers: HeaderMap,
	body: Result<Bytes, BytesRejection>,
) -> Response {
	let mut log = RequestLog::new(&state, Endpoint::ChatCompletions, id);
	let prepared = async {
		let bytes = body_bytes(&state, body)?;
		let request: ChatCompletionRequest = parse_json(&bytes)?;
		log.model = openledger_engine::printable(&request.model);
		let spec = request.validate(state.limits(), state.inner.codec.call_format())?;
		if request.wants_mcp_tools() {
			return Err(Deferred::ToolLoop(Box::new((request, spec, bytes))));
		}
		let native_tools = state.inner.codec.native_call_format().is_some();
		let messages = openai::chat_messages(&request.messages, spec.tools.as_ref(), native_tools)?;
		let asked = Asked { model: request.model.clone(), spec, input: Input::Chat { request: Box::new(request), messages } };
		Ok(prepare(&state, &log, &headers, &bytes, asked).await?)
	}
	.await;
	match prepared {
		Ok(prepared) => generate(state, log, prepared).await,
		Err(Deferred::ToolLoop(asked)) => {
			let (request, spec, bytes) = *asked;
			agent::chat(state, log, &headers, &bytes, request, spec).await
		},
		Err(Deferred::Refused(e)) => log.reject(e),
	}
}

/// A chat request not served by the one-generation way: refused, or one for the MCP tool loop.
enum Deferred {
	Refused(ApiError),
	/// With the body, which a voucher signs.
	ToolLoop(Box<(ChatCompletionRequest, GenerationSpec, Bytes)>),
}

impl From<ApiError> for Deferred {
	fn from(e: ApiError) -> Self {
		Self::Refused(e)
	}
}

pub(super) async fn completions(
	State(state): State<AppState>,
	Extension(id): Extension<RequestId>,
	headers: HeaderMap,
	body: Result<Bytes, BytesRejection>,
) -> Response {
	let mut log = RequestLog::new(&state, Endpoint::Completions, id);
	let prepared = async {
		let bytes = body_bytes(&state, body)?;
		let request: CompletionRequest = parse_json(&bytes)?;
		log.model = openledger_engine::printable(&request.model);
		let spec = request.validate(state.limits())?;
		let prompt = request.prompt.text()?.to_owned();
		let asked = Asked { model: request.model, spec, input: Input::Prompt(prompt) };
		prepare(&state, &log, &headers, &bytes, asked).await
	}
	.await;
	match prepared {
		Ok(prepared) => generate(state, log, prepared).await,
		Err(e) => log.reject(e),
	}
}

/// Takes a request from validated to charged. The cheap refusals come first: a full server
/// (429) before the chain lookup, an unpaid request (402) and an unknown or unregistered
/// adapter (404) before retrieval and tokenizing.
async fn prepare(state: &AppState, log: &RequestLog, headers: &HeaderMap, body: &[u8], asked: Asked) -> Result<Prepared, ApiError> {
	let permit = admit(state)?;
	let param = if asked.spec.tools.is_some() { "tools" } else { "response_format" };
	let constraint = compile_grammar(state, asked.spec.grammar.clone(), param).await?;
	let vocabulary = match asked.spec.logprobs {
		Some(_) => Some(vocabulary(state).await?),
		None => None,
	};
	let auth = authorise_payer(state, headers, body, &log.id).await?;
	let adapter = lease_adapter(state, &asked.model).await?;
	let training = training_of(state, &asked.model, adapter.as_ref())?;
	let (prompt_tokens, attributor, default_max_tokens, param) = match asked.input {
		Input::Chat { request, mut messages } => {
			let mut attributor = ground(state, &request, &messages, training).await?;
			if let Some(a) = &mut attributor {
				// Attribution needs what was retrieved, not the rendered messages.
				messages = std::mem::take(&mut a.grounded.messages);
			}
			let tokens = encode_chat(state, messages, asked.spec.tools.as_ref()).await?;
			(tokens, attributor, None, "messages")
		},
		Input::Prompt(prompt) => {
			let codec = state.inner.codec.clone();
			let tokens = blocking(move || {
				codec.encode(&prompt).map_err(|e| ApiError::internal(format!("tokenizing failed: {e:#}")))
			})
			.await?;
			(tokens, None, Some(COMPLETIONS_DEFAULT_MAX_TOKENS), "prompt")
		},
	};
	let mut max_tokens = openai::token_budget(
		prompt_tokens.len(),
		asked.spec.max_tokens,
		default_max_tokens,
		state.limits(),
		state.inner.engine.context_length(),
		param,
	)?;
	// The payer's budget covers every answer; each gets an equal part of what it affords.
	let choices = asked.spec.choices;
	let priced = Priced { adapter: adapter.as_ref(), attributor: attributor.as_ref(), tools: ToolBudget::default() };
	let charge = charge(state, auth, priced, prompt_tokens.len(), max_tokens * choices)?;
	if let Some(charge) = &charge {
		max_tokens = charge.max_tokens() / choices;
		if max_tokens == 0 {
			let short = LedgerError::PaymentRequired(format!("the payer's budget does not cover {choices} answers"));
			return Err(ApiError::from(short).with_param("n"));
		}
	}
	Ok(Prepared {
		model: asked.model,
		prompt_tokens,
		max_tokens,
		spec: asked.spec,
		adapter,
		constraint,
		vocabulary,
		closing: Closing { attributor, charge, tools: Vec::new() },
		permit,
	})
}

/// What a request uses that its charge prices.
pub(super) struct Priced<'a> {
	pub adapter: Option<&'a AdapterLease>,
	pub attributor: Option<&'a Attributor>,
	pub tools: ToolBudget,
}

/// Prices the request on chain and holds its most possible fee for `prompt_tokens` and at most
/// `max_tokens` more (see `Ledger::charge`); `None` when the worker does not charge.
pub(super) fn charge(
	state: &AppState,
	auth: Option<Authorisation>,
	priced: Priced<'_>,
	prompt_tokens: usize,
	max_tokens: usize,
) -> Result<Option<Charge>, ApiError> {
	let (Some(ledger), Some(auth)) = (state.ledger(), auth) else { return Ok(None) };
	let template = priced
		.attributor
		.map(|a| &a.grounded.template)
		.filter(|(id, _)| id != DEFAULT_TEMPLATE_ID)
		.map(|(_, hash)| ContentHash::from(*hash));
	let adapter = priced.adapter.map(|lease| ContentHash::from(lease.hash()));
	let grounded = priced.attributor.is_some();
	Ok(Some(ledger.charge(auth, adapter, template, grounded, priced.tools, prompt_tokens, max_tokens)?))
}

/// Renders the conversation with the model's chat template and tokenizes it (off the async
/// workers). A template that renders tools is handed them; else they are in the system message.
pub(super) async fn encode_chat(state: &AppState, messages: Vec<ChatMessage>, tools: Option<&Tooling>) -> Result<Vec<u32>, ApiError> {
	let codec = state.inner.codec.clone();
	let tools = tools.filter(|_| codec.native_call_format().is_some()).map(Tooling::definitions);
	blocking(move || {
		codec.encode_chat_with_tools(&messages, tools.as_ref(), true).map_err(|e| match e {
			ChatError::Template(e) => ApiError::invalid("messages", format!("{e:#}")),
			ChatError::Tokenizer(e) => ApiError::internal(format!("tokenizing failed: {e:#}")),
		})
	})
	.await
}

/// Compiles the request's grammar off the async workers (bounded in time and memory by the
/// engine's limits); a schema the engine cannot honour is a 400 naming `param`.
pub(super) async fn compile_grammar(state: &AppState, grammar: Option<Grammar>, param: &'static str) -> Result<Option<Constraint>, ApiError> {
	let Some(grammar) = grammar else { return Ok(None) };
	let engine = state.inner.engine.clone();
	blocking(move || {
		let grammars = engine.grammars().map_err(|e| ApiError::internal(format!("constrained decoding is unavailable: {e}")))?;
		let constraint = grammars
			.compile(&grammar)
			.map_err(|e| ApiError::invalid(param, format!("the schema cannot be used: {e}")))?;
		Ok(Some(constraint))
	})
	.await
}

/// The model's token bytes, read from the tokenizer the first time (off the async workers).
async fn vocabulary(state: &AppState) -> Result<Arc<Vocabulary>, ApiError> {
	let engine = state.inner.engine.clone();
	blocking(move || engine.vocabulary().map_err(|e| ApiError::internal(format!("logprobs are unavailable: {e}")))).await
}

/// Admits a request that parsed and validated, before any costly step (the chain lookup,
/// retrieval, tokenizing a long prompt): a full server answers 429 at once, without that work.
pub(super) fn admit(state: &AppState) -> Result<OwnedSemaphorePermit, ApiError> {
	state.inner.admission.clone().try_acquire_owned().map_err(|_| ApiError::queue_full())
}

/// Who pays for this request: `None` when the worker does not charge; 402 when nobody does.
pub(super) async fn authorise_payer(
	state: &AppState,
	headers: &HeaderMap,
	body: &[u8],
	request_id: &str,
) -> Result<Option<Authorisation>, ApiError> {
	let Some(ledger) = &state.inner.ledger else { return Ok(None) };
	// A header that is not visible ASCII cannot be a voucher; it is refused as malformed.
	let voucher = headers.get(VOUCHER_HEADER).map(|v| v.to_str().unwrap_or_default());
	let bearer = headers
		.get(header::AUTHORIZATION)
		.and_then(|v| v.to_str().ok())
		.and_then(|v| v.strip_prefix("Bearer "))
		.map(str::trim);
	Ok(Some(ledger.authorise(voucher, bearer, body, request_id).await?))
}

/// The base model's name means no adapter; any other name is an adapter, loaded (off the engine
/// thread) and leased here. A lease keeps it resident until the engine drops it.
pub(super) async fn lease_adapter(state: &AppState, model: &str) -> Result<Option<AdapterLease>, ApiError> {
	if model == state.inner.model_name {
		return Ok(None);
	}
	match state.inner.adapters.acquire(model).await {
		Ok(lease) => Ok(Some(lease)),
		// A name no adapter could have is as unknown as an unregistered one.
		Err(AdapterError::NotFound(_) | AdapterError::InvalidName(_)) => Err(ApiError::model_not_found(model)),
		Err(e) => Err(adapter_error(e, "model")),
	}
}

/// The adapter's training provenance, whose DataNets are searched and paid: the chain's record
/// on a chain (404 for an adapter not registered there), else the worker's provenance file.
pub(super) fn training_of(state: &AppState, model: &str, adapter: Option<&AdapterLease>) -> Result<Vec<TrainingShare>, ApiError> {
	let Some(adapter) = adapter else { return Ok(Vec::new()) };
	if let Some(ledger) = state.ledger() {
		return Ok(training_shares(&ledger.adapter_provenance(&ContentHash::from(adapter.hash()))?));
	}
	Ok(state.knowledge().map(|k| k.provenance(model).to_vec()).unwrap_or_default())
}

/// Retrieves the request's DataNet context and applies its prompt template (off the async
/// workers: it embeds the question). `None` when the request names no DataNet or template and
/// its adapter has no training provenance: it is served as plain chat.
pub(super) async fn ground(
	state: &AppState,
	request: &ChatCompletionRequest,
	messages: &[ChatMessage],
	training: Vec<TrainingShare>,
) -> Result<Option<Attributor>, ApiError> {
	let Some(knowledge) = state.knowledge() else {
		if !request.wants_grounding() {
			return Ok(None);
		}
		let param = if request.prompt_template.is_some() { "prompt_template" } else { "datanets" };
		return Err(ApiError::not_found("this worker serves no DataNets or prompt templates").with_param(param));
	};
	if !request.wants_grounding() && training.is_empty() {
		return Ok(None);
	}
	let grounding = GroundingRequest {
		datanets: request.datanets.clone().unwrap_or_default(),
		training,
		template: request.prompt_template.clone(),
		top_k: request.retrieval_top_k,
	};
	let (k, messages) = (knowledge.clone(), messages.to_vec());
	let grounded = blocking(move || k.ground(&messages, &grounding).map_err(ApiError::from)).await?;
	Ok(Some(Attributor { knowledge, grounded }))
}

/// Submits to the engine, and answers whole or as a stream.
async fn generate(state: AppState, mut log: RequestLog, p: Prepared) -> Response {
	log.prompt_tokens = p.prompt_tokens.len();
	let (events, rx) = mpsc::unbounded_channel();
	let request = GenerationRequest {
		prompt_tokens: p.prompt_tokens,
		max_tokens: p.max_tokens,
		sampling: p.spec.sampling,
		stop: p.spec.stop,
		adapter: p.adapter,
		constraint: p.constraint,
		choices: p.spec.choices,
		logprobs: p.spec.logprobs,
		events,
		permit: Some(p.permit),
	};
	if let Err(e) = state.inner.engine.submit(request) {
		return log.reject(e.into());
	}
	let meta = ResponseMeta { id: log.id.clone(), created: unix_now(), model: p.model };
	let headers = generation_headers(&p.closing);
	if p.spec.stream {
		let answers = stream::Answers { count: p.spec.choices, tools: p.spec.tools.as_ref().map(|t| t.format), vocabulary: p.vocabulary };
		return (headers, stream::respond(state, log, rx, meta, p.spec.include_usage, answers, p.closing)).into_response();
	}
	let (answers, usage) = match collect(&mut log, rx, p.spec.choices).await {
		Ok(done) => done,
		Err(e) => return log.reject(e),
	};
	let finished = match p.closing.finish(&state, joined(answers.iter().map(|a| a.text.as_str())), &usage).await {
		Ok((_, finished)) => finished,
		Err(e) => return log.reject(e),
	};
	let vocabulary = p.vocabulary.as_deref();
	let body = match log.endpoint() {
		Endpoint::ChatCompletions => {
			let choices = answers
				.into_iter()
				.enumerate()
				.map(|(i, answer)| {
					let mut choice = ChatChoice::new(i, answer.text, answer.finish);
					choice.logprobs = vocabulary.map(|v| logprobs::chat(v, &answer.logprobs));
					if let Some(tools) = &p.spec.tools {
						choice.read_tool_calls(tools.format);
					}
					choice
				})
				.collect();
			let mut body = ChatCompletion::new(format!("chatcmpl-{}", meta.id), meta.created, meta.model, choices, &usage);
			body.attribution = finished.attribution;
			body.receipt_id = finished.receipt_id;
			Json(body).into_response()
		},
		Endpoint::Completions => {
			let id = format!("cmpl-{}", meta.id);
			let mut body = Completion::new(&id, meta.created, &meta.model, "", None, Some(&usage));
			body.choices = answers
				.iter()
				.enumerate()
				.map(|(i, answer)| CompletionChoice {
					text: &answer.text,
					index: i as u32,
					logprobs: vocabulary.map(|v| logprobs::completion(v, &answer.logprobs)),
					finish_reason: Some(answer.finish.as_openai()),
				})
				.collect();
			body.attribution = finished.attribution;
			body.receipt_id = finished.receipt_id;
			Json(body).into_response()
		},
	};
	(headers, body).into_response()
}

/// One answer of a request, whole.
pub(super) struct Answer {
	pub text: String,
	pub finish: FinishReason,
	pub logprobs: Vec<TokenLogprob>,
}

/// What every response of one generation shares.
pub(super) struct ResponseMeta {
	/// The request id; completions are `chatcmpl-{id}` / `cmpl-{id}`.
	pub id: String,
	pub created: u64,
	pub model: String,
}

/// Headers of a generation response, sent before the first token for streams (`x-request-id`
/// is added by the middleware for every response). The receipt's id depends on the answer, so
/// it comes in the body; the request hash it will carry is known now.
pub(super) fn generation_headers(closing: &Closing) -> HeaderMap {
	let mut headers = HeaderMap::new();
	if let Some(charge) = &closing.charge {
		if let Ok(value) = hex_hash(&charge.request_hash()).parse() {
			headers.insert(REQUEST_HASH_HEADER, value);
		}
	}
	headers
}

/// Waits for every answer, and adds up their usage (the prompt counted once).
pub(super) async fn collect(
	log: &mut RequestLog,
	mut rx: mpsc::UnboundedReceiver<GenerationEvent>,
	choices: usize,
) -> Result<(Vec<Answer>, Usage), ApiError> {
	let mut answers: Vec<Answer> =
		(0..choices).map(|_| Answer { text: String::new(), finish: FinishReason::Stop, logprobs: Vec::new() }).collect();
	let mut total = Usage::default();
	let mut done = 0;
	while done < choices {
		match rx.recv().await {
			Some(GenerationEvent::Text { choice, text, logprobs, .. }) => {
				log.saw_text();
				answers[choice].text.push_str(&text);
				answers[choice].logprobs.extend(logprobs);
			},
			Some(GenerationEvent::Done { choice, finish_reason, usage }) => {
				answers[choice].finish = finish_reason;
				total.prompt_tokens = usage.prompt_tokens;
				total.cached_tokens = usage.cached_tokens;
				total.completion_tokens += usage.completion_tokens;
				done += 1;
			},
			Some(GenerationEvent::Failed(message)) => return Err(generation_failed(&message)),
			None => return Err(engine_vanished()),
		}
	}
	log.finished(&total);
	Ok((answers, total))
}

/// The body, or the rejection as an OpenAI error (413 when over `max_body_bytes`).
pub(super) fn body_bytes(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
	body.map_err(|rejection| {
		let status = rejection.status();
		if status == StatusCode::PAYLOAD_TOO_LARGE {
			ApiError::new(
				status,
				"invalid_request_error",
				format!("request body is larger than {} bytes", state.limits().max_body_bytes),
			)
			.with_code("request_too_large")
		} else {
			ApiError::new(status, "invalid_request_error", rejection.body_text())
		}
	})
}

/// An adapter error, blaming `param` when the error itself names no field.
pub(super) fn adapter_error(e: AdapterError, param: &str) -> ApiError {
	let mut error = ApiError::from(e);
	if error.param.is_none() && error.status.is_client_error() {
		error.param = Some(param.to_owned());
	}
	error
}
