//! Streaming detokenization.

use anyhow::Result;

use super::TextCodec;

/// Turns generated ids into text as they come, emitting only complete characters: a character
/// whose UTF-8 bytes span several byte-level tokens comes out once its last token arrives.
///
/// It decodes the window from `prefix_offset` twice — without and with the tokens not yet
/// emitted — and emits the difference when the text grew and does not end in U+FFFD (the mark
/// of an incomplete sequence). The concatenation of everything `push` and `flush` return equals
/// `codec.decode(all ids)`.
#[derive(Clone, Debug, Default)]
pub struct IncrementalDecoder {
	ids: Vec<u32>,
	prefix_offset: usize,
	read_offset: usize,
	text: String,
}

impl IncrementalDecoder {
	pub fn new() -> Self {
		Self::default()
	}

	/// Adds one generated id; returns the text it completes, if any.
	pub fn push(&mut self, codec: &TextCodec, id: u32) -> Result<Option<String>> {
		self.ids.push(id);
		self.advance(codec, false)
	}

	/// Emits whatever is still held back (an incomplete character comes out as U+FFFD).
	pub fn flush(&mut self, codec: &TextCodec) -> Result<Option<String>> {
		self.advance(codec, true)
	}

	/// All text emitted so far.
	pub fn text(&self) -> &str {
		&self.text
	}

	/// All ids pushed so far.
	pub fn ids(&self) -> &[u32] {
		&self.ids
	}

	fn advance(&mut self, codec: &TextCodec, force: bool) -> Result<Option<String>> {
		if self.read_offset == self.ids.len() {
			return Ok(None);
		}
		let prefix = codec.decode(&self.ids[self.prefix_offset..self.read_offset])?;
		let full = codec.decode(&self.ids[self.prefix_offset..])?;
		let grown = full.len() > prefix.len() && full.starts_with(&prefix);
		if !grown || (!force && full.ends_with('\u{FFFD}')) {
			if force {
				// Nothing new (special tokens only): move past it.
				self.prefix_offset = self.ids.len();
				self.read_offset = self.ids.len();
			}
			return Ok(None);
		}
		let new = full[prefix.len()..].to_owned();
		self.text.push_str(&new);
		if force {
			self.prefix_offset = self.ids.len();
		} else {
			self.prefix_offset = self.read_offset;
		}
		self.read_offset = self.ids.len();
		Ok(Some(new))
	}
}

