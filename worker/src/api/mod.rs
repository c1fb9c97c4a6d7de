//! The OpenAI-compatible HTTP API: routes, shared state, admission and graceful shutdown.
//!
//! Admission is a semaphore of `ApiLimits::max_queue` permits taken with `try_acquire` (a full
//! server answers 429 at once instead of queueing without bound); the permit travels inside the
//! `GenerationRequest`, so it is released when the engine finishes the request, not when the
//! HTTP handler returns.

mod admin;
mod agent;
mod error;
mod finish;
mod handlers;
pub mod logprobs;
pub mod openai;
mod request_log;
mod status;
mod stream;
mod tools;
#[cfg(test)]
mod tests;

use std::{
	future::Future,
	sync::{
		atomic::{AtomicBool, Ordering},
		Arc,
	},
	time::{SystemTime, UNIX_EPOCH},
};

use axum::{
	extract::{DefaultBodyLimit, MatchedPath, Request, State},
	http::HeaderValue,
	middleware::{self, Next},
	response::{IntoResponse, Response},
	routing::{get, post},
	Router,
};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

pub use agent::McpSettings;
pub use error::ApiError;

use crate::metrics::Metrics;

use openledger_engine::{adapters::AdapterCache, engine::EngineHandle, tokenizer::TextCodec};

use openledger_knowledge::grounding::Knowledge;

use openledger_ledger::service::Ledger;

/// Bounds on what one client can ask of the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiLimits {
	/// Largest request body; larger ones get 413.
	pub max_body_bytes: usize,
	/// Largest `max_tokens` a request may ask for (and the default cap when it asks for none).
	pub max_tokens: usize,
	/// Generation requests admitted at once (queued in or running on the engine); the next one
	/// gets 429.
	pub max_queue: usize,
}

impl Default for ApiLimits {
	fn default() -> Self {
		Self { max_body_bytes: 1 << 20, max_tokens: 2048, max_queue: 64 }
	}
}

/// Everything the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
	inner: Arc<Inner>,
}

struct Inner {
	/// The base model's served name: a request whose `model` is this uses no adapter.
	model_name: String,
	codec: Arc<TextCodec>,
	engine: EngineHandle,
	adapters: AdapterCache,
	limits: ApiLimits,
	admission: Arc<Semaphore>,
	/// `None` turns the adapter load/unload endpoints off (403).
	admin_api_key: Option<String>,
	/// The DataNets and templates served; `None` answers grounded requests with 404. Replaced
	/// whole when the chain accepts new items (requests in flight keep the one they started with).
	knowledge: std::sync::RwLock<Option<Arc<Knowledge>>>,
	/// The chain: authorisation, pricing and receipts; `None` serves without charging.
	ledger: Option<Arc<Ledger>>,
	/// The MCP tools requests may opt into; `None` answers `mcp_tools` with 404.
	mcp: Option<McpSettings>,
	/// Other workers and their resident adapters, once the worker is on the p2p network.
	peers: std::sync::OnceLock<crate::p2p::Peers>,
	draining: AtomicBool,
	metrics: Metrics,
	/// Work a response leaves behind: the receipts of streams cut by their clients. Shutdown
	/// waits for it before the submitter stops.
	tasks: TaskTracker,
	/// Unix seconds, the `created` of the models in `/v1/models`.
	started: u64,
}

impl AppState {
	/// `max_queue` is raised to 1 if 0, so the server can always admit something.
	pub fn new(
		model_name: String,
		codec: Arc<TextCodec>,
		engine: EngineHandle,
		adapters: AdapterCache,
		limits: ApiLimits,
		admin_api_key: Option<String>,
	) -> Self {
		let limits = ApiLimits { max_queue: limits.max_queue.max(1), ..limits };
		Self {
			inner: Arc::new(Inner {
				model_name,
				codec,
				engine,
				adapters,
				admission: Arc::new(Semaphore::new(limits.max_queue)),
				limits,
				admin_api_key: admin_api_key.filter(|k| !k.is_empty()),
				knowledge: std::sync::RwLock::new(None),
				ledger: None,
				mcp: None,
				peers: std::sync::OnceLock::new(),
				draining: AtomicBool::new(false),
				metrics: Metrics::new(),
				tasks: TaskTracker::new(),
				started: unix_now(),
			}),
		}
	}

	/// Work responses leave behind: the receipts of streams cut by their clients.
	pub fn tasks(&self) -> &TaskTracker {
		&self.inner.tasks
	}

	/// Serves DataNet retrieval, prompt templates and attribution from `knowledge`. Call before
	/// the state is cloned.
	pub fn with_knowledge(self, knowledge: Arc<Knowledge>) -> Self {
		self.replace_knowledge(knowledge);
		self
	}

	/// Serves `knowledge` from the next request on (e.g. reloaded with newly accepted items).
	pub fn replace_knowledge(&self, knowledge: Arc<Knowledge>) {
		*self.inner.knowledge.write().expect("knowledge lock") = Some(knowledge);
	}

	/// The ledger, when the worker charges on a chain.
	pub fn ledger(&self) -> Option<Arc<Ledger>> {
		self.inner.ledger.clone()
	}

	/// The DataNets and templates served now.
	pub fn knowledge(&self) -> Option<Arc<Knowledge>> {
		self.inner.knowledge.read().expect("knowledge lock").clone()
	}

	/// Charges every generation request through `ledger`: 402 without authorisation, a signed
	/// receipt in the outbox for every answer. Call before the state is cloned.
	pub fn with_ledger(mut self, ledger: Arc<Ledger>) -> Self {
		Arc::get_mut(&mut self.inner).expect("with_ledger is called before the state is shared").ledger = Some(ledger);
		self
	}

	/// Lets requests call the MCP tools of `settings` (`mcp_tools`). Call before the state is
	/// cloned.
	pub fn with_mcp(mut self, settings: McpSettings) -> Self {
		Arc::get_mut(&mut self.inner).expect("with_mcp is called before the state is shared").mcp = Some(settings);
		self
	}

	/// The MCP tools served, if any.
	pub(crate) fn mcp(&self) -> Option<&McpSettings> {
		self.inner.mcp.as_ref()
	}

	/// Answers `/v1/peers` from `peers` from now on (once; a second call changes nothing).
	pub fn set_peers(&self, peers: crate::p2p::Peers) {
		let _ = self.inner.peers.set(peers);
	}

	/// The adapter cache the worker serves from.
	pub fn adapters(&self) -> &AdapterCache {
		&self.inner.adapters
	}

	pub fn limits(&self) -> &ApiLimits {
		&self.inner.limits
	}

	pub fn metrics(&self) -> &Metrics {
		&self.inner.metrics
	}

	/// Admitted requests not yet finished by the engine.
	pub fn in_flight(&self) -> usize {
		self.inner.limits.max_queue - self.inner.admission.available_permits()
	}

	pub fn is_draining(&self) -> bool {
		self.inner.draining.load(Ordering::SeqCst)
	}

	/// From now on every request but `/health` and `/metrics` is answered 503.
	pub fn begin_draining(&self) {
		self.inner.draining.store(true, Ordering::SeqCst);
	}

	/// Waits until every admitted request has released its permit (the engine finished it,
	/// including those whose client left).
	pub async fn wait_idle(&self) {
		let all = self.inner.limits.max_queue as u32;
		if let Ok(permits) = self.inner.admission.acquire_many(all).await {
			drop(permits);
		}
	}
}

/// The routes. Unknown paths get a 404 and wrong methods a 405, both with OpenAI error bodies.
pub fn router(state: AppState) -> Router {
	let body_limit = state.inner.limits.max_body_bytes;
	Router::new()
		.route("/v1/chat/completions", post(handlers::chat_completions))
		.route("/v1/completions", post(handlers::completions))
		.route("/v1/models", get(status::models))
		.route("/v1/peers", get(status::peers))
		.route("/v1/load_lora_adapter", post(admin::load_lora_adapter))
		.route("/v1/unload_lora_adapter", post(admin::unload_lora_adapter))
		.route("/health", get(status::health))
		.route("/metrics", get(status::metrics))
		.fallback(|| async { ApiError::not_found("no such endpoint").into_response() })
		.method_not_allowed_fallback(|| async { ApiError::method_not_allowed().into_response() })
		.layer(DefaultBodyLimit::max(body_limit))
		.layer(middleware::from_fn_with_state(state.clone(), observe))
		.with_state(state)
}

/// Serves until `shutdown` resolves, then drains: new requests get 503, no new connections are
/// accepted, and this returns once every in-flight request, streams included, has finished and
/// the engine has released every admitted request. Wrap it in a timeout to bound the drain.
pub async fn serve(
	listener: tokio::net::TcpListener,
	state: AppState,
	shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
	if let Ok(addr) = listener.local_addr() {
		tracing::info!("serving the OpenAI API on http://{addr}");
	}
	let draining = state.clone();
	let signal = async move {
		shutdown.await;
		draining.begin_draining();
		tracing::info!(in_flight = draining.in_flight(), "shutting down: draining in-flight requests");
	};
	axum::serve(listener, router(state.clone())).with_graceful_shutdown(signal).await?;
	state.wait_idle().await;
	tracing::info!("drained; HTTP server stopped");
	Ok(())
}

/// The per-request id, in the `x-request-id` header and the completion's id.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

impl RequestId {
	fn new() -> Self {
		Self(format!("{:032x}", rand::random::<u128>()))
	}
}

/// Around every request: refuse while draining, give it an id, count its response.
async fn observe(State(state): State<AppState>, route: Option<MatchedPath>, mut request: Request, next: Next) -> Response {
	let route = route.map_or_else(|| "unmatched".to_owned(), |r| r.as_str().to_owned());
	let id = RequestId::new();
	let mut response = if state.is_draining() && route != "/health" && route != "/metrics" {
		ApiError::shutting_down().into_response()
	} else {
		request.extensions_mut().insert(id.clone());
		next.run(request).await
	};
	if let Ok(value) = HeaderValue::from_str(&id.0) {
		response.headers_mut().insert("x-request-id", value);
	}
	state.inner.metrics.count_response(&route, response.status().as_u16());
	response
}

fn unix_now() -> u64 {
	SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
