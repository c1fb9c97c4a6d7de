//! The engine loop: admit, order by adapter, run one ragged forward, sample, stream, retire.

use std::{
	sync::{atomic::Ordering, mpsc, Arc},
	time::Instant,
};

use tokio::sync::OwnedSemaphorePermit;

use super::{
	sampler::{logprobs, Sampler},
	EngineCounters, FinishReason, GenerationEvent, GenerationRequest, SamplingParams, TokenLogprob, Usage,
};
use crate::{
	adapters::AdapterLease,
	grammar::Constraint,
	model::{
		kv_pool::{tokens_for, KvPoolFull, PrefixKey, BLOCK_TOKENS},
		KvCache, KvPool, Llama, SeqStep,
	},
	tokenizer::{IncrementalDecoder, TextCodec},
};

#[derive(Clone, Debug)]
pub struct EngineOptions {
	/// Sequences decoded together in one step.
	pub max_batch_sequences: usize,
	/// Prompt tokens fed per step across all prefilling sequences, so a long prompt is chunked
	/// and never stalls the decoding sequences for long.
	pub prefill_chunk_tokens: usize,
	/// Tokens the paged KV cache may hold over all sequences; `None`: enough for every batched
	/// sequence at the model's context length, so the cache never limits a request. The pool
	/// grows with use up to this, whatever the default.
	pub kv_cache_tokens: Option<usize>,
	/// Reuse the cached blocks of earlier prompts, and their answers, that start the same way,
	/// under the same adapter (see [`crate::model::kv_pool`]). Off, every prompt is computed
	/// whole; on, a client can tell from the time to the first token whether a prefix was asked
	/// for (or answered) recently.
	pub prefix_cache: bool,
}

impl EngineOptions {
	/// The paged KV cache these options give `model`.
	pub(super) fn kv_pool(&self, model: &Llama) -> KvPool {
		model.kv_pool(self.kv_cache_tokens.unwrap_or(tokens_for(self.max_batch_sequences, model.config.max_position)))
	}
}

impl Default for EngineOptions {
	fn default() -> Self {
		Self { max_batch_sequences: 16, prefill_chunk_tokens: 256, kv_cache_tokens: None, prefix_cache: true }
	}
}

/// What the answers of one request share.
struct Shared {
	prompt_tokens: Vec<u32>,
	max_tokens: usize,
	sampling: SamplingParams,
	stop: Vec<String>,
	adapter: Option<AdapterLease>,
	choices: usize,
	logprobs: Option<usize>,
	/// Prompt tokens found in the pool's kept blocks.
	cached_tokens: usize,
	events: tokio::sync::mpsc::UnboundedSender<GenerationEvent>,
	/// Given back when the request's last answer is dropped.
	_permit: Option<OwnedSemaphorePermit>,
}

/// One answer being generated.
struct Sequence {
	request: Arc<Shared>,
	/// Which of the request's answers this is.
	choice: usize,
	constraint: Option<Constraint>,
	cache: KvCache,
	/// Prompt tokens already in the cache.
	prefilled: usize,
	/// The sampled token to feed next, once the prompt is in.
	next_input: Option<u32>,
	sampler: Sampler,
	decoder: IncrementalDecoder,
	/// All output text so far, and how much of it was sent (bytes), in characters too.
	text: String,
	sent: usize,
	chars: usize,
	sent_chars: usize,
	/// Log-probabilities not sent yet.
	logprobs: Vec<TokenLogprob>,
	adapter_key: Option<[u8; 32]>,
	/// The keys of the prompt's full blocks, kept in the pool once the prompt is in (empty
	/// without the prefix cache, and for the other answers of a request).
	prefix: Vec<PrefixKey>,
	/// The answer's tokens so far, each fed back as the next input.
	output: Vec<u32>,
}

impl Sequence {
	fn new(request: GenerationRequest, pool: &KvPool, prefix_cache: bool) -> Self {
		let GenerationRequest {
			prompt_tokens,
			max_tokens,
			sampling,
			stop,
			adapter,
			constraint,
			choices,
			logprobs,
			events,
			permit,
		} = request;
		let prefix = match prefix_cache {
			true => pool.prefix_keys(adapter.as_ref().map(|a| a.kv_identity()), &prompt_tokens),
			false => Vec::new(),
		};
		// At least the prompt's last token is computed: its logits give the first answer token.
		let reusable = (prompt_tokens.len().saturating_sub(1) / BLOCK_TOKENS).min(prefix.len());
		let cache = pool.cache_with_prefix(&prefix[..reusable]);
		let shared = Shared {
			prompt_tokens,
			max_tokens,
			sampling,
			stop,
			adapter,
			choices: choices.max(1),
			logprobs,
			cached_tokens: cache.len(),
			events,
			_permit: permit,
		};
		Self { prefix, ..Self::answer(Arc::new(shared), 0, constraint, cache) }
	}

	/// Answer `choice` of `request`, with what is already in `cache`.
	fn answer(request: Arc<Shared>, choice: usize, constraint: Option<Constraint>, cache: KvCache) -> Self {
		let mut sampling = request.sampling.clone();
		sampling.seed = sampling.seed.wrapping_add(choice as u64);
		Self {
			adapter_key: request.adapter.as_ref().map(|a| a.hash),
			choice,
			constraint,
			prefilled: cache.len().min(request.prompt_tokens.len()),
			cache,
			next_input: None,
			sampler: Sampler::new(&sampling),
			decoder: IncrementalDecoder::new(),
			text: String::new(),
			sent: 0,
			chars: 0,
			sent_chars: 0,
			logprobs: Vec::new(),
			prefix: Vec::new(),
			output: Vec::new(),
			request,
		}
	}

	/// The request's other answers, once its prompt is in: they share its cached prompt and
	/// start from the same logits.
	fn fork_answers(&self) -> candle_core::Result<Vec<Sequence>> {
		(1..self.request.choices)
			.map(|choice| {
				let constraint = self.constraint.as_ref().map(Constraint::fork);
				Ok(Self::answer(self.request.clone(), choice, constraint, self.cache.fork()?))
			})
			.collect()
	}

	/// The sequences this one stands for in the batch: all its request's answers until the
	/// prompt is in and the others fork from it.
	fn load(&self) -> usize {
		if self.choice == 0 && self.next_input.is_none() { self.request.choices } else { 1 }
	}

	/// KV blocks the other answers' forks take from the pool when the prompt is in: a copy of
	/// the last block each, where it is partly filled.
	fn fork_blocks(&self) -> usize {
		if self.request.prompt_tokens.len() % BLOCK_TOKENS == 0 { 0 } else { self.request.choices - 1 }
	}

	/// Length of the longest suffix of the text that could still grow into a stop sequence:
	/// that much is held back from the stream.
	fn held_back(&self) -> usize {
		let text = &self.text[self.sent..];
		let mut held = 0;
		for stop in &self.request.stop {
			for len in (1..stop.len()).rev() {
				if len > held && text.len() >= len && text.is_char_boundary(text.len() - len) &&
					stop.starts_with(&text[text.len() - len..])
				{
					held = len;
					break;
				}
			}
		}
		held
	}

	/// Sends the text from `sent` up to `end`, with the log-probabilities of the tokens whose
	/// text starts in what has been sent (all that are left when `last`); false when the
	/// client has gone.
	fn send_text(&mut self, end: usize, last: bool) -> bool {
		let piece = self.text[self.sent..end].to_string();
		self.sent = end;
		self.sent_chars += piece.chars().count();
		let ready = if last { self.logprobs.len() } else { self.logprobs.partition_point(|l| l.text_offset < self.sent_chars) };
		let logprobs = self.logprobs.drain(..ready).collect();
		let event = GenerationEvent::Text { choice: self.choice, text: piece, completion_tokens: self.output.len(), logprobs };
		self.request.events.send(event).is_ok()
	}

	/// Picks the next token from this sequence's row of logits (masked by its grammar) and
	/// takes it; returns `Some(ending)` when the sequence is finished.
	fn sample(&mut self, codec: &TextCodec, mut row: Vec<f32>) -> Option<Ending> {
		// Log-probabilities are the model's: taken before the mask.
		let raw = (self.constraint.is_some() && self.request.logprobs.is_some()).then(|| row.clone());
		if let Some(constraint) = &mut self.constraint {
			if let Err(e) = constraint.mask(&mut row) {
				return Some(Ending::Failed(format!("constrained decoding failed: {e}")));
			}
		}
		let token = self.sampler.sample(&row);
		let logprob = self.request.logprobs.map(|top| {
			let (logprob, top) = logprobs(raw.as_deref().unwrap_or(&row), token, top);
			TokenLogprob { token, logprob, top, text_offset: 0 }
		});
		self.accept_token(codec, token, logprob).map(Ending::Finished).or_else(|| self.grammar_ending(codec, token))
	}

	/// The end a grammar gives the sequence: finished when its output is complete, failed when
	/// the token was not the grammar's (it was masked, so that is a bug).
	fn grammar_ending(&mut self, codec: &TextCodec, token: u32) -> Option<Ending> {
		let constraint = self.constraint.as_mut()?;
		if let Err(e) = constraint.accept(token) {
			return Some(Ending::Failed(format!("constrained decoding failed: {e}")));
		}
		if !constraint.is_complete() {
			return None;
		}
		self.flush(codec);
		Some(Ending::Finished(FinishReason::Stop))
	}

	/// Takes what the decoder still holds back into the text.
	fn flush(&mut self, codec: &TextCodec) {
		if let Ok(Some(rest)) = self.decoder.flush(codec) {
			self.chars += rest.chars().count();
			self.text.push_str(&rest);
		}
	}

	/// Takes a sampled token into the text; returns `Some(reason)` when that finishes it.
	fn accept_token(&mut self, codec: &TextCodec, token: u32, logprob: Option<TokenLogprob>) -> Option<FinishReason> {
		if codec.eos_token_ids().contains(&token) {
			return Some(FinishReason::Stop);
		}
		self.next_input = Some(token);
		self.output.push(token);
		if let Some(logprob) = logprob {
			self.logprobs.push(TokenLogprob { text_offset: self.chars, ..logprob });
		}
		match self.decoder.push(codec, token) {
			Ok(Some(piece)) => {
				self.chars += piece.chars().count();
				self.text.push_str(&piece);
			},
			Ok(None) => {},
			Err(e) => tracing::warn!("detokenizing token {token}: {e}"),
		}
		let search_from = self.sent.saturating_sub(self.request.stop.iter().map(String::len).max().unwrap_or(0));
		let search_from = (0..=search_from).rev().find(|&i| self.text.is_char_boundary(i)).unwrap_or(0);
		let stop_at = self
			.request
			.stop
			.iter()
			.filter_map(|s| self.text[search_from..].find(s.as_str()).map(|i| search_from + i))
			.min();
		if let Some(at) = stop_at {
			self.text.truncate(at);
			// The stop sequence's own tokens are not part of the answer.
			self.chars = self.text.chars().count();
			let chars = self.chars;
			self.logprobs.retain(|l| l.text_offset < chars);
			return Some(FinishReason::Stop);
		}
		if self.output.len() >= self.request.max_tokens {
			return Some(FinishReason::Length);
		}
		let ready = self.text.len() - self.held_back();
		if ready > self.sent && !self.send_text(ready, false) {
			// The client went away: finish quietly, nobody is listening.
			return Some(FinishReason::Stop);
		}
		None
	}

	/// Keeps the full blocks of the prompt and the answer so far for reuse: a chat's next turn,
	/// or an agent's next round, starts with both.
	fn keep_answer_blocks(&self, pool: &KvPool) {
		let prompt = &self.request.prompt_tokens;
		let tokens: Vec<u32> = prompt.iter().chain(&self.output).take(self.cache.len()).copied().collect();
		let adapter = self.request.adapter.as_ref().map(|a| a.kv_identity());
		pool.keep_prefix(&self.cache, &pool.prefix_keys(adapter, &tokens));
	}

	/// The event that ends this answer: for a finished sequence the rest of its text (and
	/// log-probabilities) is sent first, then `Done`.
	fn last_event(&mut self, codec: &TextCodec, ending: Ending) -> GenerationEvent {
		let reason = match ending {
			Ending::Failed(message) => return GenerationEvent::Failed(message),
			Ending::Finished(reason) => reason,
		};
		if reason == FinishReason::Length {
			self.flush(codec);
		}
		if self.text.len() > self.sent || !self.logprobs.is_empty() {
			self.send_text(self.text.len(), true);
		}
		let usage = Usage {
			prompt_tokens: self.request.prompt_tokens.len(),
			completion_tokens: self.output.len(),
			cached_tokens: self.request.cached_tokens,
		};
		GenerationEvent::Done { choice: self.choice, finish_reason: reason, usage }
	}
}

/// How a sequence leaves the batch.
enum Ending {
	Finished(FinishReason),
	/// The client is told why.
	Failed(String),
}

pub(super) fn run(
	model: Arc<Llama>,
	codec: Arc<TextCodec>,
	options: EngineOptions,
	pool: KvPool,
	inbox: mpsc::Receiver<GenerationRequest>,
	counters: Arc<EngineCounters>,
) {
	let mut active: Vec<Sequence> = Vec::new();
	let mut open = true;
	// Where finished answers' blocks are kept for reuse: the pool, with the prefix cache on.
	let keep = options.prefix_cache.then_some(&pool);
	tracing::info!(?options, "engine started");
	loop {
		// A request still prefilling counts as all the answers it will fork into.
		while open && active.iter().map(Sequence::load).sum::<usize>() < options.max_batch_sequences {
			let next = if active.is_empty() {
				inbox.recv().map_err(|_| mpsc::TryRecvError::Disconnected)
			} else {
				inbox.try_recv()
			};
			match next {
				Ok(request) => {
					counters.waiting_requests.fetch_sub(1, Ordering::Relaxed);
					counters.prompt_tokens_total.fetch_add(request.prompt_tokens.len() as u64, Ordering::Relaxed);
					let seq = Sequence::new(request, &pool, options.prefix_cache);
					counters.prompt_tokens_cached_total.fetch_add(seq.request.cached_tokens as u64, Ordering::Relaxed);
					active.push(seq);
				},
				Err(mpsc::TryRecvError::Empty) => break,
				Err(mpsc::TryRecvError::Disconnected) => open = false,
			}
		}
		// A request whose client hung up is dropped before it costs another step.
		active.retain(|s| !s.request.events.is_closed());
		counters.active_sequences.store(active.len() as u64, Ordering::Relaxed);
		if active.is_empty() {
			if open {
				continue;
			}
			break;
		}
		// Adjacent sequences with one adapter form one LoRA group in the forward pass.
		active.sort_by_key(|s| s.adapter_key);
		let started = Instant::now();
		let mut budget = options.prefill_chunk_tokens;
		let mut plan: Vec<(usize, Vec<u32>)> = Vec::with_capacity(active.len());
		let mut finished: Vec<(usize, Ending)> = Vec::new();
		// The first prompt chunk that found no room in the KV cache: it waits for blocks.
		let mut waiting = None;
		for (i, seq) in active.iter_mut().enumerate() {
			let decoding = seq.next_input.is_some();
			let tokens = match seq.next_input {
				Some(token) => vec![token],
				None if budget > 0 => {
					let prompt = &seq.request.prompt_tokens;
					let take = (prompt.len() - seq.prefilled).min(budget);
					// The last chunk waits until the pool also holds the forks' copied blocks.
					let last = seq.prefilled + take == prompt.len();
					let needed = (seq.cache.len() + take).div_ceil(BLOCK_TOKENS).saturating_sub(seq.cache.blocks().len());
					let available = pool.available_blocks();
					if last && seq.fork_blocks() > 0 && available < needed + seq.fork_blocks() {
						let full = KvPoolFull { needed: needed + seq.fork_blocks(), free: available, max_blocks: pool.max_tokens() / BLOCK_TOKENS };
						waiting.get_or_insert((i, full));
						continue;
					}
					prompt[seq.prefilled..seq.prefilled + take].to_vec()
				},
				None => continue,
			};
			match seq.cache.reserve(tokens.len()) {
				Ok(()) => {
					if !decoding {
						budget -= tokens.len();
					}
					plan.push((i, tokens));
				},
				// A decoding sequence that cannot grow ends here, as if at its token limit:
				// its blocks then let the others go on.
				Err(full) if decoding => {
					tracing::warn!("ending a sequence at {} tokens: {full}", seq.cache.len());
					finished.push((i, Ending::Finished(FinishReason::Length)));
				},
				Err(full) => {
					waiting.get_or_insert((i, full));
				},
			}
		}
		if plan.is_empty() {
			// Nothing can run: the waiting prompt would wait forever, so it fails instead.
			if let (Some((i, full)), true) = (waiting, finished.is_empty()) {
				finished.push((i, Ending::Failed(format!("the prompt does not fit: {full}"))));
			}
			retire(&mut active, finished, &codec, &counters, keep);
			continue;
		}
		let logits = {
			let mut steps: Vec<SeqStep<'_>> = Vec::with_capacity(plan.len());
			// The grammars of the sequences that sample after this step.
			let mut masking: Vec<&mut Constraint> = Vec::new();
			let mut rest: &mut [Sequence] = &mut active;
			let mut offset = 0;
			for (i, tokens) in &plan {
				let (_, tail) = std::mem::take(&mut rest).split_at_mut(i - offset);
				let (seq, tail) = tail.split_first_mut().expect("planned index is in range");
				offset = i + 1;
				rest = tail;
				let samples = seq.next_input.is_some() || seq.prefilled + tokens.len() >= seq.request.prompt_tokens.len();
				if let (Some(constraint), true) = (seq.constraint.as_mut(), samples) {
					masking.push(constraint);
				}
				steps.push(SeqStep {
					tokens,
					adapter: seq.request.adapter.as_deref(),
					cache: &mut seq.cache,
				});
			}
			// The next tokens' masks are computed while the forward pass runs, off its path.
			std::thread::scope(|scope| {
				let masks = (!masking.is_empty()).then(|| {
					scope.spawn(move || masking.into_iter().for_each(Constraint::prepare))
				});
				// Sampling runs on the host: one copy of all rows' logits per step, not one per row.
				let logits = model
					.forward(&mut steps)
					.and_then(|l| l.to_dtype(candle_core::DType::F32))
					.and_then(|l| l.to_device(&candle_core::Device::Cpu));
				if let Some(Err(panic)) = masks.map(|m| m.join()) {
					std::panic::resume_unwind(panic);
				}
				logits
			})
		};
		let logits = match logits {
			Ok(logits) => logits,
			Err(e) => {
				tracing::error!("forward pass failed: {e}");
				finished.extend(plan.iter().map(|(i, _)| (*i, Ending::Failed(format!("inference failed: {e}")))));
				retire(&mut active, finished, &codec, &counters, keep);
				continue;
			},
		};
		let mut forks: Vec<(Sequence, Vec<f32>)> = Vec::new();
		for (row, (i, tokens)) in plan.iter().enumerate() {
			let seq = &mut active[*i];
			if seq.next_input.is_none() {
				seq.prefilled += tokens.len();
				if seq.prefilled < seq.request.prompt_tokens.len() {
					continue;
				}
				// The prompt is in: its full blocks are kept for the prompts that start the same.
				pool.keep_prefix(&seq.cache, &std::mem::take(&mut seq.prefix));
			}
			let row = match logits.get(row).and_then(|l| l.to_vec1::<f32>()) {
				Ok(row) => row,
				Err(e) => {
					finished.push((*i, Ending::Failed(format!("sampling failed: {e}"))));
					continue;
				},
			};
			// The prompt is in: the request's other answers start here, from the same logits.
			if seq.next_input.is_none() && seq.request.choices > 1 {
				match seq.fork_answers() {
					Ok(answers) => forks.extend(answers.into_iter().map(|answer| (answer, row.clone()))),
					Err(e) => {
						finished.push((*i, Ending::Failed(format!("starting the other answers failed: {e}"))));
						continue;
					},
				}
			}
			counters.generated_tokens_total.fetch_add(1, Ordering::Relaxed);
			if let Some(ending) = seq.sample(&codec, row) {
				finished.push((*i, ending));
			}
		}
		for (mut answer, row) in forks {
			counters.generated_tokens_total.fetch_add(1, Ordering::Relaxed);
			let ending = answer.sample(&codec, row);
			active.push(answer);
			if let Some(ending) = ending {
				finished.push((active.len() - 1, ending));
			}
		}
		retire(&mut active, finished, &codec, &counters, keep);
		counters.steps_total.fetch_add(1, Ordering::Relaxed);
		counters.step_micros_total.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
		counters.kv_cache_bytes.store(pool.allocated_bytes() as u64, Ordering::Relaxed);
	}
	counters.active_sequences.store(0, Ordering::Relaxed);
	tracing::info!("engine stopped: no more requests");
}

/// Removes the finished sequences from `active` and then tells each client how it ended. The
/// last event goes out only once the sequence is dropped (its admission permit, adapter lease
/// and KV blocks given back) and counted, so a client holding its answer finds the worker
/// already free of it: a client sending requests one after another is never refused for its
/// own previous request, and `/metrics` read after an answer counts it. A finished answer's
/// blocks are kept in `keep`, the pool, when given.
fn retire(
	active: &mut Vec<Sequence>,
	mut finished: Vec<(usize, Ending)>,
	codec: &TextCodec,
	counters: &EngineCounters,
	keep: Option<&KvPool>,
) {
	// Descending, so each `swap_remove` moves in a sequence that is not finished.
	finished.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
	let mut requests_done = 0;
	let last_events: Vec<_> = finished
		.into_iter()
		.map(|(i, ending)| {
			let mut seq = active.swap_remove(i);
			if let (Some(pool), Ending::Finished(_)) = (keep, &ending) {
				seq.keep_answer_blocks(pool);
			}
			// The request is done with its last answer (the others already dropped).
			requests_done += u64::from(Arc::strong_count(&seq.request) == 1);
			(seq.request.events.clone(), seq.last_event(codec, ending))
		})
		.collect();
	counters.requests_finished_total.fetch_add(requests_done, Ordering::Relaxed);
	counters.active_sequences.store(active.len() as u64, Ordering::Relaxed);
	for (events, event) in last_events {
		let _ = events.send(event);
	}
}
