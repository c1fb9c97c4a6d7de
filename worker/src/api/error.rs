//! One error type for every handler. Each error picks its HTTP status and turns into OpenAI's
//! error body, `{"error":{"message","type","param","code"}}`, so OpenAI clients show the message
//! instead of failing to parse a plain-text rejection.

use axum::{
	http::{header, HeaderValue, StatusCode},
	response::{IntoResponse, Response},
	Json,
};
use serde::Serialize;

use openledger_engine::{adapters::AdapterError, engine::EngineClosed};

use openledger_knowledge::{grounding::KnowledgeError, templates::TemplateError};

use openledger_ledger::service::LedgerError;

/// An error answered to the client.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
	pub status: StatusCode,
	pub message: String,
	/// OpenAI's `type`: `invalid_request_error`, `not_found_error`, `authentication_error`,
	/// `permission_error`, `rate_limit_error` or `server_error`.
	pub kind: &'static str,
	/// The request field at fault (`"temperature"`, `"messages[2].role"`).
	pub param: Option<String>,
	/// A stable machine-readable code (`"model_not_found"`, `"context_length_exceeded"`).
	pub code: Option<String>,
	/// Seconds for a `Retry-After` header: set where trying again later may succeed.
	pub retry_after: Option<u32>,
}

/// The body as OpenAI writes it.
#[derive(Serialize)]
pub(crate) struct ErrorBody<'a> {
	pub error: ErrorObject<'a>,
}

#[derive(Serialize)]
pub(crate) struct ErrorObject<'a> {
	pub message: &'a str,
	#[serde(rename = "type")]
	pub kind: &'a str,
	pub param: Option<&'a str>,
	pub code: Option<&'a str>,
}

impl ApiError {
	pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
		Self { status, message: message.into(), kind, param: None, code: None, retry_after: None }
	}

	pub fn with_param(mut self, param: impl Into<String>) -> Self {
		self.param = Some(param.into());
		self
	}

	pub fn with_code(mut self, code: impl Into<String>) -> Self {
		self.code = Some(code.into());
		self
	}

	/// 400: the request is well-formed JSON but asks for something invalid.
	pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
		Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message).with_param(param)
	}

	/// 400 without a single field to blame (malformed JSON, an unusable prompt).
	pub fn bad_request(message: impl Into<String>) -> Self {
		Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
	}

	/// 422: valid JSON of the wrong shape (a missing field, a string where a number belongs).
	pub fn unprocessable(message: impl Into<String>) -> Self {
		Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request_error", message)
	}

	/// 404 for a `model` that is neither the base model nor a registered adapter.
	pub fn model_not_found(model: &str) -> Self {
		Self::new(
			StatusCode::NOT_FOUND,
			"not_found_error",
			format!("The model `{}` does not exist.", openledger_engine::printable(model)),
		)
		.with_param("model")
		.with_code("model_not_found")
	}

	pub fn not_found(message: impl Into<String>) -> Self {
		Self::new(StatusCode::NOT_FOUND, "not_found_error", message)
	}

	pub fn method_not_allowed() -> Self {
		Self::new(
			StatusCode::METHOD_NOT_ALLOWED,
			"invalid_request_error",
			"method not allowed for this path",
		)
	}

	pub fn unauthorized(message: impl Into<String>) -> Self {
		Self::new(StatusCode::UNAUTHORIZED, "authentication_error", message).with_code("invalid_api_key")
	}

	pub fn forbidden(message: impl Into<String>) -> Self {
		Self::new(StatusCode::FORBIDDEN, "permission_error", message)
	}

	/// 429: every admission permit is taken. Clients back off and retry.
	pub fn queue_full() -> Self {
		let mut e = Self::new(
			StatusCode::TOO_MANY_REQUESTS,
			"rate_limit_error",
			"the server is at capacity; retry shortly",
		)
		.with_code("rate_limit_exceeded");
		e.retry_after = Some(1);
		e
	}

	/// 503 while the server drains for shutdown.
	pub fn shutting_down() -> Self {
		Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "server is shutting down")
			.with_code("shutting_down")
	}

	pub fn unavailable(message: impl Into<String>) -> Self {
		Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
	}

	pub fn internal(message: impl Into<String>) -> Self {
		Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
	}

	/// The body alone, for an error that happens after a stream has started (SSE `data:`).
	pub fn body_json(&self) -> String {
		serde_json::to_string(&self.body()).unwrap_or_default()
	}

	pub(crate) fn body(&self) -> ErrorBody<'_> {
		ErrorBody {
			error: ErrorObject {
				message: &self.message,
				kind: self.kind,
				param: self.param.as_deref(),
				code: self.code.as_deref(),
			},
		}
	}
}

impl std::fmt::Display for ApiError {
	fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
		write!(f, "{} {}", self.status.as_u16(), self.message)
	}
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
	fn into_response(self) -> Response {
		let mut response = (self.status, Json(self.body())).into_response();
		if let Some(seconds) = self.retry_after {
			response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
		}
		response
	}
}

impl From<EngineClosed> for ApiError {
	fn from(e: EngineClosed) -> Self {
		Self::unavailable(e.to_string()).with_code("engine_unavailable")
	}
}

/// The status is the adapter module's own [`AdapterError::http_status`] (404 unknown, 400 the
/// request's fault, 409 changed on disk, 503 cache full, 500 ours); the code names the variant.
impl From<AdapterError> for ApiError {
	fn from(e: AdapterError) -> Self {
		let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
		let (kind, code) = match &e {
			AdapterError::NotFound(_) => ("not_found_error", "model_not_found"),
			AdapterError::InvalidName(_) => ("invalid_request_error", "invalid_adapter_name"),
			AdapterError::OutsideStore(_) => ("invalid_request_error", "adapter_outside_store"),
			AdapterError::Unsupported(_) => ("invalid_request_error", "unsupported_adapter"),
			AdapterError::Invalid(_) => ("invalid_request_error", "invalid_adapter"),
			AdapterError::TooLarge(_) => ("invalid_request_error", "adapter_too_large"),
			AdapterError::AlreadyRegistered(_) => ("invalid_request_error", "adapter_already_loaded"),
			AdapterError::HashMismatch { .. } => ("invalid_request_error", "adapter_changed"),
			AdapterError::CacheFull(_) => ("server_error", "adapter_cache_full"),
			AdapterError::Io(_) | AdapterError::Internal(_) => ("server_error", "adapter_error"),
		};
		let mut error = Self::new(status, kind, e.to_string()).with_code(code);
		if matches!(e, AdapterError::CacheFull(_)) {
			// Leases end as requests finish; a retry soon may fit.
			error.retry_after = Some(1);
		}
		error
	}
}

/// Unknown DataNets and templates are 404, bad retrieval parameters 400, template problems the
/// template module's own status; the param names the request field at fault.
impl From<KnowledgeError> for ApiError {
	fn from(e: KnowledgeError) -> Self {
		match &e {
			KnowledgeError::UnknownDataNet(_) => {
				Self::not_found(e.to_string()).with_param("datanets").with_code("datanet_not_found")
			}
			KnowledgeError::TooManyDataNets(_) => Self::invalid("datanets", e.to_string()),
			KnowledgeError::BadTopK(_) => Self::invalid("retrieval_top_k", e.to_string()),
			KnowledgeError::Template(t) => {
				let status = StatusCode::from_u16(t.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
				let (kind, code) = match t {
					TemplateError::NotFound(_) => ("not_found_error", "template_not_found"),
					TemplateError::HashMismatch { .. } => ("invalid_request_error", "template_changed"),
					TemplateError::Io { .. } => ("server_error", "template_error"),
					_ => ("invalid_request_error", "invalid_template"),
				};
				let param = if matches!(t, TemplateError::BadInput(_)) { "messages" } else { "prompt_template" };
				Self::new(status, kind, e.to_string()).with_param(param).with_code(code)
			}
			KnowledgeError::Internal(_) => Self::internal(e.to_string()),
		}
	}
}

impl From<LedgerError> for ApiError {
	fn from(e: LedgerError) -> Self {
		let message = e.to_string();
		match e {
			LedgerError::PaymentRequired(_) => {
				ApiError::new(StatusCode::PAYMENT_REQUIRED, "invalid_request_error", message).with_code("payment_required")
			},
			LedgerError::AlreadyServed(_) => {
				ApiError::new(StatusCode::CONFLICT, "invalid_request_error", message).with_code("request_already_served")
			},
			LedgerError::NotRegistered(param, _) => ApiError::new(StatusCode::NOT_FOUND, "not_found_error", message)
				.with_code("not_registered_on_chain")
				.with_param(param),
			LedgerError::NotInStanding(_) => {
				ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message).with_code("worker_not_in_standing")
			},
			LedgerError::Chain(_) => {
				let mut error = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message).with_code("chain_unavailable");
				error.retry_after = Some(2);
				error
			},
			LedgerError::Outbox(_) => ApiError::internal(message),
		}
	}
}
