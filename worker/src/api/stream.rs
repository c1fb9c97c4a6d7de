//! Server-sent events for `stream: true`. The engine's receiver lives inside the stream, so when
//! the client disconnects hyper drops the stream, the receiver with it, and the engine's next send
//! fails: that is how it learns to stop the sequence and free its slot.

use std::convert::Infallible;

use axum::response::{
	sse::{Event, KeepAlive, Sse},
	IntoResponse, Response,
};
use futures::{stream, StreamExt};
use serde::Serialize;
use tokio::sync::mpsc;

use super::{
	error::ApiError,
	finish::{engine_vanished, generation_failed, Closing, Finished},
	handlers::ResponseMeta,
	openai::{ChatCompletionChunk, Completion, Delta, FunctionDelta, ToolCallDelta},
	request_log::RequestLog,
	tools::{CallReader, Piece},
	AppState,
};
use crate::metrics::Endpoint;
use openledger_engine::engine::{FinishReason, GenerationEvent, Usage};

/// The SSE response: for chat a role chunk first, then a chunk per text event, a final chunk
/// with the finish reason (with the attribution and the receipt id when there are), the usage
/// chunk if asked for, and `data: [DONE]`. The final chunk goes out only once the receipt is in
/// the outbox. An engine failure (or a receipt that cannot be stored) mid-stream is sent as an
/// OpenAI error object, then `[DONE]`.
pub(super) fn respond(
	state: AppState,
	log: RequestLog,
	rx: mpsc::UnboundedReceiver<GenerationEvent>,
	meta: ResponseMeta,
	include_usage: bool,
	calls: Option<CallReader>,
	closing: Closing,
) -> Response {
	let streamer = Streamer {
		chat: log.endpoint() == Endpoint::ChatCompletions,
		id: match log.endpoint() {
			Endpoint::ChatCompletions => format!("chatcmpl-{}", meta.id),
			Endpoint::Completions => format!("cmpl-{}", meta.id),
		},
		created: meta.created,
		model: meta.model,
		include_usage,
		calls,
		rx,
		log,
		state,
		keep_text: closing.keeps_text(),
		closing: Some(closing),
		text: String::new(),
		sent_tokens: 0,
		done: false,
	};
	let opening = streamer.opening();
	let rest = stream::unfold(streamer, |mut s| async move { s.next_events().await.map(|events| (events, s)) })
		.flat_map(stream::iter);
	let events = stream::iter(opening).chain(rest).map(Ok::<Event, Infallible>);
	Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

struct Streamer {
	chat: bool,
	id: String,
	created: u64,
	model: String,
	include_usage: bool,
	/// Reads tool calls out of the text, when the request offered tools.
	calls: Option<CallReader>,
	/// Dropped before `rx` (fields drop in order): a disconnect is counted before the engine
	/// can see the closed channel and give the admission permit back.
	log: RequestLog,
	rx: mpsc::UnboundedReceiver<GenerationEvent>,
	state: AppState,
	/// Taken when the engine is done.
	closing: Option<Closing>,
	keep_text: bool,
	/// The answer so far, kept only when it is to be attributed or charged.
	text: String,
	/// The completion tokens generated for the text sent so far.
	sent_tokens: usize,
	done: bool,
}

impl Streamer {
	/// Sent at once, so the client sees the response start before the prompt is prefilled.
	fn opening(&self) -> Option<Event> {
		self.chat.then(|| {
			json_event(&ChatCompletionChunk::new(
				&self.id,
				self.created,
				&self.model,
				Delta { role: Some("assistant"), content: Some(""), ..Delta::default() },
				None,
			))
		})
	}

	/// The events for the engine's next message; `None` once the stream is over.
	async fn next_events(&mut self) -> Option<Vec<Event>> {
		if self.done {
			return None;
		}
		let events = match self.rx.recv().await {
			Some(GenerationEvent::Text { text, completion_tokens, .. }) => {
				self.log.saw_text();
				if !text.is_empty() {
					self.sent_tokens = completion_tokens;
				}
				if self.keep_text {
					self.text.push_str(&text);
				}
				if text.is_empty() {
					Vec::new()
				} else {
					self.text_events(&text)
				}
			}
			Some(GenerationEvent::Done { finish_reason, usage, .. }) => {
				self.log.finished(&usage);
				self.done = true;
				let text = std::mem::take(&mut self.text);
				let Some(closing) = self.closing.take() else { return None };
				let held_back = self.calls.as_mut().map(CallReader::finish).unwrap_or_default();
				let mut events: Vec<Event> = held_back.into_iter().map(|piece| self.piece_event(piece)).collect();
				match closing.finish(&self.state, text, &usage).await {
					Ok((_, finished)) => events.extend(self.closing_events(finish_reason, &usage, finished)),
					Err(e) => events.extend(self.fail(e)),
				}
				events
			}
			Some(GenerationEvent::Failed(message)) => self.fail(generation_failed(&message)),
			None => self.fail(engine_vanished()),
		};
		Some(events)
	}

	/// The chunks for new text: the text itself, or what the call reader makes of it.
	fn text_events(&mut self, text: &str) -> Vec<Event> {
		match self.calls.as_mut().map(|reader| reader.push(text)) {
			Some(pieces) => pieces.into_iter().map(|piece| self.piece_event(piece)).collect(),
			None => vec![self.text_event(text)],
		}
	}

	fn text_event(&self, text: &str) -> Event {
		if self.chat {
			json_event(&ChatCompletionChunk::new(
				&self.id,
				self.created,
				&self.model,
				Delta { content: Some(text), ..Delta::default() },
				None,
			))
		} else {
			json_event(&Completion::new(&self.id, self.created, &self.model, text, None, None))
		}
	}

	/// A piece of an answer with tools: content, or a call's start or arguments.
	fn piece_event(&self, piece: Piece) -> Event {
		let call = match piece {
			Piece::Content(text) => return self.text_event(&text),
			Piece::CallStart { index, id, name } => ToolCallDelta {
				index,
				id: Some(id),
				kind: Some("function"),
				function: FunctionDelta { name: Some(name), arguments: String::new() },
			},
			Piece::Arguments { index, fragment } =>
				ToolCallDelta { index, id: None, kind: None, function: FunctionDelta { name: None, arguments: fragment } },
		};
		let delta = Delta { tool_calls: Some(vec![call]), ..Delta::default() };
		json_event(&ChatCompletionChunk::new(&self.id, self.created, &self.model, delta, None))
	}

	fn closing_events(
		&self,
		finish: FinishReason,
		usage: &Usage,
		finished: Finished,
	) -> Vec<Event> {
		let (id, created, model) = (self.id.as_str(), self.created, self.model.as_str());
		let mut events = Vec::with_capacity(3);
		if self.chat {
			let mut last = ChatCompletionChunk::new(id, created, model, Delta::default(), Some(finish));
			if finish == FinishReason::Stop && self.calls.as_ref().is_some_and(|c| c.calls() > 0) {
				last.choices[0].finish_reason = Some("tool_calls");
			}
			last.attribution = finished.attribution;
			last.receipt_id = finished.receipt_id;
			events.push(json_event(&last));
			if self.include_usage {
				events.push(json_event(&ChatCompletionChunk::usage(id, created, model, usage)));
			}
		} else {
			let mut last = Completion::new(id, created, model, "", Some(finish), None);
			last.attribution = finished.attribution;
			last.receipt_id = finished.receipt_id;
			events.push(json_event(&last));
			if self.include_usage {
				events.push(json_event(&Completion::usage(id, created, model, usage)));
			}
		}
		events.push(Event::default().data("[DONE]"));
		events
	}

	fn fail(&mut self, error: ApiError) -> Vec<Event> {
		self.log.failed(&error);
		self.done = true;
		// The worker failed the request: the text it sent is not charged.
		self.closing = None;
		vec![Event::default().data(error.body_json()), Event::default().data("[DONE]")]
	}
}

/// A client that leaves mid-stream has been sent part of an answer: that part is charged. Its
/// receipt (tokens and text sent, attribution of that text) is issued in the background, since
/// nobody waits for it; a request that sent no text yet is not charged.
impl Drop for Streamer {
	fn drop(&mut self) {
		let Some(closing) = self.closing.take() else { return };
		if closing.charge.is_none() || self.sent_tokens == 0 {
			return;
		}
		// Dropped as the runtime itself shuts down: nothing can run the receipt any more.
		let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
		let usage = Usage { prompt_tokens: self.log.prompt_tokens, completion_tokens: self.sent_tokens };
		let (state, text, id) = (self.state.clone(), std::mem::take(&mut self.text), self.id.clone());
		let tasks = self.state.tasks().clone();
		tasks.spawn_on(async move {
			match closing.finish(&state, text, &usage).await {
				Ok((_, finished)) => tracing::info!(
					id,
					completion_tokens = usage.completion_tokens,
					receipt = finished.receipt_id.as_deref().unwrap_or_default(),
					"stream cut by its client: the tokens sent are charged"
				),
				Err(e) => tracing::warn!(id, "the receipt of a stream cut by its client was not stored: {}", e.message),
			}
		}, &runtime);
	}
}

fn json_event<T: Serialize>(value: &T) -> Event {
	// These types always serialize; an empty event would be the only trace of a bug.
	Event::default().data(serde_json::to_string(value).unwrap_or_default())
}
