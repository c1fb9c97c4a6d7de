//! SentencePiece as GGUF gives it (tokens, scores and types, no merges) and as llama.cpp runs
//! it: start from the text's characters and keep merging the adjacent pair whose joined text
//! is the best-scoring token, leftmost first; what no token covers is spelt in byte tokens
//! (`<0x0A>`).
//!
//! `tokenizers` has no such model: a BPE whose merges are every way of making each token from
//! two others, ranked by score, tokenizes the same, but for Gemma 3's 262,144 tokens its maps
//! (both ways, and 514,847 merges) took about 50 MB. This holds the texts once, in one string,
//! and finds a token by binary search over ids sorted by text: about 5 MB.

use std::{cmp::Ordering, collections::BinaryHeap, collections::HashMap, path::Path, path::PathBuf};

use tokenizers::Token;

use super::gguf::{TOKEN_TYPE_NORMAL, TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_USER_DEFINED};

/// SentencePiece's word boundary: spaces are this character in its vocabulary.
pub(super) const SPM_SPACE: char = '\u{2581}';

pub struct SentencePiece {
	/// Every token's text, one after another: token `i` ends at `ends[i]`.
	text: String,
	ends: Vec<u32>,
	scores: Vec<f32>,
	/// Token ids in the order of their texts (equal texts by id).
	by_text: Vec<u32>,
	/// Whether merging may make the token: normal and user-defined ones, never a control
	/// token, so text cannot become one.
	mergeable: Vec<bool>,
	/// The ids of `<0x00>` … `<0xFF>`.
	byte_ids: [Option<u32>; 256],
	unknown: Option<u32>,
}

/// Two adjacent symbols whose joined text is a token: merged best score first, then leftmost.
struct Bigram {
	score: f32,
	left: usize,
	right: usize,
	len: usize,
}

impl Ord for Bigram {
	fn cmp(&self, other: &Self) -> Ordering {
		self.score.total_cmp(&other.score).then(other.left.cmp(&self.left))
	}
}

impl PartialOrd for Bigram {
	fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
		Some(self.cmp(other))
	}
}

impl PartialEq for Bigram {
	fn eq(&self, other: &Self) -> bool {
		self.cmp(other) == Ordering::Equal
	}
}

impl Eq for Bigram {}

/// A stretch of the text being tokenized, linked to its neighbours; `len` 0 once merged away.
#[derive(Clone, Copy)]
struct Symbol {
	start: usize,
	len: usize,
	prev: Option<usize>,
	next: Option<usize>,
}

impl SentencePiece {
	/// The vocabulary of `tokens` with their `scores` and GGUF token `types` (a missing type is
	/// normal).
	pub fn new(tokens: &[String], scores: &[f32], types: &[i64]) -> anyhow::Result<Self> {
		anyhow::ensure!(
			scores.len() == tokens.len(),
			"GGUF has {} SentencePiece tokens but {} scores",
			tokens.len(),
			scores.len()
		);
		anyhow::ensure!(u32::try_from(tokens.len()).is_ok(), "GGUF has {} tokens", tokens.len());
		let kind = |i: usize| types.get(i).copied().unwrap_or(TOKEN_TYPE_NORMAL);
		let mut text = String::with_capacity(tokens.iter().map(String::len).sum());
		let mut ends = Vec::with_capacity(tokens.len());
		for token in tokens {
			text.push_str(token);
			ends.push(u32::try_from(text.len()).map_err(|_| anyhow::anyhow!("GGUF tokens take over 4 GB"))?);
		}
		let mut by_text: Vec<u32> = (0..tokens.len() as u32).collect();
		by_text.sort_by(|&a, &b| tokens[a as usize].cmp(&tokens[b as usize]).then(a.cmp(&b)));
		let mut model = Self {
			text,
			ends,
			scores: scores.to_vec(),
			by_text,
			mergeable: (0..tokens.len()).map(|i| matches!(kind(i), TOKEN_TYPE_NORMAL | TOKEN_TYPE_USER_DEFINED)).collect(),
			byte_ids: [None; 256],
			unknown: (0..tokens.len()).find(|&i| kind(i) == TOKEN_TYPE_UNKNOWN).map(|i| i as u32),
		};
		for byte in 0..=255u8 {
			model.byte_ids[byte as usize] = model.id(&format!("<0x{byte:02X}>"));
		}
		Ok(model)
	}

	fn token(&self, id: u32) -> Option<&str> {
		let i = id as usize;
		let end = *self.ends.get(i)? as usize;
		let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
		Some(&self.text[start..end])
	}

	/// The first id whose text is `text`, of any type.
	fn id(&self, text: &str) -> Option<u32> {
		let at = self.by_text.partition_point(|&id| self.token(id).expect("an id") < text);
		self.by_text.get(at).copied().filter(|&id| self.token(id) == Some(text))
	}

	/// The token merging may make of `text`.
	fn mergeable_id(&self, text: &str) -> Option<u32> {
		self.id(text).filter(|&id| self.mergeable[id as usize])
	}

	/// The bytes token `id` stands for: its text with `▁` as a space, or a byte token's byte.
	pub fn token_bytes(&self, id: u32) -> Vec<u8> {
		let Some(token) = self.token(id) else { return Vec::new() };
		let byte = token.strip_prefix("<0x").and_then(|t| t.strip_suffix('>')).and_then(|hex| u8::from_str_radix(hex, 16).ok());
		match byte {
			Some(byte) if token.len() == 6 && self.byte_ids[byte as usize] == Some(id) => vec![byte],
			_ => token.replace(SPM_SPACE, " ").into_bytes(),
		}
	}

	fn tokens_of(&self, sequence: &str) -> Vec<Token> {
		let mut symbols: Vec<Symbol> = Vec::new();
		for (start, c) in sequence.char_indices() {
			let i = symbols.len();
			symbols.push(Symbol { start, len: c.len_utf8(), prev: i.checked_sub(1), next: Some(i + 1) });
		}
		if let Some(last) = symbols.last_mut() {
			last.next = None;
		}
		let mut queue = BinaryHeap::new();
		let bigram = |symbols: &[Symbol], left: Option<usize>, right: Option<usize>| -> Option<Bigram> {
			let (left, right) = (left?, right?);
			let (l, r) = (symbols[left], symbols[right]);
			let id = self.mergeable_id(&sequence[l.start..r.start + r.len])?;
			Some(Bigram { score: self.scores[id as usize], left, right, len: l.len + r.len })
		};
		for i in 1..symbols.len() {
			queue.extend(bigram(&symbols, Some(i - 1), Some(i)));
		}
		while let Some(Bigram { left, right, len, .. }) = queue.pop() {
			// A pair one of whose symbols has merged since is stale.
			let (l, r) = (symbols[left], symbols[right]);
			if l.len == 0 || r.len == 0 || l.len + r.len != len {
				continue;
			}
			symbols[left].len = len;
			symbols[left].next = r.next;
			symbols[right].len = 0;
			if let Some(next) = r.next {
				symbols[next].prev = Some(left);
			}
			queue.extend(bigram(&symbols, l.prev, Some(left)));
			queue.extend(bigram(&symbols, Some(left), r.next));
		}
		let mut out = Vec::new();
		let mut at = (!symbols.is_empty()).then_some(0);
		while let Some(i) = at {
			let Symbol { start, len, next, .. } = symbols[i];
			let piece = &sequence[start..start + len];
			match self.mergeable_id(piece) {
				Some(id) => out.push(Token::new(id, piece.to_owned(), (start, start + len))),
				// A character no token covers, byte by byte.
				None => {
					for (j, &byte) in piece.as_bytes().iter().enumerate() {
						if let Some(id) = self.byte_ids[byte as usize].or(self.unknown) {
							let value = self.token(id).expect("an id").to_owned();
							out.push(Token::new(id, value, (start + j, start + j + 1)));
						}
					}
				},
			}
			at = next;
		}
		out
	}
}

impl tokenizers::Model for SentencePiece {
	type Trainer = tokenizers::models::TrainerWrapper;

	fn tokenize(&self, sequence: &str) -> tokenizers::Result<Vec<Token>> {
		Ok(self.tokens_of(sequence))
	}

	fn token_to_id(&self, token: &str) -> Option<u32> {
		self.id(token)
	}

	fn id_to_token(&self, id: u32) -> Option<String> {
		self.token(id).map(str::to_owned)
	}

	fn get_vocab(&self) -> HashMap<String, u32> {
		// The first id of a text, as `token_to_id` gives it.
		(0..self.ends.len() as u32).rev().map(|id| (self.token(id).expect("an id").to_owned(), id)).collect()
	}

	fn get_vocab_size(&self) -> usize {
		self.ends.len()
	}

	fn save(&self, _folder: &Path, _prefix: Option<&str>) -> tokenizers::Result<Vec<PathBuf>> {
		Err("a SentencePiece vocabulary read from GGUF is not saved as tokenizer files".into())
	}

	fn get_trainer(&self) -> Self::Trainer {
		// Never trained here; the trait asks for some trainer.
		tokenizers::models::bpe::BpeTrainer::default().into()
	}
}
