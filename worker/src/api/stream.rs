//! Server-sent events for `stream: true`. The engine's receiver lives inside the stream, so when
//! the client disconnects hyper drops the stream, the receiver with it, and the engine's next send
//! fails: that is how it learns to stop the sequence and free its slot.

use std::{convert::Infallible, sync::Arc};

use axum::response::{
	sse::{Event, KeepAlive, Sse},
	IntoResponse, Response,
};
use futures::{stream, StreamExt};
use serde::Serialize;
use tokio::sync::mpsc;

use super::{
	error::ApiError,
	finish::{engine_vanished, generation_failed, joined, Closing, Finished},
	handlers::ResponseMeta,
	logprobs,
	openai::{ChatCompletionChunk, Completion, Delta, FunctionDelta, ToolCallDelta},
	request_log::RequestLog,
	tools::{CallReader, Piece},
	AppState,
};
use crate::metrics::Endpoint;
use openledger_engine::{
	engine::{FinishReason, GenerationEvent, TokenLogprob, Usage},
	tokenizer::{CallFormat, Vocabulary},
};

/// What the stream needs to know about a request's answers.
pub(super) struct Answers {
	/// How many (`n`).
	pub count: usize,
	/// The format tool calls are read out of the text in, when the request offered tools.
	pub tools: Option<CallFormat>,
	/// Set when the request asked for logprobs.
	pub vocabulary: Option<Arc<Vocabulary>>,
}

/// The SSE response: for chat a role chunk first, then a chunk per text event (its choice's
/// index, and its tokens' logprobs when asked for), a chunk with each answer's finish reason
/// as it ends — the last one with the attribution and the receipt id when there are — the usage
/// chunk if asked for, and `data: [DONE]`. The last finish chunk goes out only once the receipt
/// is in the outbox. An engine failure (or a receipt that cannot be stored) mid-stream is sent
/// as an OpenAI error object, then `[DONE]`.
pub(super) fn respond(
	state: AppState,
	log: RequestLog,
	rx: mpsc::UnboundedReceiver<GenerationEvent>,
	meta: ResponseMeta,
	include_usage: bool,
	answers: Answers,
	closing: Closing,
) -> Response {
	let count = answers.count;
	let streamer = Streamer {
		chat: log.endpoint() == Endpoint::ChatCompletions,
		id: match log.endpoint() {
			Endpoint::ChatCompletions => format!("chatcmpl-{}", meta.id),
			Endpoint::Completions => format!("cmpl-{}", meta.id),
		},
		created: meta.created,
		model: meta.model,
		include_usage,
		calls: answers.tools.map(|format| (0..count).map(|_| CallReader::new(format)).collect()),
		vocabulary: answers.vocabulary,
		rx,
		log,
		state,
		keep_text: closing.keeps_text(),
		closing: Some(closing),
		texts: vec![String::new(); count],
		sent_tokens: vec![0; count],
		usage: Usage::default(),
		left: count,
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
	/// Per answer, reads tool calls out of the text, when the request offered tools.
	calls: Option<Vec<CallReader>>,
	vocabulary: Option<Arc<Vocabulary>>,
	/// Dropped before `rx` (fields drop in order): a disconnect is counted before the engine
	/// can see the closed channel and give the admission permit back.
	log: RequestLog,
	rx: mpsc::UnboundedReceiver<GenerationEvent>,
	state: AppState,
	/// Taken when the engine is done.
	closing: Option<Closing>,
	keep_text: bool,
	/// Per answer, the text so far, kept only when it is to be attributed or charged.
	texts: Vec<String>,
	/// Per answer, the completion tokens generated for the text sent so far.
	sent_tokens: Vec<usize>,
	/// The answers done so far, added up.
	usage: Usage,
	/// Answers not done yet; the stream is over at 0.
	left: usize,
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
		if self.left == 0 {
			return None;
		}
		let events = match self.rx.recv().await {
			Some(GenerationEvent::Text { choice, text, completion_tokens, logprobs }) => {
				self.log.saw_text();
				if !text.is_empty() {
					self.sent_tokens[choice] = completion_tokens;
				}
				if self.keep_text {
					self.texts[choice].push_str(&text);
				}
				self.text_events(choice, &text, &logprobs)
			},
			Some(GenerationEvent::Done { choice, finish_reason, usage }) => {
				self.usage.prompt_tokens = usage.prompt_tokens;
				self.usage.cached_tokens = usage.cached_tokens;
				self.usage.completion_tokens += usage.completion_tokens;
				self.left -= 1;
				let held_back = self.calls.as_mut().map(|c| c[choice].finish()).unwrap_or_default();
				let mut events: Vec<Event> = held_back.into_iter().map(|piece| self.piece_event(choice, piece, None)).collect();
				if self.left > 0 {
					events.push(self.finish_event(choice, finish_reason, None));
					return Some(events);
				}
				let usage = self.usage.clone();
				self.log.finished(&usage);
				let Some(closing) = self.closing.take() else { return None };
				let text = joined(self.texts.iter().map(String::as_str));
				match closing.finish(&self.state, text, &usage).await {
					Ok((_, finished)) => {
						events.push(self.finish_event(choice, finish_reason, Some(finished)));
						if self.include_usage {
							events.push(self.usage_event(&usage));
						}
						events.push(Event::default().data("[DONE]"));
					},
					Err(e) => events.extend(self.fail(e)),
				}
				events
			},
			Some(GenerationEvent::Failed(message)) => self.fail(generation_failed(&message)),
			None => self.fail(engine_vanished()),
		};
		Some(events)
	}

	/// The chunks for new text of one answer: the text itself, or what the call reader makes of
	/// it; its tokens' logprobs ride on the first chunk (on one of their own when the call
	/// reader holds all the text back).
	fn text_events(&mut self, choice: usize, text: &str, logprobs: &[TokenLogprob]) -> Vec<Event> {
		let mut logprobs = self.vocabulary.as_deref().filter(|_| !logprobs.is_empty()).map(|v| (v, logprobs));
		let pieces = match self.calls.as_mut() {
			Some(readers) => readers[choice].push(text),
			None if text.is_empty() => Vec::new(),
			None => vec![Piece::Content(text.to_owned())],
		};
		let mut events = Vec::with_capacity(pieces.len() + 1);
		for piece in pieces {
			events.push(self.piece_event(choice, piece, logprobs.take()));
		}
		if let Some(logprobs) = logprobs {
			events.push(self.piece_event(choice, Piece::Content(String::new()), Some(logprobs)));
		}
		events
	}

	/// A piece of one answer: content, or a call's start or arguments.
	fn piece_event(&self, choice: usize, piece: Piece, logprobs: Option<(&Vocabulary, &[TokenLogprob])>) -> Event {
		let (id, created, model) = (self.id.as_str(), self.created, self.model.as_str());
		if !self.chat {
			let text = match piece {
				Piece::Content(text) => text,
				_ => String::new(),
			};
			let mut chunk = Completion::new(id, created, model, &text, None, None);
			chunk.choices[0].index = choice as u32;
			chunk.choices[0].logprobs = logprobs.map(|(v, l)| logprobs::completion(v, l));
			return json_event(&chunk);
		}
		let call = match piece {
			Piece::Content(text) => {
				let mut chunk = ChatCompletionChunk::new(id, created, model, Delta { content: Some(&text), ..Delta::default() }, None);
				chunk.choices[0].index = choice as u32;
				chunk.choices[0].logprobs = logprobs.map(|(v, l)| logprobs::chat(v, l));
				return json_event(&chunk);
			},
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
		let mut chunk = ChatCompletionChunk::new(id, created, model, delta, None);
		chunk.choices[0].index = choice as u32;
		chunk.choices[0].logprobs = logprobs.map(|(v, l)| logprobs::chat(v, l));
		json_event(&chunk)
	}

	/// The chunk with an answer's finish reason; the last answer's carries what the whole
	/// request finished with (attribution, receipt id).
	fn finish_event(&self, choice: usize, finish: FinishReason, finished: Option<Finished>) -> Event {
		let (id, created, model) = (self.id.as_str(), self.created, self.model.as_str());
		let (attribution, receipt_id) = finished.map(|f| (f.attribution, f.receipt_id)).unwrap_or_default();
		if self.chat {
			let mut last = ChatCompletionChunk::new(id, created, model, Delta::default(), Some(finish));
			last.choices[0].index = choice as u32;
			if finish == FinishReason::Stop && self.calls.as_ref().is_some_and(|c| c[choice].calls() > 0) {
				last.choices[0].finish_reason = Some("tool_calls");
			}
			last.attribution = attribution;
			last.receipt_id = receipt_id;
			json_event(&last)
		} else {
			let mut last = Completion::new(id, created, model, "", Some(finish), None);
			last.choices[0].index = choice as u32;
			last.attribution = attribution;
			last.receipt_id = receipt_id;
			json_event(&last)
		}
	}

	fn usage_event(&self, usage: &Usage) -> Event {
		let (id, created, model) = (self.id.as_str(), self.created, self.model.as_str());
		if self.chat {
			json_event(&ChatCompletionChunk::usage(id, created, model, usage))
		} else {
			json_event(&Completion::usage(id, created, model, usage))
		}
	}

	fn fail(&mut self, error: ApiError) -> Vec<Event> {
		self.log.failed(&error);
		self.left = 0;
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
		let sent_tokens: usize = self.sent_tokens.iter().sum();
		if closing.charge.is_none() || sent_tokens == 0 {
			return;
		}
		// Dropped as the runtime itself shuts down: nothing can run the receipt any more.
		let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
		let usage = Usage { prompt_tokens: self.log.prompt_tokens, completion_tokens: sent_tokens, ..Usage::default() };
		let (state, text, id) = (self.state.clone(), joined(self.texts.iter().map(String::as_str)), self.id.clone());
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
