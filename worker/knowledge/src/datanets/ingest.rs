//! Ingest: a directory of documents becomes one DataNet's index.
//!
//! # What is read
//!
//! The directory is walked recursively in byte order of names (so the order, and with it every
//! report and tie-break, is the same on every machine). Names starting with `.` are skipped, as
//! are symbolic links to directories; symbolic links to files are followed. Three kinds of file
//! are read, by extension (case-insensitive):
//!
//! - `.txt`: plain text;
//! - `.md`, `.markdown`: Markdown; a heading starts a new chunk;
//! - `.jsonl`: one JSON object per line with a string field `text` (one document each) and
//!   optionally `id` (a string or number, used in the item's source name) and `meta` (ignored).
//!   Blank lines are skipped; a bad line is reported and skipped, the rest of the file is read.
//!
//! A file is skipped, with a line in the report, when it cannot be read, is larger than
//! [`IngestOptions::max_file_bytes`], contains a NUL byte or is not UTF-8 (binary), or has
//! another extension. A UTF-8 byte-order mark is dropped.
//!
//! # Chunking
//!
//! The rule is deterministic and independent of the embedding model, so anyone can recompute an
//! item's content hash from the document:
//!
//! 1. The document is normalised with [`normalise_item_text`] (LF line ends, no trailing
//!    whitespace, no leading or trailing blank lines).
//! 2. It is cut into paragraphs at blank lines. In Markdown, a heading line (`#` to `######`
//!    then a space or the line's end, at most three spaces indented) is a paragraph of its own
//!    that begins a new chunk, and fenced code blocks (```` ``` ```` or `~~~`) are never cut and
//!    hold no headings.
//! 3. Paragraphs are packed in order into chunks of at most [`IngestOptions::max_chunk_chars`]
//!    characters (Unicode scalar values), joined by one blank line.
//! 4. A paragraph longer than that on its own is split at sentence ends (`.`, `!` or `?`
//!    followed by whitespace) and line ends, the pieces packed the same way (joined by the
//!    whitespace they were split at); a piece still too long is cut at its last whitespace
//!    within the limit, or at the limit when it has none. The whitespace at a cut is dropped.
//! 5. Each chunk is normalised again; empty chunks are dropped. Its content hash is
//!    [`item_hash`] of its text, the hash the chain stores for the contribution.
//!
//! The default of 1,000 characters keeps ordinary English prose within the embedding model's
//! 256 tokens; text beyond the 256th token of a chunk is kept in the item but not seen by the
//! embedding (the report counts such chunks).
//!
//! # Keeping the index in step
//!
//! Items are keyed by content hash. A chunk whose hash the DataNet already holds is not embedded
//! again (if it moved, only its source is updated); identical chunks are stored once (the first
//! in walk order); items of the index that the directory no longer produces are removed. New
//! items are embedded and committed in batches of [`IngestOptions::commit_every`], each durable
//! on its own: an ingest killed midway keeps what it committed, and running it again embeds only
//! the rest.

use std::{
	collections::HashSet,
	fmt, fs,
	io::Read,
	path::{Path, PathBuf},
	time::Instant,
};

use anyhow::{bail, Context, Result};
use openledger_primitives::{content_hash, item_hash, normalise_item_text, ContentHash, DataNetId};
use serde::Serialize;

use super::{
	embed::Embedder,
	index::{IndexWriter, ItemRecord},
};

/// Limits and batch sizes of an ingest.
#[derive(Clone, Debug)]
pub struct IngestOptions {
	/// Larger files are skipped (10 MiB by default).
	pub max_file_bytes: u64,
	/// The most characters in a chunk (1,000 by default).
	pub max_chunk_chars: usize,
	/// New items embedded and committed together (256 by default).
	pub commit_every: usize,
	/// Log progress after about this many newly embedded items (1,024 by default).
	pub progress_every: usize,
	/// Compact the index when an ingest leaves more segments than this (8 by default).
	pub compact_above_segments: usize,
}

impl Default for IngestOptions {
	fn default() -> Self {
		Self {
			max_file_bytes: 10 << 20,
			max_chunk_chars: 1000,
			commit_every: 256,
			progress_every: 1024,
			compact_above_segments: 8,
		}
	}
}

/// A file, or a JSONL line, that was not ingested, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Skipped {
	/// Relative to the ingested directory; `file.jsonl:12` for a line.
	pub path: String,
	pub reason: String,
}

/// What an ingest did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct IngestReport {
	pub datanet: DataNetId,
	pub index: PathBuf,
	/// Files whose text was read.
	pub files_read: usize,
	/// Files (and JSONL lines) skipped, with the reason.
	pub skipped: Vec<Skipped>,
	/// Non-empty chunks the documents produced, duplicates included.
	pub chunks: usize,
	/// Chunks that were empty after normalisation and were dropped.
	pub empty_chunks: usize,
	/// Chunks identical to an earlier one (same content hash), stored once.
	pub duplicates: usize,
	/// Items embedded and added.
	pub items_new: usize,
	/// Items already in the index, at the same source and position.
	pub items_unchanged: usize,
	/// Items already in the index whose source or position changed (not embedded again).
	pub items_moved: usize,
	/// Items of the index the documents no longer produce.
	pub items_removed: usize,
	/// Items in the index afterwards.
	pub items_total: usize,
	/// New items longer than the model's token limit (embedded from their beginning only).
	pub items_truncated: usize,
	/// Texts run through the model.
	pub embedded: usize,
	pub seconds: f64,
}

impl fmt::Display for IngestReport {
	fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
		writeln!(f, "DataNet {} -> {}", self.datanet, self.index.display())?;
		writeln!(f, "files: {} read, {} skipped", self.files_read, self.skipped.len())?;
		for s in &self.skipped {
			writeln!(f, "  skipped {}: {}", s.path, s.reason)?;
		}
		writeln!(
			f,
			"chunks: {} ({} duplicates, {} empty dropped)",
			self.chunks, self.duplicates, self.empty_chunks
		)?;
		writeln!(
			f,
			"items: {} new, {} unchanged, {} moved, {} removed; {} in the index",
			self.items_new, self.items_unchanged, self.items_moved, self.items_removed, self.items_total
		)?;
		if self.items_truncated > 0 {
			writeln!(f, "  {} new items exceed the model's token limit and are embedded from their start", self.items_truncated)?;
		}
		write!(f, "embedded {} texts in {:.1} s", self.embedded, self.seconds)
	}
}

/// A chunk of a document, ready to be keyed and embedded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
	/// `item_hash(text)`.
	pub hash: ContentHash,
	pub source: String,
	pub ordinal: u32,
	/// Normalised text.
	pub text: String,
}

/// The kind of document, from its extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DocKind {
	Text,
	Markdown,
	Jsonl,
}

impl DocKind {
	pub fn of(path: &Path) -> Option<Self> {
		let ext = path.extension()?.to_str()?.to_ascii_lowercase();
		match ext.as_str() {
			"txt" => Some(Self::Text),
			"md" | "markdown" => Some(Self::Markdown),
			"jsonl" => Some(Self::Jsonl),
			_ => None,
		}
	}
}

/// Cuts a document into chunks by the rule in the module documentation. Returns the chunks'
/// normalised texts, empty ones included (callers count and drop them).
pub fn chunk_text(text: &str, markdown: bool, max_chars: usize) -> Vec<String> {
	let max_chars = max_chars.max(1);
	let normalised = normalise_item_text(text);
	let mut chunks = Vec::new();
	let mut current = String::new();
	let mut current_chars = 0usize;
	let flush = |chunks: &mut Vec<String>, current: &mut String, current_chars: &mut usize| {
		if !current.is_empty() {
			chunks.push(normalise_item_text(current));
			current.clear();
			*current_chars = 0;
		}
	};
	for (paragraph, starts_section) in paragraphs(&normalised, markdown) {
		let chars = paragraph.chars().count();
		if starts_section {
			flush(&mut chunks, &mut current, &mut current_chars);
		}
		if chars > max_chars {
			flush(&mut chunks, &mut current, &mut current_chars);
			chunks.extend(split_long(&paragraph, max_chars).into_iter().map(|p| normalise_item_text(&p)));
			continue;
		}
		if !current.is_empty() && current_chars + 2 + chars > max_chars {
			flush(&mut chunks, &mut current, &mut current_chars);
		}
		if !current.is_empty() {
			current.push_str("\n\n");
			current_chars += 2;
		}
		current.push_str(&paragraph);
		current_chars += chars;
	}
	flush(&mut chunks, &mut current, &mut current_chars);
	chunks
}

fn is_heading(line: &str) -> bool {
	let indent = line.len() - line.trim_start_matches(' ').len();
	if indent > 3 {
		return false;
	}
	let rest = &line[indent..];
	let hashes = rest.len() - rest.trim_start_matches('#').len();
	(1..=6).contains(&hashes) && (rest.len() == hashes || rest[hashes..].starts_with([' ', '\t']))
}

fn is_fence(line: &str) -> bool {
	let t = line.trim_start_matches(' ');
	line.len() - t.len() <= 3 && (t.starts_with("```") || t.starts_with("~~~"))
}

/// Paragraphs of normalised text, each with whether it begins a section (a Markdown heading).
fn paragraphs(text: &str, markdown: bool) -> Vec<(String, bool)> {
	let mut out: Vec<(String, bool)> = Vec::new();
	let mut current: Vec<&str> = Vec::new();
	let mut in_fence = false;
	let push = |current: &mut Vec<&str>, out: &mut Vec<(String, bool)>| {
		if !current.is_empty() {
			out.push((current.join("\n"), false));
			current.clear();
		}
	};
	for line in text.split('\n') {
		if markdown && is_fence(line) {
			in_fence = !in_fence;
			current.push(line);
			continue;
		}
		if in_fence {
			current.push(line);
			continue;
		}
		if line.is_empty() {
			push(&mut current, &mut out);
			continue;
		}
		if markdown && is_heading(line) {
			push(&mut current, &mut out);
			out.push((line.to_string(), true));
			continue;
		}
		current.push(line);
	}
	push(&mut current, &mut out);
	out
}

/// Splits an over-long paragraph: sentences and lines packed up to `max_chars`, hard cuts where
/// a single piece is longer.
fn split_long(paragraph: &str, max_chars: usize) -> Vec<String> {
	// Pieces: each ends after a sentence end or line end, with the whitespace that follows it
	// kept as the separator to the next piece.
	let mut pieces: Vec<(&str, &str)> = Vec::new(); // (piece, separator after it)
	let bytes = paragraph.as_bytes();
	let mut start = 0;
	let mut i = 0;
	while i < bytes.len() {
		let b = bytes[i];
		let boundary = b == b'\n'
			|| (matches!(b, b'.' | b'!' | b'?') && i + 1 < bytes.len() && matches!(bytes[i + 1], b' ' | b'\t' | b'\n'));
		if boundary {
			let end = if b == b'\n' { i } else { i + 1 };
			let mut next = end;
			while next < bytes.len() && matches!(bytes[next], b' ' | b'\t' | b'\n') {
				next += 1;
			}
			pieces.push((&paragraph[start..end], &paragraph[end..next]));
			start = next;
			i = next;
			continue;
		}
		i += 1;
	}
	if start < paragraph.len() {
		pieces.push((&paragraph[start..], ""));
	}

	let mut out = Vec::new();
	let mut current = String::new();
	let mut current_chars = 0usize;
	let mut pending_sep = "";
	for (piece, sep) in pieces {
		let chars = piece.chars().count();
		if chars > max_chars {
			if !current.is_empty() {
				out.push(std::mem::take(&mut current));
				current_chars = 0;
			}
			out.extend(hard_cut(piece, max_chars));
			pending_sep = "";
			continue;
		}
		let sep_chars = pending_sep.chars().count();
		if !current.is_empty() && current_chars + sep_chars + chars > max_chars {
			out.push(std::mem::take(&mut current));
			current_chars = 0;
		}
		if !current.is_empty() {
			current.push_str(pending_sep);
			current_chars += sep_chars;
		}
		current.push_str(piece);
		current_chars += chars;
		pending_sep = sep;
	}
	if !current.is_empty() {
		out.push(current);
	}
	out
}

/// Cuts text with no sentence or line ends into pieces of at most `max_chars` characters, at
/// the last whitespace inside each window, else at the window's end.
fn hard_cut(text: &str, max_chars: usize) -> Vec<String> {
	let mut out = Vec::new();
	let mut rest = text.trim_start();
	while !rest.is_empty() {
		let window_end = rest.char_indices().nth(max_chars).map(|(i, _)| i).unwrap_or(rest.len());
		if window_end == rest.len() {
			out.push(rest.to_string());
			break;
		}
		// Cut at the last whitespace within the window (the whitespace itself is dropped), or at
		// the window's end when the next character is whitespace or there is none in it.
		let next_is_space = rest[window_end..].starts_with(char::is_whitespace);
		let cut = if next_is_space {
			window_end
		} else {
			rest[..window_end].rfind(char::is_whitespace).filter(|&i| i > 0).unwrap_or(window_end)
		};
		out.push(rest[..cut].trim_end().to_string());
		rest = rest[cut..].trim_start();
	}
	out
}

/// Documents found under a directory, in walk order.
struct Walk {
	files: Vec<(PathBuf, String, DocKind)>,
	skipped: Vec<Skipped>,
}

fn walk(root: &Path) -> Result<Walk> {
	let mut walk = Walk { files: Vec::new(), skipped: Vec::new() };
	walk_dir(root, "", &mut walk)?;
	Ok(walk)
}

fn walk_dir(dir: &Path, rel: &str, out: &mut Walk) -> Result<()> {
	let entries = match fs::read_dir(dir) {
		Ok(entries) => entries,
		Err(e) if !rel.is_empty() => {
			out.skipped.push(Skipped { path: format!("{rel}/"), reason: format!("unreadable directory: {e}") });
			return Ok(());
		},
		Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
	};
	let mut entries: Vec<_> = entries.filter_map(|e| e.ok()).collect();
	entries.sort_by_key(|e| e.file_name());
	for entry in entries {
		let name = entry.file_name();
		let path = entry.path();
		let Some(name) = name.to_str() else {
			let shown = format!("{}{}", if rel.is_empty() { "" } else { "/" }, name.to_string_lossy());
			out.skipped.push(Skipped { path: format!("{rel}{shown}"), reason: "name is not UTF-8".into() });
			continue;
		};
		if name.starts_with('.') {
			continue;
		}
		let rel_path = if rel.is_empty() { name.to_string() } else { format!("{rel}/{name}") };
		let link = entry.file_type().map(|t| t.is_symlink()).unwrap_or(false);
		let meta = match fs::metadata(&path) {
			Ok(meta) => meta,
			Err(e) => {
				out.skipped.push(Skipped { path: rel_path, reason: format!("unreadable: {e}") });
				continue;
			},
		};
		if meta.is_dir() {
			if link {
				out.skipped.push(Skipped { path: rel_path, reason: "symbolic link to a directory (not followed)".into() });
			} else {
				walk_dir(&path, &rel_path, out)?;
			}
			continue;
		}
		if !meta.is_file() {
			out.skipped.push(Skipped { path: rel_path, reason: "not a regular file".into() });
			continue;
		}
		match DocKind::of(&path) {
			Some(kind) => out.files.push((path, rel_path, kind)),
			None => out
				.skipped
				.push(Skipped { path: rel_path, reason: "unsupported file type (want .txt, .md, .jsonl)".into() }),
		}
	}
	Ok(())
}

/// Reads a document as UTF-8 text, or says why not.
fn read_text(path: &Path, max_bytes: u64) -> std::result::Result<String, String> {
	let file = fs::File::open(path).map_err(|e| format!("unreadable: {e}"))?;
	let len = file.metadata().map_err(|e| format!("unreadable: {e}"))?.len();
	if len > max_bytes {
		return Err(format!("too large: {len} bytes, the limit is {max_bytes}"));
	}
	let mut bytes = Vec::with_capacity(len as usize);
	file.take(max_bytes + 1).read_to_end(&mut bytes).map_err(|e| format!("unreadable: {e}"))?;
	if bytes.len() as u64 > max_bytes {
		return Err(format!("too large: more than {max_bytes} bytes"));
	}
	if let Some(at) = bytes.iter().position(|&b| b == 0) {
		return Err(format!("binary: NUL byte at offset {at}"));
	}
	let text = String::from_utf8(bytes).map_err(|e| format!("binary or not UTF-8: invalid byte at offset {}", e.utf8_error().valid_up_to()))?;
	Ok(text.strip_prefix('\u{feff}').map(str::to_owned).unwrap_or(text))
}

/// Scans `docs` and cuts every readable document into chunks (not yet deduplicated).
pub fn scan_documents(docs: &Path, opts: &IngestOptions, report: &mut IngestReport) -> Result<Vec<Chunk>> {
	if !docs.is_dir() {
		bail!("documents directory {} does not exist or is not a directory", docs.display());
	}
	let walk = walk(docs)?;
	report.skipped.extend(walk.skipped);
	let mut chunks = Vec::new();
	let mut push = |source: String, text: &str, markdown: bool, report: &mut IngestReport| {
		let mut ordinal = 0u32;
		for chunk in chunk_text(text, markdown, opts.max_chunk_chars) {
			if chunk.is_empty() {
				report.empty_chunks += 1;
				continue;
			}
			debug_assert_eq!(item_hash(&chunk), content_hash(chunk.as_bytes()));
			chunks.push(Chunk { hash: content_hash(chunk.as_bytes()), source: source.clone(), ordinal, text: chunk });
			ordinal += 1;
		}
	};
	for (path, rel, kind) in walk.files {
		let text = match read_text(&path, opts.max_file_bytes) {
			Ok(text) => text,
			Err(reason) => {
				report.skipped.push(Skipped { path: rel, reason });
				continue;
			},
		};
		report.files_read += 1;
		match kind {
			DocKind::Text => push(rel, &text, false, report),
			DocKind::Markdown => push(rel, &text, true, report),
			DocKind::Jsonl =>
				for (n, line) in text.lines().enumerate() {
					if line.trim().is_empty() {
						continue;
					}
					let line_no = n + 1;
					match parse_jsonl_line(line) {
						Ok((id, text)) => {
							let source = match id {
								Some(id) => format!("{rel}#{id}"),
								None => format!("{rel}:{line_no}"),
							};
							push(source, &text, false, report);
						},
						Err(reason) => report.skipped.push(Skipped { path: format!("{rel}:{line_no}"), reason }),
					}
				},
		}
	}
	Ok(chunks)
}

fn parse_jsonl_line(line: &str) -> std::result::Result<(Option<String>, String), String> {
	let value: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
	let object = value.as_object().ok_or("not a JSON object")?;
	let text = match object.get("text") {
		Some(serde_json::Value::String(text)) => text.clone(),
		Some(_) => return Err("`text` is not a string".into()),
		None => return Err("no `text` field".into()),
	};
	let id = match object.get("id") {
		None | Some(serde_json::Value::Null) => None,
		Some(serde_json::Value::String(s)) => Some(s.clone()),
		Some(serde_json::Value::Number(n)) => Some(n.to_string()),
		Some(_) => return Err("`id` is neither a string nor a number".into()),
	};
	Ok((id, text))
}

/// Ingests `docs` into `datanet`'s index under `index_root` (created when absent): embeds the
/// chunks the index lacks, updates moved ones, removes vanished ones. See the module
/// documentation for what is read and how it is cut.
pub fn ingest_dir(
	docs: &Path,
	index_root: &Path,
	datanet: DataNetId,
	embedder: &Embedder,
	opts: &IngestOptions,
) -> Result<IngestReport> {
	let started = Instant::now();
	if !docs.is_dir() {
		bail!("documents directory {} does not exist or is not a directory", docs.display());
	}
	let mut writer = IndexWriter::open(index_root, datanet, embedder.model())?;
	let mut report = IngestReport { datanet, index: writer.dir().to_path_buf(), ..IngestReport::default() };

	let chunks = scan_documents(docs, opts, &mut report)?;
	report.chunks = chunks.len();
	let mut seen = HashSet::with_capacity(chunks.len());
	let mut fresh = Vec::new();
	let mut moved = Vec::new();
	for chunk in chunks {
		if !seen.insert(chunk.hash) {
			report.duplicates += 1;
			continue;
		}
		match writer.get(&chunk.hash) {
			Some(old) if old.source == chunk.source && old.ordinal == chunk.ordinal => report.items_unchanged += 1,
			Some(old) => moved.push(ItemRecord { source: chunk.source, ordinal: chunk.ordinal, ..old.clone() }),
			None => fresh.push(chunk),
		}
	}
	let removed: Vec<ContentHash> = writer.items().map(|r| r.hash).filter(|h| !seen.contains(h)).collect();
	report.items_moved = moved.len();
	report.items_removed = removed.len();
	tracing::info!(
		"DataNet {datanet}: {} files read, {} skipped; {} items to embed, {} unchanged, {} moved, {} to remove",
		report.files_read,
		report.skipped.len(),
		fresh.len(),
		report.items_unchanged,
		moved.len(),
		removed.len()
	);

	let truncated_before = embedder.texts_truncated();
	let total = fresh.len();
	let embed_started = Instant::now();
	let mut next_log = opts.progress_every.max(1);
	let mut done = 0usize;
	for batch in fresh.chunks(opts.commit_every.max(1)) {
		let texts: Vec<&str> = batch.iter().map(|c| c.text.as_str()).collect();
		let vectors = embedder.embed(&texts)?;
		let records = batch
			.iter()
			.zip(vectors)
			.map(|(c, embedding)| ItemRecord {
				hash: c.hash,
				source: c.source.clone(),
				ordinal: c.ordinal,
				text: c.text.clone(),
				chain_item: None,
				embedding,
			})
			.collect();
		writer.commit(records, &[])?;
		done += batch.len();
		report.items_new += batch.len();
		report.embedded += batch.len();
		if done >= next_log || done == total {
			let rate = done as f64 / embed_started.elapsed().as_secs_f64().max(1e-9);
			tracing::info!("DataNet {datanet}: embedded {done}/{total} new items ({rate:.0}/s)");
			next_log = done + opts.progress_every.max(1);
		}
	}
	report.items_truncated = (embedder.texts_truncated() - truncated_before) as usize;
	writer.commit(moved, &removed)?;
	if writer.segments() > opts.compact_above_segments {
		tracing::info!("DataNet {datanet}: compacting {} segments", writer.segments());
		writer.compact()?;
	}
	report.items_total = writer.len();
	report.seconds = started.elapsed().as_secs_f64();
	Ok(report)
}

#[cfg(test)]
mod tests {
	use std::collections::HashMap;

	use super::*;

	#[test]
	fn paragraphs_are_packed_up_to_the_limit() {
		let text = "one one one\n\ntwo two two\n\nthree three three\n";
		assert_eq!(chunk_text(text, false, 1000), vec!["one one one\n\ntwo two two\n\nthree three three"]);
		// 11 + 2 + 11 = 24 fits in 25; the third paragraph does not.
		assert_eq!(chunk_text(text, false, 25), vec!["one one one\n\ntwo two two", "three three three"]);
	}

	#[test]
	fn markdown_headings_start_chunks_and_fences_stay_whole() {
		let text = "intro\n\n# First\nbody one\n\n## Second\n\n```\n# not a heading\n\ncode\n```\nafter\n";
		let chunks = chunk_text(text, true, 1000);
		assert_eq!(chunks, vec!["intro", "# First\n\nbody one", "## Second\n\n```\n# not a heading\n\ncode\n```\nafter"]);
		// As plain text the same document is one chunk: `#` means nothing there.
		assert_eq!(chunk_text(text, false, 1000).len(), 1);
		assert!(is_heading("# x") && is_heading("###") && is_heading("   ## y"));
		assert!(!is_heading("#hashtag") && !is_heading("    # indented code") && !is_heading("####### seven"));
	}

	#[test]
	fn long_paragraphs_split_at_sentences_then_whitespace() {
		let text = "First sentence here. Second sentence here! Third one? Fourth.";
		let chunks = chunk_text(text, false, 30);
		assert_eq!(chunks, vec!["First sentence here.", "Second sentence here!", "Third one? Fourth."]);
		for c in &chunks {
			assert!(c.chars().count() <= 30);
		}
		let words = "alpha beta gamma delta epsilon zeta eta theta";
		assert_eq!(chunk_text(words, false, 12), vec!["alpha beta", "gamma delta", "epsilon zeta", "eta theta"]);
		// No whitespace at all: cut at the limit, counting characters, not bytes.
		let cjk = "日本語のテキスト日本語のテキスト";
		let chunks = chunk_text(cjk, false, 5);
		assert_eq!(chunks.concat(), cjk);
		assert!(chunks.iter().all(|c| c.chars().count() <= 5));
	}

	#[test]
	fn chunking_is_normalised_and_hashes_match_the_chain() {
		let text = "\r\n\r\n  Line with trailing spaces   \r\nnext\t\r\n\r\n\r\n";
		let chunks = chunk_text(text, false, 1000);
		assert_eq!(chunks, vec!["  Line with trailing spaces\nnext"]);
		assert_eq!(item_hash(&chunks[0]), item_hash(text));
		assert_eq!(chunk_text("   \n\n\t\n", false, 1000), Vec::<String>::new());
	}

	#[test]
	fn every_chunk_respects_the_limit_and_keeps_all_words() {
		let mut doc = String::new();
		for i in 0..200 {
			doc.push_str(&format!("Sentence number {i} talks about topic {}. ", i % 7));
			if i % 13 == 0 {
				doc.push_str("\n\n");
			}
		}
		for max in [40, 100, 333, 1000] {
			let chunks = chunk_text(&doc, false, max);
			assert!(chunks.iter().all(|c| c.chars().count() <= max), "max {max}");
			let words: Vec<&str> = doc.split_whitespace().collect();
			let joined = chunks.join(" ");
			let got: Vec<&str> = joined.split_whitespace().collect();
			assert_eq!(got, words, "max {max}");
		}
	}

	#[test]
	fn jsonl_lines_need_a_text_field() {
		assert_eq!(parse_jsonl_line(r#"{"text":"hi","id":7,"meta":{"a":1}}"#).unwrap(), (Some("7".into()), "hi".into()));
		assert_eq!(parse_jsonl_line(r#"{"text":"hi"}"#).unwrap(), (None, "hi".into()));
		assert!(parse_jsonl_line(r#"{"body":"hi"}"#).unwrap_err().contains("no `text`"));
		assert!(parse_jsonl_line(r#"["hi"]"#).unwrap_err().contains("not a JSON object"));
		assert!(parse_jsonl_line("{oops").unwrap_err().contains("not JSON"));
		assert!(parse_jsonl_line(r#"{"text":3}"#).unwrap_err().contains("not a string"));
	}

	#[test]
	fn the_walk_is_sorted_and_says_why_it_skips() {
		let dir = tempfile::tempdir().unwrap();
		let d = dir.path();
		fs::create_dir_all(d.join("b/inner")).unwrap();
		fs::create_dir_all(d.join(".git")).unwrap();
		fs::write(d.join(".git/config.txt"), "hidden").unwrap();
		fs::write(d.join("b/inner/z.md"), "# Z\n\nzed").unwrap();
		fs::write(d.join("b/a.txt"), "bee a").unwrap();
		fs::write(d.join("a.TXT"), "upper-case extension").unwrap();
		fs::write(d.join("c.jsonl"), "{\"text\":\"first\"}\n\nnot json\n{\"text\":\"second\",\"id\":\"s\"}\n").unwrap();
		fs::write(d.join("image.png"), [0x89, b'P', b'N', b'G']).unwrap();
		fs::write(d.join("nul.txt"), b"text\0more").unwrap();
		fs::write(d.join("latin1.txt"), [b'c', b'a', b'f', 0xe9]).unwrap();
		fs::write(d.join("big.txt"), "x".repeat(2000)).unwrap();
		fs::write(d.join("bom.md"), "\u{feff}with a BOM").unwrap();
		#[cfg(unix)]
		std::os::unix::fs::symlink(d.join("missing-target.txt"), d.join("dangling.txt")).unwrap();

		let opts = IngestOptions { max_file_bytes: 1000, ..IngestOptions::default() };
		let mut report = IngestReport::default();
		let chunks = scan_documents(d, &opts, &mut report).unwrap();
		let sources: Vec<&str> = chunks.iter().map(|c| c.source.as_str()).collect();
		assert_eq!(sources, ["a.TXT", "b/a.txt", "b/inner/z.md", "bom.md", "c.jsonl:1", "c.jsonl#s"]);
		assert_eq!(chunks[2].text, "# Z\n\nzed");
		assert_eq!(chunks[3].text, "with a BOM");
		assert_eq!(report.files_read, 5);
		let reasons: HashMap<&str, &str> = report.skipped.iter().map(|s| (s.path.as_str(), s.reason.as_str())).collect();
		assert!(reasons["big.txt"].starts_with("too large"), "{reasons:?}");
		assert!(reasons["nul.txt"].starts_with("binary"), "{reasons:?}");
		assert!(reasons["latin1.txt"].contains("not UTF-8"), "{reasons:?}");
		assert!(reasons["image.png"].contains("unsupported"), "{reasons:?}");
		assert!(reasons["c.jsonl:3"].contains("not JSON"), "{reasons:?}");
		#[cfg(unix)]
		assert!(reasons["dangling.txt"].starts_with("unreadable"), "{reasons:?}");
		assert!(!reasons.keys().any(|k| k.contains(".git")));
	}
}
