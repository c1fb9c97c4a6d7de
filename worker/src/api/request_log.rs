//! One log line and one set of metrics per generation request, however it ends.

use std::time::{Duration, Instant};

use axum::response::{IntoResponse, Response};

use super::{error::ApiError, AppState, RequestId};
use crate::metrics::{Endpoint, Outcome};
use openledger_engine::engine::Usage;

/// Follows one generation request to its end, however it ends (answered, refused, failed, or the
/// client gone: then the handler or the stream is dropped with it). On drop it records the
/// metrics and writes the request's one log line.
pub(super) struct RequestLog {
	state: AppState,
	endpoint: Endpoint,
	pub(super) id: String,
	pub(super) model: String,
	started: Instant,
	ttft: Option<Duration>,
	pub(super) prompt_tokens: usize,
	completion_tokens: usize,
	status: u16,
	outcome: Option<Outcome>,
	error: Option<String>,
}

impl RequestLog {
	pub(super) fn new(state: &AppState, endpoint: Endpoint, id: RequestId) -> Self {
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
	pub(super) fn reject(mut self, error: ApiError) -> Response {
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
