//! Prometheus metrics, written by hand in the text exposition format (version 0.0.4): a few
//! atomics and one small map are all the worker needs, so no metrics crate. Durations are
//! summaries with only `_sum` and `_count`, enough for rates and means.

use std::{
	collections::BTreeMap,
	fmt::Write,
	sync::{
		atomic::{AtomicU64, Ordering},
		Mutex,
	},
	time::Duration,
};

use openledger_engine::{adapters::CacheStats, engine::EngineStats};

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The generation endpoints, which get latency and token metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
	ChatCompletions,
	Completions,
}

impl Endpoint {
	pub const ALL: [Endpoint; 2] = [Endpoint::ChatCompletions, Endpoint::Completions];

	pub fn path(self) -> &'static str {
		match self {
			Endpoint::ChatCompletions => "/v1/chat/completions",
			Endpoint::Completions => "/v1/completions",
		}
	}
}

/// A running sum (in microseconds) and count.
#[derive(Default, Debug)]
struct SumCount {
	micros: AtomicU64,
	count: AtomicU64,
}

impl SumCount {
	fn observe(&self, d: Duration) {
		self.micros.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
		self.count.fetch_add(1, Ordering::Relaxed);
	}

	fn seconds(&self) -> f64 {
		self.micros.load(Ordering::Relaxed) as f64 / 1e6
	}

	fn count(&self) -> u64 {
		self.count.load(Ordering::Relaxed)
	}
}

#[derive(Default, Debug)]
struct GenerationMetrics {
	/// From the request's arrival to its last byte (streams included).
	duration: SumCount,
	/// From the request's arrival to its first generated text.
	ttft: SumCount,
	prompt_tokens: AtomicU64,
	completion_tokens: AtomicU64,
	/// Generations that ended with the engine failing, or the client gone before the end.
	failed: AtomicU64,
	disconnected: AtomicU64,
}

/// How one generation ended, for [`Metrics::observe_generation`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
	/// Answered in full.
	Finished,
	/// Refused or failed (the status says why).
	Failed,
	/// The client went away first.
	Disconnected,
}

/// The HTTP layer's metrics. Engine and adapter-cache numbers are read from their own stats when
/// rendering, so they are never counted twice.
#[derive(Default, Debug)]
pub struct Metrics {
	/// Responses by route (the matched path pattern, so its cardinality is bounded) and status.
	responses: Mutex<BTreeMap<(String, u16), u64>>,
	generation: [GenerationMetrics; 2],
}

impl Metrics {
	pub fn new() -> Self {
		Self::default()
	}

	fn endpoint(&self, endpoint: Endpoint) -> &GenerationMetrics {
		&self.generation[endpoint as usize]
	}

	/// Counts one response as it is sent (for a stream: when its headers are).
	pub fn count_response(&self, route: &str, status: u16) {
		let mut map = self.responses.lock().unwrap_or_else(|e| e.into_inner());
		*map.entry((route.to_owned(), status)).or_default() += 1;
	}

	/// Records a generation request once it is over, however it ended.
	pub fn observe_generation(
		&self,
		endpoint: Endpoint,
		outcome: Outcome,
		duration: Duration,
		ttft: Option<Duration>,
		prompt_tokens: usize,
		completion_tokens: usize,
	) {
		let m = self.endpoint(endpoint);
		m.duration.observe(duration);
		if let Some(ttft) = ttft {
			m.ttft.observe(ttft);
		}
		m.prompt_tokens.fetch_add(prompt_tokens as u64, Ordering::Relaxed);
		m.completion_tokens.fetch_add(completion_tokens as u64, Ordering::Relaxed);
		match outcome {
			Outcome::Finished => {}
			Outcome::Failed => {
				m.failed.fetch_add(1, Ordering::Relaxed);
			}
			Outcome::Disconnected => {
				m.disconnected.fetch_add(1, Ordering::Relaxed);
			}
		}
	}

	/// The whole exposition: HTTP metrics, the admission queue, the engine and the adapter cache.
	pub fn render(
		&self,
		engine: &EngineStats,
		cache: &CacheStats,
		queue_in_use: usize,
		queue_capacity: usize,
	) -> String {
		let mut out = Exposition::default();

		out.header("openledger_worker_http_requests_total", "counter", "HTTP responses by route and status.");
		{
			let map = self.responses.lock().unwrap_or_else(|e| e.into_inner());
			for ((route, status), n) in map.iter() {
				out.sample(
					"openledger_worker_http_requests_total",
					&[("endpoint", route), ("status", &status.to_string())],
					*n as f64,
				);
			}
		}

		let per_endpoint: [(&str, &str, &str, fn(&GenerationMetrics) -> f64); 4] = [
			(
				"openledger_worker_request_prompt_tokens_total",
				"counter",
				"Prompt tokens of generation requests, as the engine reported them.",
				|m| m.prompt_tokens.load(Ordering::Relaxed) as f64,
			),
			(
				"openledger_worker_request_completion_tokens_total",
				"counter",
				"Completion tokens sent to clients.",
				|m| m.completion_tokens.load(Ordering::Relaxed) as f64,
			),
			(
				"openledger_worker_request_failures_total",
				"counter",
				"Generation requests refused or failed.",
				|m| m.failed.load(Ordering::Relaxed) as f64,
			),
			(
				"openledger_worker_request_disconnects_total",
				"counter",
				"Generation requests whose client left before the end.",
				|m| m.disconnected.load(Ordering::Relaxed) as f64,
			),
		];
		for (name, kind, help, value) in per_endpoint {
			out.header(name, kind, help);
			for e in Endpoint::ALL {
				out.sample(name, &[("endpoint", e.path())], value(self.endpoint(e)));
			}
		}

		let summaries: [(&str, &str, fn(&GenerationMetrics) -> &SumCount); 2] = [
			(
				"openledger_worker_request_duration_seconds",
				"Generation request latency, arrival to last byte.",
				|m| &m.duration,
			),
			(
				"openledger_worker_time_to_first_token_seconds",
				"Arrival to the first generated text.",
				|m| &m.ttft,
			),
		];
		for (name, help, field) in summaries {
			out.header(name, "summary", help);
			for e in Endpoint::ALL {
				let s = field(self.endpoint(e));
				out.sample(&format!("{name}_sum"), &[("endpoint", e.path())], s.seconds());
				out.sample(&format!("{name}_count"), &[("endpoint", e.path())], s.count() as f64);
			}
		}

		out.gauge("openledger_worker_queue_in_flight", "Admitted requests not yet finished.", queue_in_use as f64);
		out.gauge("openledger_worker_queue_capacity", "Most admitted requests at once.", queue_capacity as f64);

		out.gauge("openledger_worker_engine_active_sequences", "Sequences in the running batch.", engine.active_sequences as f64);
		out.gauge(
			"openledger_worker_engine_kv_cache_bytes",
			"Bytes the paged key/value cache has allocated; it grows with use up to its limit.",
			engine.kv_cache_bytes as f64,
		);
		out.gauge(
			"openledger_worker_engine_waiting_requests",
			"Requests submitted to the engine and not yet running.",
			engine.waiting_requests as f64,
		);
		out.counter(
			"openledger_worker_engine_prompt_tokens_total",
			"Prompt tokens the engine took in, cached ones included.",
			engine.prompt_tokens_total as f64,
		);
		out.counter(
			"openledger_worker_engine_prompt_tokens_cached_total",
			"Prompt tokens whose keys and values were reused from an earlier prompt (prefix cache).",
			engine.prompt_tokens_cached_total as f64,
		);
		out.counter(
			"openledger_worker_engine_generated_tokens_total",
			"Tokens the engine generated.",
			engine.generated_tokens_total as f64,
		);
		out.counter(
			"openledger_worker_engine_requests_finished_total",
			"Requests the engine finished.",
			engine.requests_finished_total as f64,
		);
		out.counter("openledger_worker_engine_steps_total", "Forward steps run.", engine.steps_total as f64);
		out.counter(
			"openledger_worker_engine_step_seconds_total",
			"Time spent in forward steps.",
			engine.step_seconds_total,
		);

		render_cache(&mut out, cache);
		out.text
	}
}

fn render_cache(out: &mut Exposition, cache: &CacheStats) {
	let counters = [
		("openledger_worker_adapter_cache_hits_total", "Adapter acquisitions that found it resident.", cache.hits as f64),
		("openledger_worker_adapter_cache_misses_total", "Adapter acquisitions that had to wait for a load.", cache.misses as f64),
		("openledger_worker_adapter_loads_total", "Adapter loads that finished.", cache.loads as f64),
		("openledger_worker_adapter_load_failures_total", "Adapter loads that failed.", cache.load_failures as f64),
		("openledger_worker_adapter_full_waits_total", "Requests that waited for room because every resident adapter was in use.", cache.full_waits as f64),
		("openledger_worker_adapter_load_seconds_total", "Time spent loading adapters.", cache.load_seconds_total),
		("openledger_worker_adapter_evictions_total", "Adapters dropped from residency.", cache.evictions as f64),
		("openledger_worker_adapter_host_hits_total", "Adapter loads served from the host tier (GPU workers).", cache.host_hits as f64),
	];
	for (name, help, value) in counters {
		out.counter(name, help, value);
	}
	let gauges = [
		("openledger_worker_adapter_last_load_seconds", "Duration of the latest adapter load.", cache.last_load_seconds),
		("openledger_worker_adapter_resident_bytes", "Bytes of resident adapter weights.", cache.resident_bytes as f64),
		("openledger_worker_adapter_host_bytes", "Bytes of adapter weights in the host tier (GPU workers).", cache.host_bytes as f64),
		("openledger_worker_adapter_resident", "Adapters resident now.", cache.resident_count as f64),
		("openledger_worker_adapter_registered", "Adapter names registered.", cache.registered as f64),
		("openledger_worker_adapter_loads_in_flight", "Adapter loads under way.", cache.loads_in_flight as f64),
	];
	for (name, help, value) in gauges {
		out.gauge(name, help, value);
	}
}

/// A text buffer with the few writers the exposition format needs.
#[derive(Default)]
struct Exposition {
	text: String,
}

impl Exposition {
	fn header(&mut self, name: &str, kind: &str, help: &str) {
		let _ = writeln!(self.text, "# HELP {name} {help}");
		let _ = writeln!(self.text, "# TYPE {name} {kind}");
	}

	fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
		self.text.push_str(name);
		if !labels.is_empty() {
			self.text.push('{');
			for (i, (key, value)) in labels.iter().enumerate() {
				if i > 0 {
					self.text.push(',');
				}
				let _ = write!(self.text, "{key}=\"{}\"", escape_label(value));
			}
			self.text.push('}');
		}
		let _ = writeln!(self.text, " {}", format_value(value));
	}

	fn counter(&mut self, name: &str, help: &str, value: f64) {
		self.header(name, "counter", help);
		self.sample(name, &[], value);
	}

	fn gauge(&mut self, name: &str, help: &str, value: f64) {
		self.header(name, "gauge", help);
		self.sample(name, &[], value);
	}
}

/// Label values escape `\`, `"` and newlines.
fn escape_label(value: &str) -> String {
	value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Rust prints floats without exponents (`0.000001`, `3`), which Prometheus parses; only the
/// non-finite values need the format's own spelling.
fn format_value(value: f64) -> String {
	if value.is_nan() {
		"NaN".into()
	} else if value.is_infinite() {
		if value > 0.0 { "+Inf" } else { "-Inf" }.into()
	} else {
		value.to_string()
	}
}
