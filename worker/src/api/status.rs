//! What a worker tells about itself: the models it serves, its p2p peers, its health and its
//! metrics.

use axum::{
	extract::{rejection::QueryRejection, Query, State},
	http::{header, StatusCode},
	response::{IntoResponse, Response},
	Json,
};
use serde::Deserialize;

use super::{
	error::ApiError,
	openai::{ModelCard, ModelList},
	AppState,
};
use crate::metrics;

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
		Some(ledger) => match ledger.view().workers().await {
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
