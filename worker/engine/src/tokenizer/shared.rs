//! The codec's tokenizers over one shared model.

use std::{
	collections::HashMap,
	path::{Path, PathBuf},
	sync::Arc,
};

use serde::{ser::Error, Deserialize, Deserializer, Serialize, Serializer};
use tokenizers::{
	models::TrainerWrapper, DecoderWrapper, Model, ModelWrapper, NormalizerWrapper, PostProcessorWrapper,
	PreTokenizerWrapper, Token, TokenizerImpl,
};

use super::sentencepiece::SentencePiece;

/// `tokenizers`' tokenizer over a [`SharedModel`]: its clones share the vocabulary.
pub type SharedTokenizer =
	TokenizerImpl<SharedModel, NormalizerWrapper, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper>;

/// A tokenizer model behind an `Arc`, so the codec's second tokenizer (special tokens' texts read
/// as text, for chats) shares the vocabulary instead of holding a copy. The model is only read
/// after it is built.
#[derive(Clone)]
pub enum SharedModel {
	/// One of `tokenizers`' models: byte-level BPE from GGUF, anything from `tokenizer.json`.
	Hf(Arc<ModelWrapper>),
	/// A SentencePiece vocabulary from GGUF.
	SentencePiece(Arc<SentencePiece>),
}

impl SharedModel {
	pub fn new(model: impl Into<ModelWrapper>) -> Self {
		Self::Hf(Arc::new(model.into()))
	}

	/// Whether `other` is this very model, not a copy.
	#[cfg(test)]
	pub fn is_shared_with(&self, other: &Self) -> bool {
		match (self, other) {
			(Self::Hf(a), Self::Hf(b)) => Arc::ptr_eq(a, b),
			(Self::SentencePiece(a), Self::SentencePiece(b)) => Arc::ptr_eq(a, b),
			_ => false,
		}
	}

	fn model(&self) -> &dyn Model<Trainer = TrainerWrapper> {
		match self {
			Self::Hf(model) => &**model,
			Self::SentencePiece(model) => &**model,
		}
	}
}

impl Model for SharedModel {
	type Trainer = TrainerWrapper;

	fn tokenize(&self, sequence: &str) -> tokenizers::Result<Vec<Token>> {
		self.model().tokenize(sequence)
	}

	fn token_to_id(&self, token: &str) -> Option<u32> {
		self.model().token_to_id(token)
	}

	fn id_to_token(&self, id: u32) -> Option<String> {
		self.model().id_to_token(id)
	}

	fn get_vocab(&self) -> HashMap<String, u32> {
		self.model().get_vocab()
	}

	fn get_vocab_size(&self) -> usize {
		self.model().get_vocab_size()
	}

	fn save(&self, folder: &Path, prefix: Option<&str>) -> tokenizers::Result<Vec<PathBuf>> {
		self.model().save(folder, prefix)
	}

	fn get_trainer(&self) -> TrainerWrapper {
		self.model().get_trainer()
	}
}

/// The same JSON as the wrapped model's, so `tokenizer.json` reads and writes unchanged. A GGUF
/// SentencePiece vocabulary has no `tokenizer.json` form that tokenizes as llama.cpp does.
impl Serialize for SharedModel {
	fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
		match self {
			Self::Hf(model) => model.serialize(serializer),
			Self::SentencePiece(_) => Err(S::Error::custom("a GGUF SentencePiece vocabulary is not serialized")),
		}
	}
}

impl<'de> Deserialize<'de> for SharedModel {
	fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
		ModelWrapper::deserialize(deserializer).map(Self::new)
	}
}
