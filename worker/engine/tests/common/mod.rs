//! What the engine's tests on the real SmolLM2 share: the model, loaded once per test binary, an
//! engine over it, chat prompts, and a finished generation's output.

use std::sync::OnceLock;

use candle_core::Device;
use openledger_engine::{
	base::{find_default_model, BaseModel},
	engine::{EngineHandle, EngineOptions, FinishReason, GenerationEvent},
	tokenizer::ChatMessage,
};
use tokio::sync::mpsc;

pub fn base() -> &'static BaseModel {
	static BASE: OnceLock<BaseModel> = OnceLock::new();
	BASE.get_or_init(|| {
		let path = find_default_model().expect("SmolLM2 must be present: run scripts/setup.sh");
		BaseModel::load(&path, None, &Device::Cpu).expect("loading SmolLM2")
	})
}

pub fn engine() -> EngineHandle {
	let base = base();
	EngineHandle::spawn(base.model.clone(), base.codec.clone(), EngineOptions::default())
}

/// `question` as the user's turn, through the chat template.
pub fn chat_prompt(question: &str) -> Vec<u32> {
	let messages = [ChatMessage::new("user", question)];
	base().codec.encode_chat(&messages, true).unwrap()
}

pub struct Output {
	pub text: String,
	pub finish: FinishReason,
	pub completion_tokens: usize,
	/// Prompt tokens reused from an earlier prompt's kept blocks (not every test binary reads it).
	#[allow(dead_code)]
	pub cached_tokens: usize,
}

/// The whole text of a generation, once it is done; a failure fails the test.
pub async fn collect(mut rx: mpsc::UnboundedReceiver<GenerationEvent>) -> Output {
	let mut text = String::new();
	while let Some(event) = rx.recv().await {
		match event {
			GenerationEvent::Text { text: t, .. } => text.push_str(&t),
			GenerationEvent::Done { finish_reason, usage, .. } =>
				return Output { text, finish: finish_reason, completion_tokens: usage.completion_tokens, cached_tokens: usage.cached_tokens },
			GenerationEvent::Failed(e) => panic!("generation failed: {e}"),
		}
	}
	panic!("the engine dropped the request without finishing it");
}
