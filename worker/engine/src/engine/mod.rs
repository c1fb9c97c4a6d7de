//! The engine: one thread that owns the model and runs continuous batching. Requests arrive on a
//! channel; every step runs one forward pass over all active sequences (prefill chunks and decode
//! tokens together, whatever their adapters), samples, and streams text back.

mod sampler;
mod scheduler;
mod types;

use std::sync::{
	atomic::{AtomicU64, Ordering},
	mpsc, Arc, OnceLock,
};

pub use scheduler::EngineOptions;
pub use types::{FinishReason, GenerationEvent, GenerationRequest, SamplingParams, TokenLogprob, Usage};

use crate::{
	grammar::Grammars,
	model::Llama,
	tokenizer::{TextCodec, Vocabulary},
};

/// The engine thread has stopped (shut down or crashed); the HTTP layer answers 503.
#[derive(Debug, thiserror::Error)]
#[error("the inference engine has stopped")]
pub struct EngineClosed;

/// Monotonic counters and gauges the engine publishes for `/metrics`.
#[derive(Default, Debug)]
pub struct EngineCounters {
	pub active_sequences: AtomicU64,
	pub waiting_requests: AtomicU64,
	pub prompt_tokens_total: AtomicU64,
	pub prompt_tokens_cached_total: AtomicU64,
	pub generated_tokens_total: AtomicU64,
	pub requests_finished_total: AtomicU64,
	pub steps_total: AtomicU64,
	pub step_micros_total: AtomicU64,
	/// Bytes the paged KV cache has allocated (it grows with use, up to its limit).
	pub kv_cache_bytes: AtomicU64,
}

/// A snapshot of [`EngineCounters`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EngineStats {
	pub active_sequences: u64,
	pub waiting_requests: u64,
	pub prompt_tokens_total: u64,
	pub prompt_tokens_cached_total: u64,
	pub generated_tokens_total: u64,
	pub requests_finished_total: u64,
	pub steps_total: u64,
	pub step_seconds_total: f64,
	pub kv_cache_bytes: u64,
}

/// Cheap to clone; dropping every handle lets the engine finish its work and exit.
#[derive(Clone)]
pub struct EngineHandle {
	requests: mpsc::Sender<GenerationRequest>,
	counters: Arc<EngineCounters>,
	thread: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
	context_length: usize,
	/// Built on first use: most requests never ask for a grammar or log-probabilities.
	vocabulary: Arc<OnceLock<Result<Arc<Vocabulary>, String>>>,
	grammars: Arc<OnceLock<Result<Grammars, String>>>,
	codec: Arc<TextCodec>,
	vocab_size: usize,
}

impl EngineHandle {
	/// Starts the engine thread.
	pub fn spawn(model: Arc<Llama>, codec: Arc<TextCodec>, options: EngineOptions) -> Self {
		let (requests, inbox) = mpsc::channel();
		let counters = Arc::new(EngineCounters::default());
		let thread_counters = counters.clone();
		let pool = options.kv_pool(&model);
		let context_length = model.config.max_position.min(pool.max_tokens());
		let vocab_size = model.config.vocab_size;
		let engine_codec = codec.clone();
		let thread = std::thread::Builder::new()
			.name("engine".into())
			.spawn(move || scheduler::run(model, engine_codec, options, pool, inbox, thread_counters))
			.expect("spawning the engine thread");
		Self {
			requests,
			counters,
			thread: Arc::new(std::sync::Mutex::new(Some(thread))),
			context_length,
			vocabulary: Arc::default(),
			grammars: Arc::default(),
			codec,
			vocab_size,
		}
	}

	/// The model's grammar compiler for constrained decoding, built the first time it is asked
	/// for (its token trie takes a moment: call this off the async workers).
	pub fn grammars(&self) -> Result<Grammars, String> {
		self.grammars
			.get_or_init(|| {
				let vocabulary = self.vocabulary()?;
				Grammars::new(&vocabulary, self.codec.eos_token_ids()).map_err(|e| format!("{e:#}"))
			})
			.clone()
	}

	/// The bytes of every token, read from the tokenizer the first time it is asked for (call
	/// this off the async workers).
	pub fn vocabulary(&self) -> Result<Arc<Vocabulary>, String> {
		self.vocabulary
			.get_or_init(|| Vocabulary::new(&self.codec, self.vocab_size).map(Arc::new).map_err(|e| format!("{e:#}")))
			.clone()
	}

	/// The most tokens a request's prompt and answer may take together: the model's context,
	/// or the whole KV cache if that is smaller.
	pub fn context_length(&self) -> usize {
		self.context_length
	}

	/// Queues an admitted request. Admission control (the bounded queue) is the caller's
	/// semaphore; this never blocks.
	pub fn submit(&self, request: GenerationRequest) -> Result<(), EngineClosed> {
		self.counters.waiting_requests.fetch_add(1, Ordering::Relaxed);
		self.requests.send(request).map_err(|_| {
			self.counters.waiting_requests.fetch_sub(1, Ordering::Relaxed);
			EngineClosed
		})
	}

	pub fn stats(&self) -> EngineStats {
		let c = &self.counters;
		EngineStats {
			active_sequences: c.active_sequences.load(Ordering::Relaxed),
			waiting_requests: c.waiting_requests.load(Ordering::Relaxed),
			prompt_tokens_total: c.prompt_tokens_total.load(Ordering::Relaxed),
			prompt_tokens_cached_total: c.prompt_tokens_cached_total.load(Ordering::Relaxed),
			generated_tokens_total: c.generated_tokens_total.load(Ordering::Relaxed),
			requests_finished_total: c.requests_finished_total.load(Ordering::Relaxed),
			steps_total: c.steps_total.load(Ordering::Relaxed),
			step_seconds_total: c.step_micros_total.load(Ordering::Relaxed) as f64 / 1e6,
			kv_cache_bytes: c.kv_cache_bytes.load(Ordering::Relaxed),
		}
	}

	/// Drops this handle's sender and waits for the engine to finish every queued and active
	/// request. Other clones of the handle must be dropped first, or this waits for them.
	pub fn shutdown(self) {
		let thread = self.thread.lock().ok().and_then(|mut t| t.take());
		drop(self.requests);
		if let Some(thread) = thread {
			let _ = thread.join();
		}
	}
}
