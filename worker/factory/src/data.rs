//! What an adapter is trained on: the accepted items of chosen DataNets, as tokens with the rows
//! that are trained on marked, cut to the sequence length and packed into sequences.
//!
//! An item's text is encoded as a document (special tokens' texts stay text). An item whose text
//! is a chat (`{"messages": [{"role", "content"}, …]}`) goes through the model's chat template,
//! and only its assistant turns are trained on, as supervised fine-tuning does.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use openledger_engine::tokenizer::{ChatMessage, TextCodec};
use openledger_knowledge::datanets::DataNetIndex;
use openledger_primitives::{ContentHash, DataNetId, ItemId};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};

use crate::model::Sequence;

/// One accepted item, tokenized.
#[derive(Clone, Debug)]
pub struct TrainingItem {
	pub datanet: DataNetId,
	pub item: ItemId,
	pub hash: ContentHash,
	pub tokens: Vec<u32>,
	/// Per token: whether the model is trained to predict it (never the first).
	pub trained: Vec<bool>,
}

impl TrainingItem {
	/// Tokens the loss covers.
	pub fn trained_tokens(&self) -> usize {
		self.trained.iter().filter(|&&t| t).count()
	}
}

/// The accepted items (those with an on-chain id) of each of `datanets` under `index_root`, in
/// the index's order; a DataNet with none is an error.
pub fn load_items(index_root: &Path, datanets: &[DataNetId], codec: &TextCodec) -> Result<Vec<TrainingItem>> {
	ensure!(!datanets.is_empty(), "no DataNet given (--datanet N)");
	let mut items = Vec::new();
	for (i, &datanet) in datanets.iter().enumerate() {
		ensure!(!datanets[..i].contains(&datanet), "DataNet {datanet} is named twice");
		let index = DataNetIndex::open(index_root, datanet)?;
		let before = items.len();
		for item in index.items() {
			let Some(chain_item) = item.chain_item else { continue };
			let (tokens, trained) = encode_item(&item.text, codec)
				.with_context(|| format!("DataNet {datanet} item {chain_item} ({})", item.source))?;
			items.push(TrainingItem { datanet, item: chain_item, hash: item.hash, tokens, trained });
		}
		if items.len() == before {
			bail!(
				"DataNet {datanet} has no accepted items in {} ({} items, none with an on-chain id: record them with `chain sync-items`)",
				index.dir().display(),
				index.len()
			);
		}
	}
	Ok(items)
}

/// An item's tokens and which are trained on: a chat's assistant turns, or a document's every
/// token after the first, with the model's end-of-text token after it.
pub fn encode_item(text: &str, codec: &TextCodec) -> Result<(Vec<u32>, Vec<bool>)> {
	if let Some(messages) = chat_messages(text)? {
		return encode_chat_item(&messages, codec);
	}
	let mut tokens = codec.encode_text(text)?;
	tokens.extend(codec.eos_token_ids().first());
	ensure!(tokens.len() >= 2, "the item has no text to train on");
	let trained = (0..tokens.len()).map(|i| i > 0).collect();
	Ok((tokens, trained))
}

/// The messages of a chat-format item, if it is one: a JSON object with `messages`. One whose
/// messages cannot be read is an error, not a document of JSON to train on.
fn chat_messages(text: &str) -> Result<Option<Vec<ChatMessage>>> {
	if !text.trim_start().starts_with('{') {
		return Ok(None);
	}
	let Ok(object) = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text) else { return Ok(None) };
	let Some(messages) = object.get("messages") else { return Ok(None) };
	let messages: Vec<ChatMessage> = serde_json::from_value(messages.clone())
		.context("a chat item's `messages` must be a list of {\"role\", \"content\"} with text content")?;
	ensure!(!messages.is_empty(), "a chat item has no messages");
	Ok(Some(messages))
}

/// A chat's tokens with its assistant turns marked: the tokens each assistant message adds to
/// the conversation before it (with the generation prompt) are what the model should write.
fn encode_chat_item(messages: &[ChatMessage], codec: &TextCodec) -> Result<(Vec<u32>, Vec<bool>)> {
	let tokens = codec.encode_chat(messages, false).map_err(|e| anyhow::anyhow!("{e}"))?;
	let mut trained = vec![false; tokens.len()];
	for (i, _) in messages.iter().enumerate().filter(|(_, m)| m.role == "assistant") {
		let before = codec.encode_chat(&messages[..i], true).map_err(|e| anyhow::anyhow!("{e}"))?;
		let through = codec.encode_chat(&messages[..=i], false).map_err(|e| anyhow::anyhow!("{e}"))?;
		// A template that renders an earlier turn differently once later ones follow cannot be
		// cut by prefixes: refuse rather than train on the wrong tokens.
		ensure!(
			through.starts_with(&before) && tokens.starts_with(&through),
			"the chat template does not render message {i} as a continuation of the turns before it"
		);
		trained[before.len()..through.len()].fill(true);
	}
	// Nothing before the first token predicts it.
	if let Some(first) = trained.first_mut() {
		*first = false;
	}
	ensure!(trained.iter().any(|&t| t), "the chat has no assistant message to train on");
	Ok((tokens, trained))
}

/// A run of an item's tokens that fits one sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
	pub item: usize,
	pub start: usize,
	pub len: usize,
}

/// Every item cut into pieces of at most `max_len` tokens (each piece starts afresh at position
/// 0; its first token is context only), dropping pieces with nothing to train on.
pub fn pieces(items: &[TrainingItem], max_len: usize) -> Vec<Piece> {
	assert!(max_len >= 2, "a piece needs room for a token and its successor");
	let mut out = Vec::new();
	for (i, item) in items.iter().enumerate() {
		let mut start = 0;
		while start < item.tokens.len() {
			let len = max_len.min(item.tokens.len() - start);
			if item.trained[start + 1..start + len].iter().any(|&t| t) {
				out.push(Piece { item: i, start, len });
			}
			// The next piece repeats this one's last token as its context.
			start += if start + len == item.tokens.len() { len } else { len - 1 };
		}
	}
	out
}

/// A packed sequence and the item each of its segments comes from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Packed {
	pub seq: Sequence,
	/// Per segment, the index of its item.
	pub items: Vec<usize>,
}

impl Packed {
	/// Each segment's item and the tokens the loss covers in it.
	pub fn trained_per_item(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
		self.seq.segments.iter().zip(&self.items).map(|(&(start, len), &item)| {
			(item, self.seq.targets[start..start + len].iter().filter(|t| t.is_some()).count())
		})
	}
}

/// An epoch's sequences: the pieces in an order drawn from `seed` and `epoch`, packed greedily
/// into sequences of at most `max_len` tokens.
pub fn epoch_sequences(items: &[TrainingItem], pieces: &[Piece], max_len: usize, seed: u64, epoch: usize) -> Vec<Packed> {
	let mut order: Vec<&Piece> = pieces.iter().collect();
	order.shuffle(&mut StdRng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
	let mut sequences = Vec::new();
	let mut current = Packed::default();
	for piece in order {
		if current.seq.len() + piece.len > max_len && !current.seq.is_empty() {
			sequences.push(std::mem::take(&mut current));
		}
		let item = &items[piece.item];
		let range = piece.start..piece.start + piece.len;
		current.seq.push_piece(&item.tokens[range.clone()], &item.trained[range]);
		current.items.push(piece.item);
	}
	if !current.seq.is_empty() {
		sequences.push(current);
	}
	sequences
}

#[cfg(test)]
mod tests {
	use super::*;

	fn item(n: usize, trained_from: usize) -> TrainingItem {
		TrainingItem {
			datanet: 1,
			item: n as u32,
			hash: ContentHash::repeat_byte(n as u8),
			tokens: (0..n as u32).collect(),
			trained: (0..n).map(|i| i >= trained_from.max(1)).collect(),
		}
	}

	#[test]
	fn long_items_are_cut_with_one_token_of_overlap() {
		let items = [item(10, 0)];
		let cut = pieces(&items, 4);
		assert_eq!(cut.iter().map(|p| (p.start, p.len)).collect::<Vec<_>>(), [(0, 4), (3, 4), (6, 4)]);
		// Every token but the first is predicted exactly once.
		let mut predicted = vec![0; 10];
		for p in &cut {
			(p.start + 1..p.start + p.len).for_each(|t| predicted[t] += 1);
		}
		assert_eq!(predicted, [0, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
	}

	#[test]
	fn pieces_without_a_trained_token_are_dropped() {
		let items = [item(8, 6)];
		let cut = pieces(&items, 4);
		assert_eq!(cut.iter().map(|p| p.start).collect::<Vec<_>>(), [3, 6]);
	}

	#[test]
	fn packing_keeps_every_piece_once_and_within_the_length() {
		let items: Vec<_> = (2..12).map(|n| item(n, 0)).collect();
		let cut = pieces(&items, 8);
		let seqs = epoch_sequences(&items, &cut, 8, 5, 0);
		assert!(seqs.iter().all(|s| s.seq.len() <= 8 && s.items.len() == s.seq.segments.len()));
		let tokens: usize = seqs.iter().map(|s| s.seq.len()).sum();
		assert_eq!(tokens, cut.iter().map(|p| p.len).sum::<usize>());
		let targets: usize = seqs.iter().map(|s| s.seq.target_count()).sum();
		assert_eq!(targets, cut.iter().map(|p| p.len - 1).sum::<usize>());
		// Each item's trained tokens, counted by segment, once an epoch.
		let mut per_item = vec![0; items.len()];
		seqs.iter().flat_map(Packed::trained_per_item).for_each(|(i, n)| per_item[i] += n);
		assert_eq!(per_item, items.iter().map(TrainingItem::trained_tokens).collect::<Vec<_>>());
		// Another epoch, another order; the same epoch, the same.
		assert_eq!(epoch_sequences(&items, &cut, 8, 5, 0), seqs);
		assert_ne!(epoch_sequences(&items, &cut, 8, 5, 1), seqs);
	}
}
