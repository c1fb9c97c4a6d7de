//! The codec's tokenizers over one shared model.

use std::{
	collections::HashMap,
	path::{Path, PathBuf},
	sync::Arc,
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokenizers::{
	models::TrainerWrapper, DecoderWrapper, Model, ModelWrapper, NormalizerWrapper, PostProcessorWrapper,
	PreTokenizerWrapper, Token, TokenizerImpl,
};

/// `tokenizers`' tokenizer over a [`SharedModel`]: its clones share the vocabulary.
pub type SharedTokenizer =
	TokenizerImpl<SharedModel, NormalizerWrapper, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper>;

/// A tokenizer model behind an `Arc`, so the codec's second tokenizer (special tokens' texts read
/// as text, for chats) shares the vocabulary instead of holding a copy: Gemma 3's 262,144 tokens
/// and 514,847 merges take about 55 MB. The model is only read after it is built.
#[derive(Clone)]
pub struct SharedModel(Arc<ModelWrapper>);

impl SharedModel {
	pub fn new(model: impl Into<ModelWrapper>) -> Self {
		Self(Arc::new(model.into()))
	}

	/// Whether `other` is this very model, not a copy.
	#[cfg(test)]
	pub fn is_shared_with(&self, other: &Self) -> bool {
		Arc::ptr_eq(&self.0, &other.0)
	}
}

impl Model for SharedModel {
	type Trainer = TrainerWrapper;

	fn tokenize(&self, sequence: &str) -> tokenizers::Result<Vec<Token>> {
		self.0.tokenize(sequence)
	}

	fn token_to_id(&self, token: &str) -> Option<u32> {
		self.0.token_to_id(token)
	}

	fn id_to_token(&self, id: u32) -> Option<String> {
		self.0.id_to_token(id)
	}

	fn get_vocab(&self) -> HashMap<String, u32> {
		self.0.get_vocab()
	}

	fn get_vocab_size(&self) -> usize {
		self.0.get_vocab_size()
	}

	fn save(&self, folder: &Path, prefix: Option<&str>) -> tokenizers::Result<Vec<PathBuf>> {
		self.0.save(folder, prefix)
	}

	fn get_trainer(&self) -> TrainerWrapper {
		self.0.get_trainer()
	}
}

/// The same JSON as the wrapped model's, so `tokenizer.json` reads and writes unchanged.
impl Serialize for SharedModel {
	fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
		self.0.serialize(serializer)
	}
}

impl<'de> Deserialize<'de> for SharedModel {
	fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
		ModelWrapper::deserialize(deserializer).map(Self::new)
	}
}
