//! Span attribution, in the manner of infini-gram and OLMoTrace: find the long stretches of a
//! model's output that occur verbatim in some DataNet item, and name those items.
//!
//! # The unit: tokens and words
//!
//! Text is first normalised with [`normalise_item_text`] (the same normalisation as item
//! content hashes), then split into **tokens**:
//!
//! - whitespace (`char::is_whitespace`) separates tokens and is not itself a token, so line
//!   breaks and runs of spaces never prevent a match;
//! - a **word** is a maximal run of alphanumeric characters (`char::is_alphanumeric`), including
//!   combining marks that follow them (U+0300–036F, U+1AB0–1AFF, U+1DC0–1DFF, U+20D0–20FF,
//!   U+FE20–FE2F), except that characters of scripts written without spaces (CJK ideographs,
//!   kana, Thai, Lao, Khmer, Myanmar) are each a word of their own;
//! - every other character (punctuation, symbols, emoji) is a token of its own, but not a word.
//!
//! Matching is **case-sensitive** and exact on tokens: "verbatim" means the same characters in
//! the same order, up to whitespace. (Case-folding would credit items for text the model did not
//! copy; a re-checker gets the same answer either way because the rule is fixed here.)
//!
//! # Spans
//!
//! A span is a **maximal** match: a token range `[i, j)` of the output that occurs contiguously
//! inside one item, such that neither `[i - 1, j)` nor `[i, j + 1)` occurs in any item. Spans
//! with fewer than [`SpanConfig::min_words`] words (default [`DEFAULT_MIN_WORDS`] = 8) are not
//! reported. Two reported spans may overlap (each is maximal on its own); a span contained in a
//! longer one is never reported. For each span the items containing it are listed in ascending
//! `(datanet, item)` order, at most [`SpanConfig::max_items`] of them, and
//! [`Span::item_count`] says how many distinct items contain it in all.
//!
//! All of this depends only on the item texts and the output, never on how the index was built,
//! so anyone holding the same items can re-check a receipt's span claims.
//!
//! # The index
//!
//! Items are sorted by `(datanet, item)`, tokenised, and concatenated into one `u32` token
//! stream (each distinct token string gets its rank in a sorted vocabulary as its id), each item
//! followed by a separator id that no output token can have. A suffix array over that stream
//! (built by SA-IS, O(n)) lets the longest match starting at each output token be found by
//! binary search, narrowing the suffix range one token at a time: O(m · L · log n) for an output
//! of `m` tokens whose matches are `L` tokens long, and since the match at `i + 1` is at least
//! the match at `i` minus one, each position starts from what the previous one proved.
//!
//! On disk ([`SpanIndex::save`], [`SpanIndex::load`]) the index is stored whole (suffix array
//! included), so loading is a read and a checksum, not a rebuild. The format is described at
//! [`FORMAT_VERSION`].

use std::{
	cmp::Ordering,
	collections::HashMap,
	fs,
	io::Write,
	path::{Path, PathBuf},
};

use openledger_primitives::{content_hash, normalise_item_text, DataNetId, ItemId};

use super::sais::suffix_array;

/// Default least number of words in a reported span.
pub const DEFAULT_MIN_WORDS: usize = 8;
/// Default most items listed per span.
pub const DEFAULT_MAX_ITEMS_PER_SPAN: usize = 16;

/// File magic of a saved index.
pub const MAGIC: [u8; 8] = *b"OLSPANIX";
/// Version of the on-disk format. Layout (all integers little-endian):
///
/// ```text
/// header (56 bytes):
///   magic        8 bytes  "OLSPANIX"
///   version      u32      1
///   reserved     u32      0
///   body_len     u64      bytes after the header
///   checksum     32 bytes blake2-256 of the body
/// body:
///   n_items      u32
///   n_tokens     u32      length of the token stream (separators included)
///   vocab_len    u32      distinct token strings; the separator id is vocab_len
///   vocab_bytes  u32      total bytes of the vocabulary strings
///   items        n_items × { datanet u32, item u32, start u32, item_hash [32] }
///                         sorted by (datanet, item); start = first token of the item
///   vocab_offs   (vocab_len + 1) × u32, vocab string i = vocab[offs[i]..offs[i+1]]
///   vocab        vocab_bytes bytes (UTF-8, strictly ascending byte order)
///   tokens       n_tokens × u32
///   suffix_array n_tokens × u32
/// ```
pub const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 4 + 8 + 32;

/// Knobs of span finding. Receipts should use the defaults so that re-checkers agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanConfig {
	/// Least number of words (see the module docs) in a reported span.
	pub min_words: usize,
	/// Most items listed per span (the smallest `(datanet, item)` pairs).
	pub max_items: usize,
}

impl Default for SpanConfig {
	fn default() -> Self {
		Self { min_words: DEFAULT_MIN_WORDS, max_items: DEFAULT_MAX_ITEMS_PER_SPAN }
	}
}

/// One verbatim span of an output found in DataNet items.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
	/// Byte offset of the span's first token in the **normalised** output.
	pub start: usize,
	/// Byte offset just past the span's last token in the normalised output.
	pub end: usize,
	/// `normalised_output[start..end]`.
	pub text: String,
	/// Words in the span.
	pub words: usize,
	/// Tokens (words and punctuation) in the span.
	pub tokens: usize,
	/// Items containing the span, ascending by `(datanet, item)`, capped at
	/// [`SpanConfig::max_items`].
	pub items: Vec<(DataNetId, ItemId)>,
	/// How many distinct items contain the span (may exceed `items.len()`).
	pub item_count: usize,
}

/// Errors building, saving or loading a span index.
#[derive(Debug, thiserror::Error)]
pub enum SpanIndexError {
	#[error("span index {path}: {source}")]
	Io { path: PathBuf, source: std::io::Error },
	#[error("span index {path} is corrupt: {reason}")]
	Corrupt { path: PathBuf, reason: String },
	#[error("span index {path} has format version {found}; this worker reads version {FORMAT_VERSION} (rebuild the index)")]
	UnsupportedVersion { path: PathBuf, found: u32 },
	#[error("span index too large: {0}")]
	TooLarge(String),
}

/// One item of the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ItemMeta {
	datanet: DataNetId,
	item: ItemId,
	/// Index of the item's first token in the token stream.
	start: u32,
	/// blake2-256 of the normalised text (the chain's content hash of the item).
	hash: [u8; 32],
}

/// A suffix-array index over DataNet items for span attribution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanIndex {
	items: Vec<ItemMeta>,
	/// `vocab_offs[i]..vocab_offs[i + 1]` is token string `i` in `vocab`.
	vocab_offs: Vec<u32>,
	vocab: Vec<u8>,
	/// The token stream; the separator is `vocab_offs.len() - 1`; the last token is a separator.
	tokens: Vec<u32>,
	sa: Vec<u32>,
}

/// A token of some text: its byte range and whether it is a word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tok {
	start: usize,
	end: usize,
	word: bool,
}

/// Characters of scripts written without spaces: each is a word on its own.
fn is_unsegmented(c: char) -> bool {
	matches!(c as u32,
		0x0E00..=0x0EFF // Thai, Lao
		| 0x1000..=0x109F // Myanmar
		| 0x1780..=0x17FF // Khmer
		| 0x3040..=0x30FF // Hiragana, Katakana
		| 0x3400..=0x4DBF // CJK extension A
		| 0x4E00..=0x9FFF // CJK unified ideographs
		| 0xF900..=0xFAFF // CJK compatibility ideographs
		| 0x20000..=0x3FFFF // CJK extensions B and later
	)
}

fn is_combining(c: char) -> bool {
	matches!(c as u32, 0x0300..=0x036F | 0x1AB0..=0x1AFF | 0x1DC0..=0x1DFF | 0x20D0..=0x20FF | 0xFE20..=0xFE2F)
}

/// Splits text into tokens (see the module docs).
fn tokenize(text: &str) -> Vec<Tok> {
	let mut toks = Vec::with_capacity(text.len() / 5 + 1);
	// The word being built: its start, if any.
	let mut word: Option<usize> = None;
	for (i, c) in text.char_indices() {
		let continues_word = c.is_alphanumeric() && !is_unsegmented(c) || (word.is_some() && is_combining(c));
		if continues_word {
			if word.is_none() {
				word = Some(i);
			}
			continue;
		}
		if let Some(start) = word.take() {
			toks.push(Tok { start, end: i, word: true });
		}
		if c.is_whitespace() {
			continue;
		}
		let end = i + c.len_utf8();
		toks.push(Tok { start: i, end, word: c.is_alphanumeric() });
	}
	if let Some(start) = word {
		toks.push(Tok { start, end: text.len(), word: true });
	}
	toks
}

impl SpanIndex {
	/// Builds the index over `(datanet, item, text)` triples. Texts are normalised with
	/// [`normalise_item_text`] first. If the same `(datanet, item)` appears more than once, the
	/// first occurrence is kept. Fails only if the corpus exceeds `u32` token offsets.
	pub fn build<I, S>(items: I) -> Result<Self, SpanIndexError>
	where
		I: IntoIterator<Item = (DataNetId, ItemId, S)>,
		S: AsRef<str>,
	{
		let mut docs: Vec<(DataNetId, ItemId, String)> =
			items.into_iter().map(|(d, i, t)| (d, i, normalise_item_text(t.as_ref()))).collect();
		// Stable: of equal keys the first given stays first and is the one kept.
		docs.sort_by_key(|(d, i, _)| (*d, *i));
		docs.dedup_by_key(|(d, i, _)| (*d, *i));

		// Intern tokens with provisional ids, then renumber by sorted order.
		let mut interned: HashMap<&str, u32> = HashMap::new();
		let mut strings: Vec<&str> = Vec::new();
		let mut stream: Vec<u32> = Vec::new();
		let mut metas: Vec<ItemMeta> = Vec::with_capacity(docs.len());
		for (datanet, item, text) in &docs {
			let start = u32::try_from(stream.len())
				.map_err(|_| SpanIndexError::TooLarge("more than 2^32 - 2 tokens".into()))?;
			metas.push(ItemMeta { datanet: *datanet, item: *item, start, hash: content_hash(text.as_bytes()).0 });
			for tok in tokenize(text) {
				let s = &text[tok.start..tok.end];
				let id = *interned.entry(s).or_insert_with(|| {
					strings.push(s);
					(strings.len() - 1) as u32
				});
				stream.push(id);
			}
			stream.push(u32::MAX); // separator, renumbered below
		}
		if stream.len() >= u32::MAX as usize {
			return Err(SpanIndexError::TooLarge(format!("{} tokens; at most 2^32 - 2", stream.len())));
		}
		drop(interned);
		let mut order: Vec<u32> = (0..strings.len() as u32).collect();
		order.sort_unstable_by(|&a, &b| strings[a as usize].cmp(strings[b as usize]));
		let mut rank = vec![0u32; strings.len()];
		let mut vocab_offs = Vec::with_capacity(strings.len() + 1);
		let mut vocab = Vec::new();
		for (r, &id) in order.iter().enumerate() {
			rank[id as usize] = r as u32;
			vocab_offs.push(u32::try_from(vocab.len()).map_err(|_| SpanIndexError::TooLarge("vocabulary over 4 GiB".into()))?);
			vocab.extend_from_slice(strings[id as usize].as_bytes());
		}
		vocab_offs.push(u32::try_from(vocab.len()).map_err(|_| SpanIndexError::TooLarge("vocabulary over 4 GiB".into()))?);
		let separator = strings.len() as u32;
		for t in stream.iter_mut() {
			*t = if *t == u32::MAX { separator } else { rank[*t as usize] };
		}
		drop(docs);
		let sa = suffix_array(&stream, separator);
		Ok(Self { items: metas, vocab_offs, vocab, tokens: stream, sa })
	}

	/// Number of items indexed.
	pub fn item_count(&self) -> usize {
		self.items.len()
	}

	/// Length of the token stream (separators included).
	pub fn token_count(&self) -> usize {
		self.tokens.len()
	}

	/// Number of distinct token strings.
	pub fn vocab_len(&self) -> usize {
		self.vocab_offs.len() - 1
	}

	/// The indexed items, ascending: `(datanet, item, content hash of the normalised text)`.
	/// Compare the hashes with the chain's contributions before trusting the index.
	pub fn items(&self) -> impl Iterator<Item = (DataNetId, ItemId, [u8; 32])> + '_ {
		self.items.iter().map(|m| (m.datanet, m.item, m.hash))
	}

	fn vocab_str(&self, id: usize) -> &[u8] {
		&self.vocab[self.vocab_offs[id] as usize..self.vocab_offs[id + 1] as usize]
	}

	/// The id of a token string, if any item contains it.
	fn lookup(&self, token: &str) -> Option<u32> {
		let (mut lo, mut hi) = (0usize, self.vocab_len());
		while lo < hi {
			let mid = lo + (hi - lo) / 2;
			match self.vocab_str(mid).cmp(token.as_bytes()) {
				Ordering::Less => lo = mid + 1,
				Ordering::Greater => hi = mid,
				Ordering::Equal => return Some(mid as u32),
			}
		}
		None
	}

	/// Compares the first `pat.len()` tokens of the suffix at `p` with `pat`. The stream ends
	/// with a separator, which no pattern token equals, so this never reads past the end.
	fn cmp_prefix(&self, p: usize, pat: &[u32]) -> Ordering {
		for (k, &t) in pat.iter().enumerate() {
			match self.tokens.get(p + k) {
				Some(&c) if c == t => continue,
				Some(&c) => return c.cmp(&t),
				None => return Ordering::Less,
			}
		}
		Ordering::Equal
	}

	/// The suffix-array range whose suffixes start with `pat` (all known tokens).
	fn range_of(&self, pat: &[u32]) -> (usize, usize) {
		let lo = self.sa.partition_point(|&p| self.cmp_prefix(p as usize, pat) == Ordering::Less);
		let hi = lo + self.sa[lo..].partition_point(|&p| self.cmp_prefix(p as usize, pat) != Ordering::Greater);
		(lo, hi)
	}

	/// The longest prefix of `q` occurring in the corpus, given that its first `known` tokens
	/// do: `(length, sa_lo, sa_hi)`.
	fn longest_match(&self, q: &[Option<u32>], known: usize) -> (usize, usize, usize) {
		let (mut lo, mut hi, mut k) = (0usize, self.sa.len(), 0usize);
		if known > 0 {
			let pat: Vec<u32> = q[..known].iter().map(|t| t.unwrap_or(u32::MAX)).collect();
			let (l, h) = self.range_of(&pat);
			// Always non-empty for a well-formed index; a damaged one falls back to a full search.
			if l < h {
				(lo, hi, k) = (l, h, known);
			}
		}
		while k < q.len() {
			let Some(t) = q[k] else { break };
			let key = |p: u32| self.tokens.get(p as usize + k).copied().unwrap_or(0);
			let range = &self.sa[lo..hi];
			let l = lo + range.partition_point(|&p| key(p) < t);
			let h = lo + range.partition_point(|&p| key(p) <= t);
			if l >= h {
				break;
			}
			(lo, hi) = (l, h);
			k += 1;
		}
		(k, lo, hi)
	}

	/// The item (index into `items`) containing stream position `p`.
	fn item_at(&self, p: u32) -> usize {
		self.items.partition_point(|m| m.start <= p).saturating_sub(1)
	}

	/// Maximal verbatim spans of `output` found in the items, with the default [`SpanConfig`].
	pub fn find_spans(&self, output: &str) -> Vec<Span> {
		self.find_spans_with(output, &SpanConfig::default())
	}

	/// Maximal verbatim spans of `output` found in the items (see the module docs), in order of
	/// their start.
	pub fn find_spans_with(&self, output: &str, config: &SpanConfig) -> Vec<Span> {
		let text = normalise_item_text(output);
		let toks = tokenize(&text);
		if toks.is_empty() || self.items.is_empty() {
			return Vec::new();
		}
		let ids: Vec<Option<u32>> = toks.iter().map(|t| self.lookup(&text[t.start..t.end])).collect();
		// words_before[i] = words among toks[..i].
		let mut words_before = Vec::with_capacity(toks.len() + 1);
		words_before.push(0usize);
		for t in &toks {
			words_before.push(words_before.last().copied().unwrap_or(0) + usize::from(t.word));
		}
		let min_words = config.min_words.max(1);

		let mut spans = Vec::new();
		let (mut prev_len, mut prev_end) = (0usize, 0usize);
		for i in 0..toks.len() {
			let known = prev_len.saturating_sub(1);
			let (len, lo, hi) = self.longest_match(&ids[i..], known);
			let end = i + len;
			// Maximal iff it reaches further right than the match before it (which, starting
			// one token earlier, would otherwise contain it).
			if len > 0 && end > prev_end && words_before[end] - words_before[i] >= min_words {
				let mut hits: Vec<usize> = self.sa[lo..hi].iter().map(|&p| self.item_at(p)).collect();
				hits.sort_unstable();
				hits.dedup();
				let (start_b, end_b) = (toks[i].start, toks[end - 1].end);
				spans.push(Span {
					start: start_b,
					end: end_b,
					text: text[start_b..end_b].to_owned(),
					words: words_before[end] - words_before[i],
					tokens: len,
					item_count: hits.len(),
					items: hits
						.iter()
						.take(config.max_items)
						.map(|&h| (self.items[h].datanet, self.items[h].item))
						.collect(),
				});
			}
			prev_len = len;
			prev_end = prev_end.max(end);
		}
		spans
	}

	/// The serialised index (see [`FORMAT_VERSION`]).
	pub fn to_bytes(&self) -> Vec<u8> {
		let body_len = 16 + self.items.len() * 44 + self.vocab_offs.len() * 4 + self.vocab.len() + self.tokens.len() * 8;
		let mut out = Vec::with_capacity(HEADER_LEN + body_len);
		out.extend_from_slice(&MAGIC);
		out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
		out.extend_from_slice(&0u32.to_le_bytes());
		out.extend_from_slice(&(body_len as u64).to_le_bytes());
		out.extend_from_slice(&[0u8; 32]); // checksum, filled in below
		for n in [self.items.len(), self.tokens.len(), self.vocab_len(), self.vocab.len()] {
			out.extend_from_slice(&(n as u32).to_le_bytes());
		}
		for m in &self.items {
			out.extend_from_slice(&m.datanet.to_le_bytes());
			out.extend_from_slice(&m.item.to_le_bytes());
			out.extend_from_slice(&m.start.to_le_bytes());
			out.extend_from_slice(&m.hash);
		}
		self.vocab_offs.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
		out.extend_from_slice(&self.vocab);
		for list in [&self.tokens, &self.sa] {
			list.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
		}
		debug_assert_eq!(out.len(), HEADER_LEN + body_len);
		let checksum = content_hash(&out[HEADER_LEN..]);
		out[24..56].copy_from_slice(checksum.as_bytes());
		out
	}

	/// Parses a serialised index, checking the header, the checksum and every offset, so that a
	/// damaged file is refused with a reason rather than causing wrong answers or a panic.
	/// `path` is only used in error messages.
	pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, SpanIndexError> {
		let corrupt = |reason: String| SpanIndexError::Corrupt { path: path.to_path_buf(), reason };
		if bytes.len() < HEADER_LEN {
			return Err(corrupt(format!("{} bytes, shorter than the {HEADER_LEN}-byte header", bytes.len())));
		}
		if bytes[..8] != MAGIC {
			return Err(corrupt("not a span index (bad magic)".into()));
		}
		let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
		if version != FORMAT_VERSION {
			return Err(SpanIndexError::UnsupportedVersion { path: path.to_path_buf(), found: version });
		}
		let body_len = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
		let body = &bytes[HEADER_LEN..];
		if body.len() as u64 != body_len {
			return Err(corrupt(format!("body is {} bytes, header says {body_len} (truncated?)", body.len())));
		}
		if content_hash(body).as_bytes() != &bytes[24..56] {
			return Err(corrupt("checksum mismatch".into()));
		}

		let mut r = Reader { bytes: body, pos: 0 };
		let truncated = || corrupt("truncated body".into());
		let n_items = r.u32().ok_or_else(truncated)? as usize;
		let n_tokens = r.u32().ok_or_else(truncated)? as usize;
		let vocab_len = r.u32().ok_or_else(truncated)? as usize;
		let vocab_bytes = r.u32().ok_or_else(truncated)? as usize;
		let expected = 16u64 +
			n_items as u64 * 44 +
			(vocab_len as u64 + 1) * 4 +
			vocab_bytes as u64 +
			n_tokens as u64 * 8;
		if expected != body_len {
			return Err(corrupt(format!("counts imply {expected} body bytes, found {body_len}")));
		}
		let mut items = Vec::with_capacity(n_items);
		for _ in 0..n_items {
			let datanet = r.u32().ok_or_else(truncated)?;
			let item = r.u32().ok_or_else(truncated)?;
			let start = r.u32().ok_or_else(truncated)?;
			let hash: [u8; 32] = r.take(32).ok_or_else(truncated)?.try_into().expect("32 bytes");
			items.push(ItemMeta { datanet, item, start, hash });
		}
		let vocab_offs = r.u32s(vocab_len + 1).ok_or_else(truncated)?;
		let vocab = r.take(vocab_bytes).ok_or_else(truncated)?.to_vec();
		let tokens = r.u32s(n_tokens).ok_or_else(truncated)?;
		let sa = r.u32s(n_tokens).ok_or_else(truncated)?;

		// Structure: everything a query indexes must be in range.
		let separator = vocab_len as u32;
		if n_items > 0 && (n_tokens == 0 || tokens[n_tokens - 1] != separator) {
			return Err(corrupt("token stream does not end with a separator".into()));
		}
		if items.first().is_some_and(|m| m.start != 0) ||
			items.windows(2).any(|w| (w[0].datanet, w[0].item) >= (w[1].datanet, w[1].item) || w[0].start >= w[1].start) ||
			items.last().is_some_and(|m| m.start as usize >= n_tokens)
		{
			return Err(corrupt("item table is not sorted or its offsets are out of range".into()));
		}
		if vocab_offs[0] != 0 ||
			vocab_offs.windows(2).any(|w| w[0] > w[1]) ||
			vocab_offs[vocab_len] as usize != vocab_bytes
		{
			return Err(corrupt("vocabulary offsets are out of range".into()));
		}
		let index = Self { items, vocab_offs, vocab, tokens, sa };
		if (1..vocab_len).any(|i| index.vocab_str(i - 1) >= index.vocab_str(i)) {
			return Err(corrupt("vocabulary is not strictly sorted".into()));
		}
		if index.tokens.iter().any(|&t| t > separator) {
			return Err(corrupt("token id out of range".into()));
		}
		let mut seen = vec![false; n_tokens];
		for &p in &index.sa {
			match seen.get_mut(p as usize) {
				Some(s) if !*s => *s = true,
				_ => return Err(corrupt("suffix array is not a permutation".into())),
			}
		}
		Ok(index)
	}

	/// Writes the index to `path` atomically: to a temporary file in the same directory, synced,
	/// then renamed over `path`.
	pub fn save(&self, path: impl AsRef<Path>) -> Result<(), SpanIndexError> {
		let path = path.as_ref();
		let io = |source| SpanIndexError::Io { path: path.to_path_buf(), source };
		let dir = match path.parent() {
			Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
			_ => PathBuf::from("."),
		};
		let name = path.file_name().ok_or_else(|| io(std::io::Error::other("no file name")))?;
		let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
		let bytes = self.to_bytes();
		let result = (|| {
			let mut file = fs::File::create(&tmp)?;
			file.write_all(&bytes)?;
			file.sync_all()?;
			drop(file);
			fs::rename(&tmp, path)?;
			// Persist the rename; not every platform can open a directory, so best effort.
			if let Ok(d) = fs::File::open(&dir) {
				let _ = d.sync_all();
			}
			Ok(())
		})();
		if result.is_err() {
			let _ = fs::remove_file(&tmp);
		}
		result.map_err(io)
	}

	/// Reads an index written by [`save`](Self::save).
	pub fn load(path: impl AsRef<Path>) -> Result<Self, SpanIndexError> {
		let path = path.as_ref();
		let bytes = fs::read(path).map_err(|source| SpanIndexError::Io { path: path.to_path_buf(), source })?;
		Self::from_bytes(&bytes, path)
	}
}

/// A bounds-checked little-endian reader.
struct Reader<'a> {
	bytes: &'a [u8],
	pos: usize,
}

impl<'a> Reader<'a> {
	fn take(&mut self, n: usize) -> Option<&'a [u8]> {
		let end = self.pos.checked_add(n)?;
		let out = self.bytes.get(self.pos..end)?;
		self.pos = end;
		Some(out)
	}

	fn u32(&mut self) -> Option<u32> {
		self.take(4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
	}

	fn u32s(&mut self, n: usize) -> Option<Vec<u32>> {
		let raw = self.take(n.checked_mul(4)?)?;
		Some(raw.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes"))).collect())
	}
}

#[cfg(test)]
mod tests {
	use super::*;
	use rand::{rngs::StdRng, Rng, SeedableRng};

	/// A deterministic pseudo-random word generator.
	struct Words(StdRng);

	impl Words {
		fn new(seed: u64) -> Self {
			Self(StdRng::seed_from_u64(seed))
		}

		fn next(&mut self) -> u64 {
			self.0.random()
		}

		fn word(&mut self) -> String {
			const SYL: [&str; 16] =
				["ka", "lo", "mi", "ne", "ru", "sa", "te", "vo", "zi", "pa", "qu", "do", "fe", "gi", "ho", "ju"];
			let n = 1 + self.next() % 3;
			(0..n).map(|_| SYL[(self.next() % 16) as usize]).collect()
		}

		fn sentence(&mut self, words: usize) -> String {
			(0..words).map(|_| self.word()).collect::<Vec<_>>().join(" ")
		}
	}

	fn corpus(n: usize, seed: u64) -> Vec<(DataNetId, ItemId, String)> {
		let mut w = Words::new(seed);
		(0..n).map(|i| ((i % 3) as u32, i as u32, w.sentence(60))).collect()
	}

	/// Brute force: the same spans, computed by trying every token range against every item.
	fn brute_force(items: &[(DataNetId, ItemId, String)], output: &str, config: &SpanConfig) -> Vec<Span> {
		let text = normalise_item_text(output);
		let toks = tokenize(&text);
		let strs: Vec<&str> = toks.iter().map(|t| &text[t.start..t.end]).collect();
		let mut sorted: Vec<(DataNetId, ItemId, Vec<String>)> = items
			.iter()
			.map(|(d, i, t)| {
				let n = normalise_item_text(t);
				(*d, *i, tokenize(&n).iter().map(|k| n[k.start..k.end].to_owned()).collect())
			})
			.collect();
		sorted.sort_by_key(|(d, i, _)| (*d, *i));
		let occurs = |a: usize, b: usize| -> Vec<(DataNetId, ItemId)> {
			sorted
				.iter()
				.filter(|(_, _, toks)| toks.windows(b - a).any(|w| w.iter().zip(&strs[a..b]).all(|(x, y)| x == y)))
				.map(|(d, i, _)| (*d, *i))
				.collect()
		};
		let mut out = Vec::new();
		for a in 0..strs.len() {
			let mut b = a;
			while b < strs.len() && !occurs(a, b + 1).is_empty() {
				b += 1;
			}
			if b == a {
				continue;
			}
			let left_ok = a == 0 || occurs(a - 1, b).is_empty();
			let words = toks[a..b].iter().filter(|t| t.word).count();
			if left_ok && words >= config.min_words.max(1) {
				let hits = occurs(a, b);
				out.push(Span {
					start: toks[a].start,
					end: toks[b - 1].end,
					text: text[toks[a].start..toks[b - 1].end].to_owned(),
					words,
					tokens: b - a,
					item_count: hits.len(),
					items: hits.into_iter().take(config.max_items).collect(),
				});
			}
		}
		out
	}

	#[test]
	fn tokenizer_splits_words_punctuation_and_cjk() {
		let text = "Hello, wörld! e\u{301}té 東京は 42nd  x_y";
		let toks: Vec<(&str, bool)> = tokenize(text).iter().map(|t| (&text[t.start..t.end], t.word)).collect();
		assert_eq!(
			toks,
			vec![
				("Hello", true),
				(",", false),
				("wörld", true),
				("!", false),
				("e\u{301}té", true),
				("東", true),
				("京", true),
				("は", true),
				("42nd", true),
				("x", true),
				("_", false),
				("y", true),
			]
		);
	}

	#[test]
	fn finds_a_planted_span_among_many_items() {
		let items = corpus(2000, 1);
		let index = SpanIndex::build(items.iter().map(|(d, i, t)| (*d, *i, t.as_str()))).unwrap();
		assert_eq!(index.item_count(), 2000);
		// 12 words copied from the middle of item 1234, surrounded by unrelated text.
		let source: Vec<&str> = items[1234].2.split(' ').collect();
		let planted = source[20..32].join(" ");
		let mut w = Words::new(99);
		let output = format!("{} {} {}", w.sentence(30), planted, w.sentence(30));
		let spans = index.find_spans(&output);
		let found: Vec<&Span> = spans.iter().filter(|s| s.items.contains(&(1234 % 3, 1234))).collect();
		assert_eq!(found.len(), 1, "{spans:#?}");
		let span = found[0];
		assert!(span.text.contains(&planted), "{:?} does not contain {planted:?}", span.text);
		assert!(span.words >= 12);
		assert_eq!(&normalise_item_text(&output)[span.start..span.end], span.text);
		assert_eq!(span.item_count, 1);
		assert_eq!(spans, brute_force(&items, &output, &SpanConfig::default()));
	}

	#[test]
	fn no_span_in_unrelated_text() {
		let items = corpus(300, 2);
		let index = SpanIndex::build(items.iter().map(|(d, i, t)| (*d, *i, t.as_str()))).unwrap();
		let output = "The weather in Lisbon was mild today, and the market by the river sold figs, \
			bread and cheese to everyone who passed on the way to the ferry.";
		assert!(index.find_spans(output).is_empty());
		let mut w = Words::new(12345);
		let random = w.sentence(200);
		assert!(index.find_spans(&random).is_empty(), "{:?}", index.find_spans(&random));
		assert!(index.find_spans("").is_empty());
		assert!(SpanIndex::build(Vec::<(u32, u32, String)>::new()).unwrap().find_spans(&random).is_empty());
	}

	#[test]
	fn overlapping_and_adjacent_spans() {
		let a = "one two three four five six seven eight nine ten";
		let b = "seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen";
		let c = "alpha beta gamma delta epsilon zeta eta theta iota kappa";
		let index = SpanIndex::build([(0u32, 1u32, a), (0, 2, b), (1, 0, c)]).unwrap();
		// Overlap: "seven eight nine ten" is in both a and b.
		let output = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen";
		let spans = index.find_spans(output);
		assert_eq!(spans.len(), 2, "{spans:#?}");
		assert_eq!(spans[0].text, a);
		assert_eq!(spans[0].items, vec![(0, 1)]);
		assert_eq!(spans[1].text, b);
		assert_eq!(spans[1].items, vec![(0, 2)]);
		assert!(spans[0].end > spans[1].start, "the two spans overlap");
		// Adjacent: a then c, back to back.
		let output = format!("{a} {c}");
		let spans = index.find_spans(&output);
		assert_eq!(spans.iter().map(|s| s.text.as_str()).collect::<Vec<_>>(), vec![a, c]);
		assert_eq!(spans[1].items, vec![(1, 0)]);
		// Contained: a 9-word piece of `a` gives the piece, not two spans.
		let spans = index.find_spans("zzz two three four five six seven eight nine ten zzz");
		assert_eq!(spans.len(), 1);
		assert_eq!(spans[0].words, 9);
		// Too short: 7 words is under the minimum.
		assert!(index.find_spans("two three four five six seven eight").is_empty());
		let config = SpanConfig { min_words: 3, ..SpanConfig::default() };
		assert_eq!(index.find_spans_with("two three four five six seven eight", &config).len(), 1);
		for output in [output.as_str(), "one two three four five six seven eight nine ten eleven twelve thirteen"] {
			let items = vec![(0, 1, a.to_owned()), (0, 2, b.to_owned()), (1, 0, c.to_owned())];
			assert_eq!(index.find_spans_with(output, &config), brute_force(&items, output, &config));
		}
	}

	#[test]
	fn spans_do_not_cross_items_and_list_items_in_order() {
		let shared = "the quick brown fox jumps over the lazy dog again and again";
		let items: Vec<(u32, u32, String)> = vec![
			(2, 5, format!("{shared} end")),
			(1, 9, format!("start {shared}")),
			(1, 3, shared.to_owned()),
			(0, 7, "again and again".to_owned()),
		];
		let index = SpanIndex::build(items.iter().map(|(d, i, t)| (*d, *i, t.as_str()))).unwrap();
		let spans = index.find_spans(&format!("{shared} end"));
		assert_eq!(spans.len(), 1);
		assert_eq!(spans[0].text, format!("{shared} end"));
		assert_eq!(spans[0].items, vec![(2, 5)]);
		let spans = index.find_spans(shared);
		assert_eq!(spans[0].items, vec![(1, 3), (1, 9), (2, 5)]);
		assert_eq!(spans[0].item_count, 3);
		let capped = index.find_spans_with(shared, &SpanConfig { max_items: 2, ..SpanConfig::default() });
		assert_eq!(capped[0].items, vec![(1, 3), (1, 9)]);
		assert_eq!(capped[0].item_count, 3);
		// The end of one item followed by the start of the next (they are adjacent in the token
		// stream, (1, 3) then (1, 9)) is not a span.
		let across = "dog again and again start the quick brown";
		assert!(index.find_spans_with(across, &SpanConfig { min_words: 5, ..SpanConfig::default() }).is_empty());
		assert_eq!(index.find_spans_with(across, &SpanConfig { min_words: 4, ..SpanConfig::default() }).len(), 2);
	}

	#[test]
	fn matching_is_case_sensitive_and_whitespace_insensitive() {
		let item = "Les élèves étudient la physique quantique à l'université de Genève chaque hiver.";
		let index = SpanIndex::build([(0u32, 0u32, item)]).unwrap();
		let reflowed = "Les élèves étudient la physique\nquantique à   l'université de\r\nGenève chaque hiver.";
		let spans = index.find_spans(reflowed);
		assert_eq!(spans.len(), 1);
		assert_eq!(spans[0].items, vec![(0, 0)]);
		assert_eq!(spans[0].tokens, 15);
		assert_eq!(spans[0].words, 13);
		assert_eq!(&normalise_item_text(reflowed)[spans[0].start..spans[0].end], spans[0].text);
		assert!(index.find_spans(&item.to_uppercase()).is_empty());
	}

	#[test]
	fn unicode_and_cjk() {
		let item = "東京は日本の首都であり、世界最大の都市圏を持つ。Ελληνικά κείμενα επίσης δουλεύουν εδώ καλά σήμερα.";
		let index = SpanIndex::build([(4u32, 2u32, item)]).unwrap();
		let output = "ところで、東京は日本の首都であり、世界最大の都市圏を持つ。";
		let spans = index.find_spans(output);
		assert_eq!(spans.len(), 1, "{spans:#?}");
		assert_eq!(spans[0].text, "東京は日本の首都であり、世界最大の都市圏を持つ。");
		assert_eq!(spans[0].items, vec![(4, 2)]);
		let output = "Ελληνικά κείμενα επίσης δουλεύουν εδώ καλά σήμερα. Τέλος";
		let spans = index.find_spans_with(output, &SpanConfig { min_words: 7, ..SpanConfig::default() });
		assert_eq!(spans.len(), 1);
		assert!(output.is_char_boundary(spans[0].start) && output.is_char_boundary(spans[0].end));
	}

	#[test]
	fn matches_brute_force_on_random_corpora() {
		let mut w = Words::new(5);
		for round in 0..20u64 {
			// A small vocabulary so that matches are frequent and overlap.
			let vocab: Vec<String> = (0..(4 + round % 6)).map(|_| w.word()).collect();
			let items: Vec<(u32, u32, String)> = (0..(1 + w.next() % 8))
				.map(|i| {
					let len = w.next() % 40;
					let text: Vec<&str> = (0..len).map(|_| vocab[(w.next() % vocab.len() as u64) as usize].as_str()).collect();
					((w.next() % 2) as u32, i as u32, text.join(if i % 2 == 0 { " " } else { "\n" }))
				})
				.collect();
			let index = SpanIndex::build(items.iter().map(|(d, i, t)| (*d, *i, t.as_str()))).unwrap();
			let output: Vec<&str> = (0..60).map(|_| vocab[(w.next() % vocab.len() as u64) as usize].as_str()).collect();
			let output = output.join(" ");
			for config in [SpanConfig { min_words: 1, max_items: 2 }, SpanConfig { min_words: 3, max_items: 16 }] {
				let dedup: Vec<(u32, u32, String)> = {
					let mut seen = std::collections::BTreeMap::new();
					for (d, i, t) in &items {
						seen.entry((*d, *i)).or_insert_with(|| t.clone());
					}
					seen.into_iter().map(|((d, i), t)| (d, i, t)).collect()
				};
				assert_eq!(index.find_spans_with(&output, &config), brute_force(&dedup, &output, &config), "round {round}");
			}
		}
	}

	#[test]
	fn save_load_round_trip() {
		let items = corpus(500, 3);
		let index = SpanIndex::build(items.iter().map(|(d, i, t)| (*d, *i, t.as_str()))).unwrap();
		let dir = tempfile::tempdir().unwrap();
		let path = dir.path().join("spans.idx");
		index.save(&path).unwrap();
		let loaded = SpanIndex::load(&path).unwrap();
		assert_eq!(loaded, index);
		let output = format!("intro {} outro", items[42].2);
		assert_eq!(loaded.find_spans(&output), index.find_spans(&output));
		assert_eq!(loaded.find_spans(&output)[0].items, vec![(0, 42)]);
		// Item hashes are the chain's content hashes of the normalised texts.
		let (d, i, h) = loaded.items().nth(5).unwrap();
		let text = &items.iter().find(|x| (x.0, x.1) == (d, i)).unwrap().2;
		assert_eq!(h, openledger_primitives::item_hash(text).0);
		// Saving again replaces the file atomically and leaves no temporary behind.
		index.save(&path).unwrap();
		assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
		let empty = SpanIndex::build(Vec::<(u32, u32, &str)>::new()).unwrap();
		empty.save(&path).unwrap();
		assert_eq!(SpanIndex::load(&path).unwrap(), empty);
	}

	#[test]
	fn corruption_is_detected() {
		let items = corpus(50, 4);
		let index = SpanIndex::build(items.iter().map(|(d, i, t)| (*d, *i, t.as_str()))).unwrap();
		let bytes = index.to_bytes();
		let path = Path::new("test.idx");
		let err = |b: &[u8]| SpanIndex::from_bytes(b, path).unwrap_err().to_string();
		// A flipped bit anywhere in the body.
		for pos in [HEADER_LEN, HEADER_LEN + 100, bytes.len() / 2, bytes.len() - 1] {
			let mut bad = bytes.clone();
			bad[pos] ^= 0x10;
			assert!(err(&bad).contains("checksum mismatch"), "{}", err(&bad));
		}
		assert!(err(&bytes[..bytes.len() - 4]).contains("truncated"));
		assert!(err(&bytes[..10]).contains("shorter than"));
		let mut bad = bytes.clone();
		bad[0] = b'X';
		assert!(err(&bad).contains("bad magic"));
		let mut bad = bytes.clone();
		bad[8] = 9;
		assert!(matches!(SpanIndex::from_bytes(&bad, path), Err(SpanIndexError::UnsupportedVersion { found: 9, .. })));
		// A well-formed checksum over a broken structure is still refused.
		let mut bad = bytes.clone();
		let sa_start = bytes.len() - index.token_count() * 4;
		bad[sa_start..sa_start + 4].copy_from_slice(&u32::MAX.to_le_bytes());
		let sum = content_hash(&bad[HEADER_LEN..]);
		bad[24..56].copy_from_slice(sum.as_bytes());
		assert!(err(&bad).contains("not a permutation"));
		assert!(matches!(SpanIndex::load("/nonexistent/x.idx"), Err(SpanIndexError::Io { .. })));
	}
}
