//! Constrained decoding on the real SmolLM2-135M-Instruct: a grammar from a JSON schema holds
//! the model to valid JSON of that schema, greedy or sampled, beside free sequences in the same
//! batch; an output cut by `max_tokens` ends with `Length`; a schema the engine cannot honour is
//! refused when compiled.

mod common;

use common::{base, chat_prompt, collect, engine};
use openledger_engine::{
	engine::{EngineHandle, FinishReason, GenerationEvent, GenerationRequest, SamplingParams},
	grammar::{Grammar, Grammars},
	tokenizer::Vocabulary,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// A person: a name, an age, a colour from a list and a list of tags.
fn person_schema() -> Value {
	json!({
		"type": "object",
		"properties": {
			"name": {"type": "string", "maxLength": 20},
			"age": {"type": "integer", "minimum": 0, "maximum": 150},
			"colour": {"enum": ["red", "green", "blue"]},
			"tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 3}
		},
		"required": ["name", "age", "colour", "tags"],
		"additionalProperties": false
	})
}

/// Checks `value` against [`person_schema`] by hand.
fn check_person(value: &Value) {
	let object = value.as_object().unwrap_or_else(|| panic!("not an object: {value}"));
	let mut keys: Vec<_> = object.keys().map(String::as_str).collect();
	keys.sort_unstable();
	assert_eq!(keys, ["age", "colour", "name", "tags"], "{value}");
	assert!(object["name"].as_str().is_some_and(|n| n.chars().count() <= 20), "{value}");
	assert!(object["age"].as_u64().is_some_and(|a| a <= 150), "{value}");
	assert!(matches!(object["colour"].as_str(), Some("red" | "green" | "blue")), "{value}");
	let tags = object["tags"].as_array().unwrap_or_else(|| panic!("tags: {value}"));
	assert!(tags.len() <= 3 && tags.iter().all(|t| t.as_str().is_some_and(|t| t.chars().count() <= 10)), "{value}");
}

fn grammars() -> Grammars {
	Grammars::new(&Vocabulary::new(&base().codec, base().model.config.vocab_size).unwrap(), base().codec.eos_token_ids()).unwrap()
}

fn submit(engine: &EngineHandle, question: &str, max_tokens: usize, seed: u64, grammar: Option<&Grammar>) -> mpsc::UnboundedReceiver<GenerationEvent> {
	let (events, rx) = mpsc::unbounded_channel();
	let sampling = if seed == 0 { SamplingParams::default() } else { SamplingParams { temperature: 1.0, seed, ..SamplingParams::default() } };
	let constraint = grammar.map(|g| engine.grammars().unwrap().compile(g).unwrap());
	let request = GenerationRequest {
		prompt_tokens: chat_prompt(question),
		max_tokens,
		sampling,
		stop: Vec::new(),
		adapter: None,
		constraint,
		choices: 1,
		logprobs: None,
		events,
		permit: None,
	};
	engine.submit(request).unwrap();
	rx
}

#[tokio::test]
async fn greedy_and_sampled_outputs_follow_the_schema() {
	let engine = engine();
	let grammar = Grammar::JsonSchema(person_schema());
	let questions = ["Describe a person called Ada.", "Give me a JSON record of a sailor.", "Who are you?", "Write a haiku about rain."];
	let mut pending = Vec::new();
	for (i, question) in questions.iter().enumerate() {
		for seed in [0, 1 + i as u64, 100 + i as u64] {
			pending.push((question, submit(&engine, question, 200, seed, Some(&grammar))));
		}
	}
	for (question, rx) in pending {
		let out = collect(rx).await;
		assert_eq!(out.finish, FinishReason::Stop, "{question}: the object is complete: {:?}", out.text);
		let value: Value = serde_json::from_str(&out.text).unwrap_or_else(|e| panic!("{question}: {e}: {:?}", out.text));
		check_person(&value);
		assert!(!out.text.contains("<|"), "no special token in {:?}", out.text);
	}
}

#[tokio::test]
async fn json_object_and_free_sequences_share_a_batch() {
	let engine = engine();
	let constrained = submit(&engine, "List three fruits.", 120, 0, Some(&Grammar::JsonObject));
	let free = submit(&engine, "What is the capital of Germany?", 48, 0, None);
	let (constrained, free) = (collect(constrained).await, collect(free).await);
	assert!(free.text.contains("Berlin"), "the free sequence is unaffected: {:?}", free.text);
	match constrained.finish {
		FinishReason::Stop => {
			let value: Value = serde_json::from_str(&constrained.text).unwrap_or_else(|e| panic!("{e}: {:?}", constrained.text));
			assert!(value.is_object(), "{value}");
		},
		FinishReason::Length => assert_eq!(constrained.completion_tokens, 120),
	}
}

#[tokio::test]
async fn an_output_cut_by_max_tokens_ends_with_length() {
	let engine = engine();
	let out = collect(submit(&engine, "Describe a person called Ada.", 5, 0, Some(&Grammar::JsonSchema(person_schema())))).await;
	assert_eq!(out.finish, FinishReason::Length);
	assert_eq!(out.completion_tokens, 5);
	assert!(out.text.starts_with('{') && serde_json::from_str::<Value>(&out.text).is_err(), "a valid prefix: {:?}", out.text);
}

#[test]
fn schemas_the_engine_cannot_honour_are_refused_when_compiled() {
	let grammars = grammars();
	for (schema, why) in [
		(json!({"type": "string", "format": "no-such-format"}), "an unknown format"),
		(json!({"type": "integer", "minimum": 5, "maximum": 1}), "an unsatisfiable range"),
		(json!({"type": "object", "properties": {"a": {"$ref": "https://example.org/remote"}}}), "a remote $ref"),
		(json!({"type": "string", "pattern": "(?=a)b"}), "a look-ahead"),
	] {
		let error = grammars.compile(&Grammar::JsonSchema(schema)).err().unwrap_or_else(|| panic!("{why} was accepted"));
		assert!(!error.0.is_empty() && !error.0.contains('\n'), "{why}: {error}");
	}
	let lark = Grammar::Lark("start: \"yes\" | \"no\"".into());
	grammars.compile(&lark).expect("a plain Lark grammar compiles");
}
