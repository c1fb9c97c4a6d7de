//! The request handlers. Parsing and validation live in `openai.rs` as plain functions; these
//! glue them to the tokenizer, the admission semaphore, the adapter cache and the engine.

use std::{
	path::Path,
	sync::Arc,
	time::{Duration, Instant},
};

use axum::{
	body::Bytes,
	extract::{
		rejection::{BytesRejection, QueryRejection},
		Extension, Query, State,
	},
	http::{header, HeaderMap, StatusCode},
	response::{IntoResponse, Response},
	Json,
};
use serde::Deserialize;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::{
	error::ApiError,
	openai::{
		self, parse_json, AttributionBody, ChatCompletion, ChatCompletionRequest, Completion, CompletionRequest,
		GenerationSpec, LoadLoraRequest, ModelCard, ModelList, UnloadLoraRequest,
		COMPLETIONS_DEFAULT_MAX_TOKENS,
	},
	stream, unix_now, AppState, RequestId,
};
use crate::metrics::{self, Endpoint, Outcome};
use openledger_engine::{
	adapters::{AdapterError, AdapterLease},
	engine::{GenerationEvent, GenerationRequest, Usage},
	tokenizer::{ChatError, ChatMessage},
};
use openledger_knowledge::{
	attribution::{combine, AttributionPolicy, TrainingShare},
	grounding::{Grounded, GroundingRequest, Knowledge},
	templates::DEFAULT_TEMPLATE_ID,
};
use openledger_ledger::{
	keys::hex_hash,
	service::{Authorisation, Ledger, Priced, Reservation},
	REQUEST_HASH_HEADER,
	VOUCHER_HEADER,
};
use openledger_primitives::{AttributionEntry, ContentHash};

/// A request validated, admitted and tokenized, ready for the engine.
struct Prepared {
	model: String,
	prompt_tokens: Vec<u32>,
	max_tokens: usize,
	spec: GenerationSpec,
	/// Set when the request was grounded in DataNets: attributes the answer.
	attributor: Option<Attributor>,
	/// Who pays, when the worker charges (it is on a chain).
	auth: Option<Authorisation>,
	/// The request's place among those admitted; it goes with the request to the engine.
	permit: OwnedSemaphorePermit,
}

/// Admits a request that parsed and validated, before any costly step (the chain lookup,
/// retrieval, tokenizing a long prompt): a full server answers 429 at once, without that work.
fn admit(state: &AppState) -> Result<OwnedSemaphorePermit, ApiError> {
	state.inner.admission.clone().try_acquire_owned().map_err(|_| ApiError::queue_full())
}

/// A grounded request's attribution, computed once the whole answer is known.
pub(super) struct Attributor {
	knowledge: Arc<Knowledge>,
	grounded: Grounded,
}

impl Attributor {
	/// The answer's attribution, computed on the blocking pool (span search scans the DataNets'
	/// suffix arrays); hands the answer back.
	async fn attribute(self, output: String) -> (String, Vec<AttributionEntry>) {
		tokio::task::spawn_blocking(move || {
			let entries = self.knowledge.attribute(&self.grounded, &output);
			(output, entries)
		})
		.await
		.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
	}
}

/// What a charged request needs at its end: who pays, the on-chain prices and ids.
pub(super) struct Billing {
	ledger: Arc<Ledger>,
	auth: Authorisation,
	priced: Priced,
	/// The most this request can cost, held from the payer's budget until its receipt settles.
	reservation: Reservation,
}

impl Billing {
	/// Signs the receipt and commits it to the outbox; the receipt id, `0x` hex.
	pub(super) async fn issue(self, output: String, usage: &Usage, attribution: Vec<AttributionEntry>) -> Result<String, ApiError> {
		let id = self
			.ledger
			.issue(self.auth, self.reservation, &self.priced, output, usage.prompt_tokens, usage.completion_tokens, attribution)
			.await?;
		Ok(hex_hash(&id))
	}

	/// The adapter's training DataNets as the chain records them.
	fn training(&self) -> Vec<TrainingShare> {
		self.priced.provenance.iter().map(|&(datanet, share_ppm)| TrainingShare { datanet, share_ppm }).collect()
	}
}

/// The answer's attribution: retrieval, spans and training for a grounded request; training
/// alone for a charged request whose adapter has provenance on chain; else none.
pub(super) async fn attribute(
	state: &AppState,
	attributor: Option<Attributor>,
	billing: Option<&Billing>,
	output: String,
) -> (String, Option<Vec<AttributionEntry>>) {
	match attributor {
		Some(a) => {
			let (output, entries) = a.attribute(output).await;
			(output, Some(entries))
		},
		None => match billing {
			Some(b) if !b.priced.provenance.is_empty() => {
				let policy = state.knowledge().map_or_else(AttributionPolicy::default, |k| *k.policy());
				(output, Some(combine(&[], &[], &b.training(), &policy)))
			},
			_ => (output, None),
		},
	}
}

/// Who pays for this request: `None` when the worker does not charge; 402 when nobody does.
async fn authorise(state: &AppState, headers: &HeaderMap, body: &[u8], request_id: &str) -> Result<Option<Authorisation>, ApiError> {
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

/// Prices a charged request on chain once its adapter is known, caps its tokens to what the
/// payer authorised, and takes the adapter's training provenance from the chain.
fn bill(state: &AppState, p: &mut Prepared, adapter: Option<&AdapterLease>) -> Result<Option<Billing>, ApiError> {
	let (Some(ledger), Some(auth)) = (state.inner.ledger.clone(), p.auth.take()) else { return Ok(None) };
	let template = p
		.attributor
		.as_ref()
		.map(|a| &a.grounded.template)
		.filter(|(id, _)| id != DEFAULT_TEMPLATE_ID)
		.map(|(_, hash)| ContentHash::from(*hash));
	let adapter = adapter.map(|lease| ContentHash::from(lease.hash()));
	let priced = ledger.price(&auth, adapter, template, p.attributor.is_some(), p.prompt_tokens.len())?;
	if let Some(total) = priced.max_total_tokens {
		let affordable = usize::try_from(total).unwrap_or(usize::MAX).saturating_sub(p.prompt_tokens.len());
		p.max_tokens = p.max_tokens.min(affordable);
	}
	let reservation = ledger.reserve(&auth, priced.max_fee(p.prompt_tokens.len() + p.max_tokens))?;
	let billing = Billing { ledger, auth, priced, reservation };
	if let Some(a) = &mut p.attributor {
		a.grounded.training = billing.training();
	}
	Ok(Some(billing))
}

/// Retrieves the request's DataNet context and applies its prompt template (off the async
/// workers: it embeds the question). `None` when the request names no DataNet or template and
/// its adapter has no training provenance: it is served as plain chat.
async fn ground(
	state: &AppState,
	request: &ChatCompletionRequest,
	messages: &[ChatMessage],
) -> Result<Option<Attributor>, ApiError> {
	let Some(knowledge) = state.knowledge() else {
		if !request.wants_grounding() {
			return Ok(None);
		}
		let param = if request.prompt_template.is_some() { "prompt_template" } else { "datanets" };
		return Err(ApiError::not_found("this worker serves no DataNets or prompt templates").with_param(param));
	};
	let training = knowledge.provenance(&request.model).to_vec();
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
		let spec = request.validate(state.limits())?;
		let mut messages = openai::chat_messages(&request.messages)?;
		let permit = admit(&state)?;
		let auth = authorise(&state, &headers, &bytes, &log.id).await?;
		let mut attributor = ground(&state, &request, &messages).await?;
		if let Some(a) = &mut attributor {
			// Attribution needs what was retrieved, not the rendered messages.
			messages = std::mem::take(&mut a.grounded.messages);
		}
		let codec = state.inner.codec.clone();
		let prompt_tokens = blocking(move || {
			codec.encode_chat(&messages, true).map_err(|e| match e {
				ChatError::Template(e) => ApiError::invalid("messages", format!("{e:#}")),
				ChatError::Tokenizer(e) => ApiError::internal(format!("tokenizing failed: {e:#}")),
			})
		})
		.await?;
		let max_tokens = openai::token_budget(
			prompt_tokens.len(),
			spec.max_tokens,
			None,
			state.limits(),
			state.inner.engine.context_length(),
			"messages",
		)?;
		Ok::<_, ApiError>(Prepared { model: request.model, prompt_tokens, max_tokens, spec, attributor, auth, permit })
	}
	.await;
	match prepared {
		Ok(prepared) => generate(state, log, prepared).await,
		Err(e) => log.reject(e),
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
		let permit = admit(&state)?;
		let auth = authorise(&state, &headers, &bytes, &log.id).await?;
		let codec = state.inner.codec.clone();
		let prompt_tokens = blocking(move || {
			codec.encode(&prompt).map_err(|e| ApiError::internal(format!("tokenizing failed: {e:#}")))
		})
		.await?;
		let max_tokens = openai::token_budget(
			prompt_tokens.len(),
			spec.max_tokens,
			Some(COMPLETIONS_DEFAULT_MAX_TOKENS),
			state.limits(),
			state.inner.engine.context_length(),
			"prompt",
		)?;
		Ok::<_, ApiError>(Prepared { model: request.model, prompt_tokens, max_tokens, spec, attributor: None, auth, permit })
	}
	.await;
	match prepared {
		Ok(prepared) => generate(state, log, prepared).await,
		Err(e) => log.reject(e),
	}
}

/// Admits, resolves the adapter, submits, and answers whole or as a stream.
async fn generate(state: AppState, mut log: RequestLog, mut p: Prepared) -> Response {
	log.prompt_tokens = p.prompt_tokens.len();
	// The base model's name means no adapter; any other name is an adapter, loaded (off the
	// engine thread) and leased here. A lease keeps it resident until the engine drops it.
	let adapter = if p.model == state.inner.model_name {
		None
	} else {
		match state.inner.adapters.acquire(&p.model).await {
			Ok(lease) => Some(lease),
			// A name no adapter could have is as unknown as an unregistered one.
			Err(AdapterError::NotFound(_) | AdapterError::InvalidName(_)) => {
				return log.reject(ApiError::model_not_found(&p.model))
			}
			Err(e) => return log.reject(adapter_error(e, "model")),
		}
	};
	let billing = match bill(&state, &mut p, adapter.as_ref()) {
		Ok(billing) => billing,
		Err(e) => return log.reject(e),
	};
	let (events, rx) = mpsc::unbounded_channel();
	let request = GenerationRequest {
		prompt_tokens: p.prompt_tokens,
		max_tokens: p.max_tokens,
		sampling: p.spec.sampling,
		stop: p.spec.stop,
		adapter,
		events,
		permit: Some(p.permit),
	};
	if let Err(e) = state.inner.engine.submit(request) {
		return log.reject(e.into());
	}
	let meta = ResponseMeta { id: log.id.clone(), created: unix_now(), model: p.model };
	let headers = generation_headers(billing.as_ref());
	if p.spec.stream {
		let streamed = stream::Streamed { include_usage: p.spec.include_usage, attributor: p.attributor, billing };
		return (headers, stream::respond(state, log, rx, meta, streamed)).into_response();
	}
	let (text, finish, usage) = match collect(&mut log, rx).await {
		Ok(done) => done,
		Err(e) => return log.reject(e),
	};
	let (text, attribution) = attribute(&state, p.attributor, billing.as_ref(), text).await;
	// The receipt is in the outbox before the answer leaves: a delivered answer is always paid.
	let receipt_id = match billing {
		Some(billing) => match billing.issue(text.clone(), &usage, attribution.clone().unwrap_or_default()).await {
			Ok(id) => Some(id),
			Err(e) => return log.reject(e),
		},
		None => None,
	};
	let attribution = attribution.map(|entries| entries.iter().map(AttributionBody::from).collect());
	let body = match log.endpoint {
		Endpoint::ChatCompletions => {
			let mut body = ChatCompletion::new(format!("chatcmpl-{}", meta.id), meta.created, meta.model, text, finish, &usage);
			body.attribution = attribution;
			body.receipt_id = receipt_id;
			Json(body).into_response()
		},
		Endpoint::Completions => {
			let id = format!("cmpl-{}", meta.id);
			let mut body = Completion::new(&id, meta.created, &meta.model, &text, Some(finish), Some(&usage));
			body.receipt_id = receipt_id;
			Json(body).into_response()
		},
	};
	(headers, body).into_response()
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
fn generation_headers(billing: Option<&Billing>) -> HeaderMap {
	let mut headers = HeaderMap::new();
	if let Some(billing) = billing {
		if let Ok(value) = hex_hash(&billing.auth.request_hash).parse() {
			headers.insert(REQUEST_HASH_HEADER, value);
		}
	}
	headers
}

/// Waits for the whole generation.
async fn collect(
	log: &mut RequestLog,
	mut rx: mpsc::UnboundedReceiver<GenerationEvent>,
) -> Result<(String, openledger_engine::engine::FinishReason, Usage), ApiError> {
	let mut text = String::new();
	loop {
		match rx.recv().await {
			Some(GenerationEvent::Text(t)) => {
				log.saw_text();
				text.push_str(&t);
			}
			Some(GenerationEvent::Done { finish_reason, usage }) => {
				log.finished(&usage);
				return Ok((text, finish_reason, usage));
			}
			Some(GenerationEvent::Failed(message)) => return Err(generation_failed(&message)),
			None => return Err(engine_vanished()),
		}
	}
}

pub(super) fn generation_failed(message: &str) -> ApiError {
	ApiError::internal(format!("generation failed: {message}"))
}

/// The engine dropped the request's sender without a last event: it stopped mid-request.
pub(super) fn engine_vanished() -> ApiError {
	ApiError::internal("the inference engine stopped before finishing the request")
}

/// Tokenizing a megabyte of text takes a while; keep it off the async workers.
async fn blocking<T: Send + 'static>(
	f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
	tokio::task::spawn_blocking(f)
		.await
		.unwrap_or_else(|e| Err(ApiError::internal(format!("tokenizer task failed: {e}"))))
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

// ---------------------------------------------------------------------------------------------
// Models, admin, health, metrics

pub(super) async fn models(State(state): State<AppState>) -> Json<ModelList> {
	let inner = &state.inner;
	let mut data = vec![ModelCard {
		id: inner.model_name.clone(),
		object: "model",
		created: inner.started,
		owned_by: "openledger",
		root: inner.model_name.clone(),
		parent: None,
		max_model_len: Some(inner.engine.context_length()),
		resident: None,
	}];
	data.extend(inner.adapters.list().into_iter().map(|(name, hash, resident)| ModelCard {
		id: name,
		object: "model",
		created: inner.started,
		owned_by: "openledger",
		root: hash,
		parent: Some(inner.model_name.clone()),
		max_model_len: Some(inner.engine.context_length()),
		resident: Some(resident),
	}));
	Json(ModelList { object: "list", data })
}

#[derive(Deserialize)]
pub(super) struct PeersQuery {
	/// An adapter's name or weights hash: only the peers holding it resident.
	adapter: Option<String>,
	/// Only the peers whose announcement a worker registered on this worker's chain vouches for.
	#[serde(default)]
	registered: bool,
}

/// `GET /v1/peers[?adapter=NAME_OR_HASH][&registered=true]`: the other workers heard on the p2p
/// network, with their endpoints and resident adapters, and this worker's peer id and
/// addresses; on a chain, whether each is a registered worker. 404 when this worker is not on
/// the network.
pub(super) async fn peers(
	State(state): State<AppState>,
	query: Result<Query<PeersQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
	let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
	let peers = state.inner.peers.get().ok_or_else(|| {
		ApiError::not_found("this worker is not on the p2p network (start it with --p2p-listen)")
	})?;
	let chain = match state.ledger() {
		Some(ledger) => match ledger.workers().await {
			Ok(workers) => Some((ledger.genesis(), workers)),
			Err(e) if query.registered => {
				return Err(ApiError::unavailable(format!("the registered workers could not be read from the chain: {e}")))
			},
			// The listing does without: `registered` is null, as on a worker serving no chain.
			Err(e) => {
				tracing::warn!("peers listed without their registration: {e}");
				None
			},
		},
		None if query.registered => {
			return Err(ApiError::invalid("registered", "this worker serves no chain, so it cannot tell registered workers"))
		},
		None => None,
	};
	let mut data = peers.list(query.adapter.as_deref(), chain.as_ref().map(|(genesis, workers)| (genesis, &**workers)));
	if query.registered {
		data.retain(|peer| peer.registered == Some(true));
	}
	Ok(Json(serde_json::json!({
		"object": "list",
		"peer_id": peers.local_peer_id().to_string(),
		"listening": peers.listening(),
		"data": data,
	})))
}

pub(super) async fn load_lora_adapter(
	State(state): State<AppState>,
	headers: HeaderMap,
	body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
	authorize(&state, &headers)?;
	let request: LoadLoraRequest = parse_json(&body_bytes(&state, body)?)?;
	if request.lora_name == state.inner.model_name {
		return Err(ApiError::invalid("lora_name", "the base model's name cannot name an adapter"));
	}
	// vLLM refuses a name that is already loaded; the cache itself would accept the same
	// content again as a no-op.
	if state.inner.adapters.hash_of(&request.lora_name).is_some() {
		return Err(ApiError::invalid(
			"lora_name",
			format!("The lora adapter '{}' has already been loaded.", request.lora_name),
		)
		.with_code("adapter_already_loaded"));
	}
	let started = Instant::now();
	let info = state
		.inner
		.adapters
		.register(&request.lora_name, request.lora_path.as_deref().map(Path::new))
		.await
		.map_err(|e| match e {
			// A bad name is the name's fault; everything else concerns the files it points to.
			e @ AdapterError::InvalidName(_) => adapter_error(e, "lora_name"),
			e => {
				let param = if request.lora_path.is_some() { "lora_path" } else { "lora_name" };
				match e {
					AdapterError::NotFound(_) => adapter_error(e, param).with_code("adapter_not_found"),
					e => adapter_error(e, param),
				}
			},
		})?;
	tracing::info!(
		adapter = %request.lora_name,
		path = request.lora_path.as_deref().unwrap_or(""),
		hash = %info.hash,
		ms = started.elapsed().as_millis() as u64,
		"adapter loaded via the API"
	);
	Ok(format!("Success: LoRA adapter '{}' added successfully.", request.lora_name).into_response())
}

pub(super) async fn unload_lora_adapter(
	State(state): State<AppState>,
	headers: HeaderMap,
	body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
	authorize(&state, &headers)?;
	let request: UnloadLoraRequest = parse_json(&body_bytes(&state, body)?)?;
	state
		.inner
		.adapters
		.unregister(&request.lora_name)
		.map_err(|e| adapter_error(e, "lora_name"))?;
	tracing::info!(adapter = %request.lora_name, "adapter unregistered");
	Ok(format!("Success: LoRA adapter '{}' removed successfully.", request.lora_name).into_response())
}

/// The admin endpoints need `Authorization: Bearer <admin key>`; without a configured key they
/// are off.
fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
	let Some(key) = &state.inner.admin_api_key else {
		return Err(ApiError::forbidden("admin API disabled: the worker has no admin API key"));
	};
	let given = headers
		.get(header::AUTHORIZATION)
		.and_then(|v| v.to_str().ok())
		.and_then(|v| v.strip_prefix("Bearer "))
		.map(str::trim);
	match given {
		Some(given) if constant_time_eq(given.as_bytes(), key.as_bytes()) => Ok(()),
		Some(_) => Err(ApiError::unauthorized("invalid admin API key")),
		None => Err(ApiError::unauthorized("missing `Authorization: Bearer <admin API key>`")),
	}
}

/// Compares without an early exit, so timing does not reveal how much of the key matched.
pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
	a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(super) async fn health(State(state): State<AppState>) -> Response {
	if state.is_draining() {
		(StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({"status": "draining"}))).into_response()
	} else {
		Json(serde_json::json!({"status": "ok"})).into_response()
	}
}

pub(super) async fn metrics(State(state): State<AppState>) -> Response {
	let inner = &state.inner;
	let text = inner.metrics.render(
		&inner.engine.stats(),
		&inner.adapters.stats(),
		state.in_flight(),
		inner.limits.max_queue,
	);
	([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
}

// ---------------------------------------------------------------------------------------------
// Per-request log and metrics

/// Follows one generation request to its end, however it ends (answered, refused, failed, or the
/// client gone: then the handler or the stream is dropped with it). On drop it records the
/// metrics and writes the request's one log line.
pub(super) struct RequestLog {
	state: AppState,
	endpoint: Endpoint,
	id: String,
	model: String,
	started: Instant,
	ttft: Option<Duration>,
	prompt_tokens: usize,
	completion_tokens: usize,
	status: u16,
	outcome: Option<Outcome>,
	error: Option<String>,
}

impl RequestLog {
	fn new(state: &AppState, endpoint: Endpoint, id: RequestId) -> Self {
		Self {
			state: state.clone(),
			endpoint,
			id: id.0,
			model: String::new(),
			started: Instant::now(),
			ttft: None,
			prompt_tokens: 0,
			completion_tokens: 0,
			status: 200,
			outcome: None,
			error: None,
		}
	}

	pub(super) fn endpoint(&self) -> Endpoint {
		self.endpoint
	}

	/// Marks the first generated text (time to first token).
	pub(super) fn saw_text(&mut self) {
		if self.ttft.is_none() {
			self.ttft = Some(self.started.elapsed());
		}
	}

	pub(super) fn finished(&mut self, usage: &Usage) {
		self.prompt_tokens = usage.prompt_tokens;
		self.completion_tokens = usage.completion_tokens;
		self.outcome = Some(Outcome::Finished);
	}

	/// A failure after a stream's headers went out: the status stays 200.
	pub(super) fn failed(&mut self, error: &ApiError) {
		self.outcome = Some(Outcome::Failed);
		self.error = Some(error.message.clone());
	}

	/// Answers with `error`, and records it.
	fn reject(mut self, error: ApiError) -> Response {
		self.status = error.status.as_u16();
		self.failed(&error);
		error.into_response()
	}
}

impl Drop for RequestLog {
	fn drop(&mut self) {
		let outcome = self.outcome.unwrap_or(Outcome::Disconnected);
		let elapsed = self.started.elapsed();
		self.state.metrics().observe_generation(
			self.endpoint,
			outcome,
			elapsed,
			self.ttft,
			self.prompt_tokens,
			self.completion_tokens,
		);
		let ttft_ms = self.ttft.map(|t| t.as_millis() as u64);
		let ms = elapsed.as_millis() as u64;
		let error = self.error.as_deref();
		if self.status >= 500 || (outcome == Outcome::Failed && self.status < 400) {
			tracing::warn!(
				id = %self.id, endpoint = self.endpoint.path(), model = %self.model, status = self.status,
				outcome = ?outcome, prompt_tokens = self.prompt_tokens, completion_tokens = self.completion_tokens,
				ttft_ms, ms, error, "request"
			);
		} else {
			tracing::info!(
				id = %self.id, endpoint = self.endpoint.path(), model = %self.model, status = self.status,
				outcome = ?outcome, prompt_tokens = self.prompt_tokens, completion_tokens = self.completion_tokens,
				ttft_ms, ms, error, "request"
			);
		}
	}
}
