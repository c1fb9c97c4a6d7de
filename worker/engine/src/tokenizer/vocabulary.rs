//! The bytes each token id stands for: what a grammar's token trie is built from, and what a
//! log-probability names (a token may hold part of a character, so its text alone is not enough).

use tokenizers::Model;

use super::{SharedModel, TextCodec};

/// llguidance's mark before a special token's name, which keeps grammars' text from producing it.
const SPECIAL_MARKER: u8 = 0xff;

/// Every token's bytes, `vocab_size` entries (ids the tokenizer lacks are empty).
pub struct Vocabulary {
	words: Vec<Vec<u8>>,
}

impl Vocabulary {
	/// Reads the tokenizer's vocabulary (byte-level BPE or SentencePiece), widened to the
	/// model's `vocab_size` (its logits' width).
	pub fn new(codec: &TextCodec, vocab_size: usize) -> anyhow::Result<Self> {
		let mut words = match codec.tokenizer().get_model() {
			// Read directly: through `tokenizer.json`, Gemma 3's vocabulary took 330 MB for a moment.
			SharedModel::SentencePiece(model) => {
				let mut words: Vec<Vec<u8>> = (0..model.get_vocab_size() as u32).map(|id| model.token_bytes(id)).collect();
				for (id, added) in codec.tokenizer().get_added_tokens_decoder() {
					let mut bytes = added.content.into_bytes();
					if added.special {
						bytes.insert(0, SPECIAL_MARKER);
					}
					if words.len() <= id as usize {
						words.resize(id as usize + 1, Vec::new());
					}
					words[id as usize] = bytes;
				}
				words
			},
			SharedModel::Hf(_) => {
				let json: serde_json::Value = serde_json::from_str(
					&codec.tokenizer().to_string(false).map_err(|e| anyhow::anyhow!("serialising the tokenizer: {e}"))?,
				)?;
				llguidance::token_bytes_from_tokenizer_json(&json)?
			},
		};
		anyhow::ensure!(words.len() <= vocab_size, "the tokenizer has {} tokens, the model {vocab_size}", words.len());
		words.resize(vocab_size, Vec::new());
		Ok(Self::from_words(words))
	}

	/// A vocabulary of these tokens' bytes, special ones starting with 0xFF.
	pub fn from_words(words: Vec<Vec<u8>>) -> Self {
		Self { words }
	}

	/// The bytes of token `id` (a special token's name; empty for an id out of range).
	pub fn bytes(&self, id: u32) -> &[u8] {
		let word = self.words.get(id as usize).map_or(&[][..], Vec::as_slice);
		word.strip_prefix(&[SPECIAL_MARKER]).unwrap_or(word)
	}

	/// Every token's bytes with special tokens marked, as llguidance's token trie takes them.
	pub(crate) fn marked_words(&self) -> &[Vec<u8>] {
		&self.words
	}

	pub fn len(&self) -> usize {
		self.words.len()
	}

	pub fn is_empty(&self) -> bool {
		self.words.is_empty()
	}
}
