//! The admin routes: loading and unloading LoRA adapters at run time, behind the admin API key.

use std::{path::Path, time::Instant};

use axum::{
	body::Bytes,
	extract::{rejection::BytesRejection, State},
	http::{header, HeaderMap},
	response::{IntoResponse, Response},
};

use super::{
	error::ApiError,
	handlers::{adapter_error, body_bytes},
	openai::{parse_json, LoadLoraRequest, UnloadLoraRequest},
	AppState,
};
use openledger_engine::adapters::AdapterError;

pub(super) async fn load_lora_adapter(
	State(state): State<AppState>,
	headers: HeaderMap,
	body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
	require_admin(&state, &headers)?;
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
	require_admin(&state, &headers)?;
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
fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
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
