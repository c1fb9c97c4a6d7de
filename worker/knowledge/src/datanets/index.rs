//! The on-disk index of one DataNet: every item's content hash, where it came from, its
//! normalised text, its embedding and (once the chain client knows it) its on-chain item id.
//!
//! # Layout
//!
//! An index root holds one directory per DataNet, `datanet-<id>/`, containing:
//!
//! - `MANIFEST`: which segments make up the index, with each one's size and blake2-256;
//! - `seg-<seq>.seg`: immutable segments, each a batch of upserted items and removed hashes;
//! - `LOCK`: locked (advisory `flock`) by the one writer while it runs;
//! - `*.tmp`, and segments the manifest does not list: debris of an interrupted write, ignored by
//!   readers and deleted by the next writer.
//!
//! All integers are little-endian. A `bytes` field is a `u32` length then that many bytes.
//!
//! ```text
//! MANIFEST := "OLIDXMAN" version:u32 datanet:u32 fingerprint:[32] dim:u32 model_name:bytes
//!             next_seq:u64 count:u32 (seq:u64 size:u64 blake2:[32])*count  checksum:[32]
//! segment  := "OLIDXSEG" version:u32 datanet:u32 fingerprint:[32] dim:u32 seq:u64
//!             upserts:u32 removals:u32 item*upserts hash:[32]*removals  checksum:[32]
//! item     := hash:[32] has_chain_item:u8 chain_item:u32 ordinal:u32 source:bytes text:bytes
//!             embedding:f32*dim
//! ```
//!
//! `checksum` is the blake2-256 of every byte before it; an item's `hash` must equal
//! `content_hash(text)` ([`openledger_primitives::item_hash`] of the source text). Replaying the
//! segments in manifest order (an upsert replaces the item with the same hash, a removal drops
//! it) gives the index.
//!
//! # Crash safety
//!
//! A commit writes its segment to a temporary file, syncs it and renames it into place, then
//! does the same with a new `MANIFEST` and syncs the directory. The rename of the manifest is the
//! commit point: a process killed at any moment leaves either the old or the new manifest, and
//! every segment a manifest lists was complete before it was written. Anything else on disk that
//! does not match the manifest (a segment shorter than recorded, a flipped byte, a missing file, a
//! manifest that does not parse) is reported as corruption on open, never read past.

use std::{
	collections::HashMap,
	fs::{self, File, OpenOptions},
	io::{self, Write},
	path::{Path, PathBuf},
};

use openledger_primitives::{content_hash, ContentHash, DataNetId, ItemId};

use super::embed::EmbeddingModel;

/// The format version this code reads and writes.
pub const FORMAT_VERSION: u32 = 1;
const MANIFEST: &str = "MANIFEST";
const LOCK: &str = "LOCK";
const MANIFEST_MAGIC: &[u8; 8] = b"OLIDXMAN";
const SEGMENT_MAGIC: &[u8; 8] = b"OLIDXSEG";
const DIR_PREFIX: &str = "datanet-";

/// Why an index could not be opened or written. Every variant names the path.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
	#[error("no index for DataNet {datanet} under {}", root.display())]
	NotFound { datanet: DataNetId, root: PathBuf },
	#[error("index {} is corrupt: {detail}; delete it and ingest again", path.display())]
	Corrupt { path: PathBuf, detail: String },
	#[error("index {} has format version {found}; this worker reads version {FORMAT_VERSION}", path.display())]
	Version { path: PathBuf, found: u32 },
	#[error(
		"index {} was built with embedding model {index_model} ({index_fingerprint:?}), not with the loaded {model} ({fingerprint:?}); ingest into another index directory",
		path.display()
	)]
	ModelMismatch {
		path: PathBuf,
		index_model: String,
		index_fingerprint: ContentHash,
		model: String,
		fingerprint: ContentHash,
	},
	#[error("indexes {} and {} were built with different embedding models; they cannot be searched together", a.display(), b.display())]
	MixedModels { a: PathBuf, b: PathBuf },
	#[error("index {} is in use by another writer (is another ingest running?)", path.display())]
	Locked { path: PathBuf },
	#[error("invalid item for index {}: {detail}", path.display())]
	InvalidItem { path: PathBuf, detail: String },
	#[error("{context}: {source}")]
	Io {
		context: String,
		#[source]
		source: io::Error,
	},
}

fn io_err(context: impl FnOnce() -> String) -> impl FnOnce(io::Error) -> IndexError {
	move |source| IndexError::Io { context: context(), source }
}

/// One item as stored: what ingest writes and [`DataNetIndex`] serves.
#[derive(Clone, Debug, PartialEq)]
pub struct ItemRecord {
	/// `content_hash(text)`, the hash the chain stores for the contribution.
	pub hash: ContentHash,
	/// Where the item came from, relative to the ingested directory (`notes/a.md`,
	/// `data.jsonl:12`, `data.jsonl#<id>`).
	pub source: String,
	/// The chunk's position within its source, from 0.
	pub ordinal: u32,
	/// The normalised text ([`openledger_primitives::normalise_item_text`]).
	pub text: String,
	/// The contribution's id on chain, once known.
	pub chain_item: Option<ItemId>,
	/// Unit-length embedding of `text`.
	pub embedding: Vec<f32>,
}

/// An item of a loaded index, without its embedding (that lives in [`DataNetIndex::matrix`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexedItem {
	pub hash: ContentHash,
	pub source: String,
	pub ordinal: u32,
	pub text: String,
	pub chain_item: Option<ItemId>,
}

/// The directory of `datanet`'s index under `root`.
pub fn datanet_dir(root: &Path, datanet: DataNetId) -> PathBuf {
	root.join(format!("{DIR_PREFIX}{datanet}"))
}

/// The DataNets that have an index under `root` (directories `datanet-<id>` with a manifest),
/// in id order.
pub fn list_datanets(root: &Path) -> Result<Vec<DataNetId>, IndexError> {
	let entries = fs::read_dir(root).map_err(io_err(|| format!("listing {}", root.display())))?;
	let mut ids = Vec::new();
	for entry in entries {
		let entry = entry.map_err(io_err(|| format!("listing {}", root.display())))?;
		let name = entry.file_name();
		let Some(id) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)).and_then(|n| n.parse().ok()) else {
			continue;
		};
		if entry.path().join(MANIFEST).is_file() {
			ids.push(id);
		}
	}
	ids.sort_unstable();
	Ok(ids)
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct SegmentEntry {
	seq: u64,
	size: u64,
	checksum: ContentHash,
}

#[derive(Clone, Debug)]
struct Manifest {
	datanet: DataNetId,
	model: EmbeddingModel,
	next_seq: u64,
	segments: Vec<SegmentEntry>,
}

fn segment_name(seq: u64) -> String {
	format!("seg-{seq:010}.seg")
}

fn parse_segment_name(name: &str) -> Option<u64> {
	name.strip_prefix("seg-")?.strip_suffix(".seg")?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Encoding

struct Enc(Vec<u8>);

impl Enc {
	fn u8(&mut self, v: u8) {
		self.0.push(v);
	}
	fn u32(&mut self, v: u32) {
		self.0.extend_from_slice(&v.to_le_bytes());
	}
	fn u64(&mut self, v: u64) {
		self.0.extend_from_slice(&v.to_le_bytes());
	}
	fn raw(&mut self, v: &[u8]) {
		self.0.extend_from_slice(v);
	}
	fn bytes(&mut self, v: &[u8]) {
		self.u32(v.len() as u32);
		self.raw(v);
	}
	fn finish(mut self) -> Vec<u8> {
		let checksum = content_hash(&self.0);
		self.0.extend_from_slice(checksum.as_bytes());
		self.0
	}
}

struct Dec<'a> {
	buf: &'a [u8],
	pos: usize,
	path: &'a Path,
}

impl<'a> Dec<'a> {
	fn corrupt(&self, detail: impl Into<String>) -> IndexError {
		IndexError::Corrupt { path: self.path.to_path_buf(), detail: detail.into() }
	}
	fn take(&mut self, n: usize) -> Result<&'a [u8], IndexError> {
		if self.buf.len() - self.pos < n {
			return Err(self.corrupt(format!("ends early at byte {} (wanted {n} more)", self.pos)));
		}
		let out = &self.buf[self.pos..self.pos + n];
		self.pos += n;
		Ok(out)
	}
	fn u8(&mut self) -> Result<u8, IndexError> {
		Ok(self.take(1)?[0])
	}
	fn u32(&mut self) -> Result<u32, IndexError> {
		Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
	}
	fn u64(&mut self) -> Result<u64, IndexError> {
		Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
	}
	fn hash(&mut self) -> Result<ContentHash, IndexError> {
		Ok(ContentHash::from_slice(self.take(32)?))
	}
	fn bytes(&mut self) -> Result<&'a [u8], IndexError> {
		let len = self.u32()? as usize;
		self.take(len)
	}
	fn string(&mut self, what: &str) -> Result<String, IndexError> {
		let bytes = self.bytes()?;
		String::from_utf8(bytes.to_vec()).map_err(|_| self.corrupt(format!("{what} is not UTF-8")))
	}
}

/// Checks magic, version and trailing checksum of a whole file; returns a decoder positioned
/// after the version and ending before the checksum.
fn open_checked<'a>(buf: &'a [u8], magic: &[u8; 8], path: &'a Path) -> Result<Dec<'a>, IndexError> {
	let corrupt = |detail: String| IndexError::Corrupt { path: path.to_path_buf(), detail };
	if buf.len() < 8 + 4 + 32 {
		return Err(corrupt(format!("only {} bytes long (truncated?)", buf.len())));
	}
	if &buf[..8] != magic {
		return Err(corrupt(format!("does not start with {:?}", String::from_utf8_lossy(magic))));
	}
	let version = u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes"));
	if version != FORMAT_VERSION {
		return Err(IndexError::Version { path: path.to_path_buf(), found: version });
	}
	let (body, checksum) = buf.split_at(buf.len() - 32);
	if content_hash(body).as_bytes() != checksum {
		return Err(corrupt("checksum mismatch (a changed, truncated or partly written file)".into()));
	}
	Ok(Dec { buf: body, pos: 12, path })
}

fn encode_manifest(m: &Manifest) -> Vec<u8> {
	let mut e = Enc(Vec::with_capacity(128 + 48 * m.segments.len()));
	e.raw(MANIFEST_MAGIC);
	e.u32(FORMAT_VERSION);
	e.u32(m.datanet);
	e.raw(m.model.fingerprint.as_bytes());
	e.u32(m.model.dim as u32);
	e.bytes(m.model.name.as_bytes());
	e.u64(m.next_seq);
	e.u32(m.segments.len() as u32);
	for s in &m.segments {
		e.u64(s.seq);
		e.u64(s.size);
		e.raw(s.checksum.as_bytes());
	}
	e.finish()
}

fn decode_manifest(buf: &[u8], path: &Path) -> Result<Manifest, IndexError> {
	let mut d = open_checked(buf, MANIFEST_MAGIC, path)?;
	let datanet = d.u32()?;
	let fingerprint = d.hash()?;
	let dim = d.u32()? as usize;
	let name = d.string("the model name")?;
	let next_seq = d.u64()?;
	let count = d.u32()? as usize;
	let mut segments = Vec::with_capacity(count.min(1 << 16));
	for _ in 0..count {
		let seq = d.u64()?;
		let size = d.u64()?;
		let checksum = d.hash()?;
		if seq >= next_seq || segments.last().is_some_and(|s: &SegmentEntry| s.seq >= seq) {
			return Err(d.corrupt(format!("segment numbers out of order at {seq}")));
		}
		segments.push(SegmentEntry { seq, size, checksum });
	}
	if d.pos != d.buf.len() {
		return Err(d.corrupt("trailing bytes after the segment list"));
	}
	if dim == 0 {
		return Err(d.corrupt("embedding dimension 0"));
	}
	Ok(Manifest { datanet, model: EmbeddingModel { name, dim, fingerprint }, next_seq, segments })
}

fn encode_segment(m: &Manifest, seq: u64, upserts: &[&ItemRecord], removals: &[ContentHash]) -> Vec<u8> {
	let size: usize = upserts.iter().map(|r| 32 + 13 + 8 + r.source.len() + r.text.len() + 4 * r.embedding.len()).sum();
	let mut e = Enc(Vec::with_capacity(96 + size + 32 * removals.len()));
	e.raw(SEGMENT_MAGIC);
	e.u32(FORMAT_VERSION);
	e.u32(m.datanet);
	e.raw(m.model.fingerprint.as_bytes());
	e.u32(m.model.dim as u32);
	e.u64(seq);
	e.u32(upserts.len() as u32);
	e.u32(removals.len() as u32);
	for r in upserts {
		e.raw(r.hash.as_bytes());
		e.u8(r.chain_item.is_some() as u8);
		e.u32(r.chain_item.unwrap_or(0));
		e.u32(r.ordinal);
		e.bytes(r.source.as_bytes());
		e.bytes(r.text.as_bytes());
		for v in &r.embedding {
			e.raw(&v.to_le_bytes());
		}
	}
	for h in removals {
		e.raw(h.as_bytes());
	}
	e.finish()
}

/// Replays one segment onto `items`.
fn apply_segment(
	buf: &[u8],
	path: &Path,
	m: &Manifest,
	seq: u64,
	items: &mut HashMap<ContentHash, ItemRecord>,
) -> Result<(), IndexError> {
	let mut d = open_checked(buf, SEGMENT_MAGIC, path)?;
	let datanet = d.u32()?;
	let fingerprint = d.hash()?;
	let dim = d.u32()? as usize;
	let found_seq = d.u64()?;
	if datanet != m.datanet || fingerprint != m.model.fingerprint || dim != m.model.dim || found_seq != seq {
		return Err(d.corrupt(format!(
			"segment header (DataNet {datanet}, dim {dim}, seq {found_seq}) does not match the manifest (DataNet {}, dim {}, seq {seq})",
			m.datanet, m.model.dim
		)));
	}
	let upserts = d.u32()?;
	let removals = d.u32()?;
	for _ in 0..upserts {
		let hash = d.hash()?;
		let chain_item = match d.u8()? {
			0 => {
				d.u32()?;
				None
			},
			1 => Some(d.u32()?),
			other => return Err(d.corrupt(format!("bad chain-item flag {other}"))),
		};
		let ordinal = d.u32()?;
		let source = d.string("a source path")?;
		let text = d.string("an item's text")?;
		if content_hash(text.as_bytes()) != hash {
			return Err(d.corrupt(format!("item {hash:?} from {source} does not hash to its key")));
		}
		let raw = d.take(4 * dim)?;
		let embedding: Vec<f32> =
			raw.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect();
		if embedding.iter().any(|v| !v.is_finite()) {
			return Err(d.corrupt(format!("item {hash:?} has a non-finite embedding")));
		}
		items.insert(hash, ItemRecord { hash, source, ordinal, text, chain_item, embedding });
	}
	for _ in 0..removals {
		let hash = d.hash()?;
		items.remove(&hash);
	}
	if d.pos != d.buf.len() {
		return Err(d.corrupt("trailing bytes after the last record"));
	}
	Ok(())
}

// ---------------------------------------------------------------------------------------------
// Files

fn sync_dir(dir: &Path) -> io::Result<()> {
	#[cfg(unix)]
	File::open(dir)?.sync_all()?;
	#[cfg(not(unix))]
	let _ = dir;
	Ok(())
}

/// Writes `bytes` to `dir/name` atomically: a synced temporary file renamed over the target,
/// then the directory synced.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), IndexError> {
	let tmp = dir.join(format!("{name}.tmp"));
	let target = dir.join(name);
	let write = || -> io::Result<()> {
		let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
		file.write_all(bytes)?;
		file.sync_all()?;
		drop(file);
		fs::rename(&tmp, &target)?;
		sync_dir(dir)
	};
	write().map_err(io_err(|| format!("writing {}", target.display())))
}

/// What is on disk for one DataNet, verified and replayed.
struct Loaded {
	manifest: Manifest,
	items: HashMap<ContentHash, ItemRecord>,
	bytes_on_disk: u64,
}

fn read_manifest(dir: &Path) -> Result<Option<(Vec<u8>, Manifest)>, IndexError> {
	let path = dir.join(MANIFEST);
	match fs::read(&path) {
		Ok(buf) => {
			let manifest = decode_manifest(&buf, &path)?;
			Ok(Some((buf, manifest)))
		},
		Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
		Err(e) => Err(IndexError::Io { context: format!("reading {}", path.display()), source: e }),
	}
}

enum LoadFailure {
	/// A listed segment vanished; if the manifest changed meanwhile a writer compacted.
	Missing(PathBuf),
	Error(IndexError),
}

fn load_segments(dir: &Path, manifest_bytes: &[u8], manifest: Manifest) -> Result<Loaded, LoadFailure> {
	let mut items = HashMap::new();
	let mut bytes_on_disk = manifest_bytes.len() as u64;
	for entry in &manifest.segments {
		let path = dir.join(segment_name(entry.seq));
		let buf = match fs::read(&path) {
			Ok(buf) => buf,
			Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(LoadFailure::Missing(path)),
			Err(e) =>
				return Err(LoadFailure::Error(IndexError::Io { context: format!("reading {}", path.display()), source: e })),
		};
		let corrupt = |detail: String| LoadFailure::Error(IndexError::Corrupt { path: path.clone(), detail });
		if buf.len() as u64 != entry.size {
			return Err(corrupt(format!("{} bytes long but the manifest recorded {} (truncated?)", buf.len(), entry.size)));
		}
		if content_hash(&buf) != entry.checksum {
			return Err(corrupt("contents differ from the checksum the manifest recorded".into()));
		}
		apply_segment(&buf, &path, &manifest, entry.seq, &mut items).map_err(LoadFailure::Error)?;
		bytes_on_disk += buf.len() as u64;
	}
	Ok(Loaded { manifest, items, bytes_on_disk })
}

/// Loads and verifies the index in `dir`; `None` when there is none. A reader racing a writer's
/// compaction (a listed segment deleted under it) reads the new manifest and tries again.
fn load(dir: &Path) -> Result<Option<Loaded>, IndexError> {
	let mut attempts = 0;
	loop {
		let Some((bytes, manifest)) = read_manifest(dir)? else {
			if has_segments(dir)? {
				return Err(IndexError::Corrupt {
					path: dir.to_path_buf(),
					detail: "segments without a MANIFEST".into(),
				});
			}
			return Ok(None);
		};
		match load_segments(dir, &bytes, manifest) {
			Ok(loaded) => return Ok(Some(loaded)),
			Err(LoadFailure::Error(e)) => return Err(e),
			Err(LoadFailure::Missing(path)) => {
				attempts += 1;
				let now = fs::read(dir.join(MANIFEST)).ok();
				if attempts >= 5 || now.as_deref() == Some(&bytes[..]) {
					return Err(IndexError::Corrupt { path, detail: "listed in the MANIFEST but missing".into() });
				}
			},
		}
	}
}

fn has_segments(dir: &Path) -> Result<bool, IndexError> {
	match fs::read_dir(dir) {
		Ok(entries) => Ok(entries
			.filter_map(|e| e.ok())
			.any(|e| e.file_name().to_str().and_then(parse_segment_name).is_some())),
		Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
		Err(e) => Err(IndexError::Io { context: format!("listing {}", dir.display()), source: e }),
	}
}

// ---------------------------------------------------------------------------------------------
// Reading

/// One DataNet's index, loaded and verified: item metadata in a deterministic order (source,
/// ordinal, hash) and the embeddings as one contiguous row-major `len × dim` matrix.
pub struct DataNetIndex {
	dir: PathBuf,
	datanet: DataNetId,
	model: EmbeddingModel,
	items: Vec<IndexedItem>,
	matrix: Vec<f32>,
	by_hash: HashMap<ContentHash, usize>,
	bytes_on_disk: u64,
	segments: usize,
}

impl DataNetIndex {
	/// Opens `datanet`'s index under `root`, verifying every checksum. Whatever model built it.
	pub fn open(root: &Path, datanet: DataNetId) -> Result<Self, IndexError> {
		let dir = datanet_dir(root, datanet);
		let loaded = load(&dir)?.ok_or_else(|| IndexError::NotFound { datanet, root: root.to_path_buf() })?;
		if loaded.manifest.datanet != datanet {
			return Err(IndexError::Corrupt {
				path: dir,
				detail: format!("it belongs to DataNet {}", loaded.manifest.datanet),
			});
		}
		Ok(Self::from_loaded(dir, loaded))
	}

	/// [`Self::open`], refusing an index built with another embedding model than `model`.
	pub fn open_for_model(root: &Path, datanet: DataNetId, model: &EmbeddingModel) -> Result<Self, IndexError> {
		let index = Self::open(root, datanet)?;
		check_model(&index.dir, &index.model, model)?;
		Ok(index)
	}

	fn from_loaded(dir: PathBuf, loaded: Loaded) -> Self {
		let Loaded { manifest, items, bytes_on_disk } = loaded;
		let mut records: Vec<ItemRecord> = items.into_values().collect();
		records.sort_by(|a, b| (&a.source, a.ordinal, a.hash).cmp(&(&b.source, b.ordinal, b.hash)));
		let dim = manifest.model.dim;
		let mut matrix = Vec::with_capacity(records.len() * dim);
		let mut out = Vec::with_capacity(records.len());
		let mut by_hash = HashMap::with_capacity(records.len());
		for (i, r) in records.into_iter().enumerate() {
			matrix.extend_from_slice(&r.embedding);
			by_hash.insert(r.hash, i);
			out.push(IndexedItem { hash: r.hash, source: r.source, ordinal: r.ordinal, text: r.text, chain_item: r.chain_item });
		}
		Self {
			dir,
			datanet: manifest.datanet,
			model: manifest.model,
			items: out,
			matrix,
			by_hash,
			bytes_on_disk,
			segments: manifest.segments.len(),
		}
	}

	pub fn dir(&self) -> &Path {
		&self.dir
	}
	pub fn datanet(&self) -> DataNetId {
		self.datanet
	}
	/// The embedding model that built the index.
	pub fn model(&self) -> &EmbeddingModel {
		&self.model
	}
	pub fn dim(&self) -> usize {
		self.model.dim
	}
	pub fn len(&self) -> usize {
		self.items.len()
	}
	pub fn is_empty(&self) -> bool {
		self.items.is_empty()
	}
	pub fn items(&self) -> &[IndexedItem] {
		&self.items
	}
	pub fn item(&self, i: usize) -> &IndexedItem {
		&self.items[i]
	}
	/// Row `i` of the matrix.
	pub fn embedding(&self, i: usize) -> &[f32] {
		&self.matrix[i * self.model.dim..(i + 1) * self.model.dim]
	}
	/// All embeddings, row-major, `len × dim`.
	pub fn matrix(&self) -> &[f32] {
		&self.matrix
	}
	/// The position of the item with this content hash.
	pub fn position(&self, hash: &ContentHash) -> Option<usize> {
		self.by_hash.get(hash).copied()
	}
	/// Bytes of the manifest and the segments it lists.
	pub fn bytes_on_disk(&self) -> u64 {
		self.bytes_on_disk
	}
	/// Bytes of item text.
	pub fn text_bytes(&self) -> u64 {
		self.items.iter().map(|i| i.text.len() as u64).sum()
	}
	/// Segments the manifest lists.
	pub fn segments(&self) -> usize {
		self.segments
	}
}

fn check_model(dir: &Path, index_model: &EmbeddingModel, model: &EmbeddingModel) -> Result<(), IndexError> {
	if index_model.fingerprint != model.fingerprint || index_model.dim != model.dim {
		return Err(IndexError::ModelMismatch {
			path: dir.to_path_buf(),
			index_model: index_model.name.clone(),
			index_fingerprint: index_model.fingerprint,
			model: model.name.clone(),
			fingerprint: model.fingerprint,
		});
	}
	Ok(())
}

// ---------------------------------------------------------------------------------------------
// Writing

/// The single writer of one DataNet's index. It holds the index's `LOCK` while it lives, keeps
/// the current items in memory and makes each [`IndexWriter::commit`] durable before returning.
pub struct IndexWriter {
	dir: PathBuf,
	_lock: File,
	manifest: Manifest,
	items: HashMap<ContentHash, ItemRecord>,
	bytes_on_disk: u64,
}

impl IndexWriter {
	/// Opens `datanet`'s index under `root` for writing, creating it (for `model`) when absent.
	/// Refuses an index built with another model, a corrupt one, or one another writer holds.
	/// Removes the debris an interrupted writer left (temporary files, unlisted segments).
	pub fn open(root: &Path, datanet: DataNetId, model: &EmbeddingModel) -> Result<Self, IndexError> {
		let dir = datanet_dir(root, datanet);
		fs::create_dir_all(&dir).map_err(io_err(|| format!("creating {}", dir.display())))?;
		let lock_path = dir.join(LOCK);
		let lock = OpenOptions::new()
			.read(true)
			.write(true)
			.create(true)
			.truncate(false)
			.open(&lock_path)
			.map_err(io_err(|| format!("opening {}", lock_path.display())))?;
		match lock.try_lock() {
			Ok(()) => {},
			Err(fs::TryLockError::WouldBlock) => return Err(IndexError::Locked { path: dir }),
			Err(fs::TryLockError::Error(e)) =>
				return Err(IndexError::Io { context: format!("locking {}", lock_path.display()), source: e }),
		}
		let (manifest, items, bytes_on_disk) = match load(&dir)? {
			Some(loaded) => {
				if loaded.manifest.datanet != datanet {
					return Err(IndexError::Corrupt {
						path: dir,
						detail: format!("it belongs to DataNet {}", loaded.manifest.datanet),
					});
				}
				check_model(&dir, &loaded.manifest.model, model)?;
				(loaded.manifest, loaded.items, loaded.bytes_on_disk)
			},
			None => {
				let manifest = Manifest { datanet, model: model.clone(), next_seq: 0, segments: Vec::new() };
				let bytes = encode_manifest(&manifest);
				write_atomic(&dir, MANIFEST, &bytes)?;
				tracing::info!("created the index of DataNet {datanet} at {}", dir.display());
				(manifest, HashMap::new(), bytes.len() as u64)
			},
		};
		let writer = Self { dir, _lock: lock, manifest, items, bytes_on_disk };
		writer.remove_debris()?;
		Ok(writer)
	}

	fn remove_debris(&self) -> Result<(), IndexError> {
		let entries = fs::read_dir(&self.dir).map_err(io_err(|| format!("listing {}", self.dir.display())))?;
		for entry in entries.filter_map(|e| e.ok()) {
			let name = entry.file_name();
			let Some(name) = name.to_str() else { continue };
			let debris = name.ends_with(".tmp")
				|| parse_segment_name(name).is_some_and(|seq| !self.manifest.segments.iter().any(|s| s.seq == seq));
			if debris {
				tracing::info!("removing {name} left by an interrupted write in {}", self.dir.display());
				fs::remove_file(entry.path()).map_err(io_err(|| format!("removing {}", entry.path().display())))?;
			}
		}
		Ok(())
	}

	pub fn dir(&self) -> &Path {
		&self.dir
	}
	pub fn datanet(&self) -> DataNetId {
		self.manifest.datanet
	}
	pub fn model(&self) -> &EmbeddingModel {
		&self.manifest.model
	}
	pub fn len(&self) -> usize {
		self.items.len()
	}
	pub fn is_empty(&self) -> bool {
		self.items.is_empty()
	}
	pub fn get(&self, hash: &ContentHash) -> Option<&ItemRecord> {
		self.items.get(hash)
	}
	pub fn items(&self) -> impl Iterator<Item = &ItemRecord> {
		self.items.values()
	}
	pub fn segments(&self) -> usize {
		self.manifest.segments.len()
	}
	pub fn bytes_on_disk(&self) -> u64 {
		self.bytes_on_disk
	}

	/// Durably adds or replaces `upserts` (by hash) and drops `removals`, as one segment. When it
	/// returns `Ok` the change survives a crash; when the process dies inside it, the index is
	/// as before.
	pub fn commit(&mut self, upserts: Vec<ItemRecord>, removals: &[ContentHash]) -> Result<(), IndexError> {
		if upserts.is_empty() && removals.is_empty() {
			return Ok(());
		}
		for r in &upserts {
			self.validate(r)?;
		}
		let seq = self.manifest.next_seq;
		let refs: Vec<&ItemRecord> = upserts.iter().collect();
		let segment = encode_segment(&self.manifest, seq, &refs, removals);
		write_atomic(&self.dir, &segment_name(seq), &segment)?;
		let mut manifest = self.manifest.clone();
		manifest.next_seq = seq + 1;
		manifest.segments.push(SegmentEntry { seq, size: segment.len() as u64, checksum: content_hash(&segment) });
		let manifest_bytes = encode_manifest(&manifest);
		write_atomic(&self.dir, MANIFEST, &manifest_bytes)?;
		let old_manifest_len = encode_manifest(&self.manifest).len() as u64;
		self.bytes_on_disk = self.bytes_on_disk - old_manifest_len + manifest_bytes.len() as u64 + segment.len() as u64;
		self.manifest = manifest;
		for r in upserts {
			self.items.insert(r.hash, r);
		}
		for h in removals {
			self.items.remove(h);
		}
		Ok(())
	}

	fn validate(&self, r: &ItemRecord) -> Result<(), IndexError> {
		let invalid = |detail: String| IndexError::InvalidItem { path: self.dir.clone(), detail };
		if r.embedding.len() != self.manifest.model.dim {
			return Err(invalid(format!("{} floats, the index holds {}", r.embedding.len(), self.manifest.model.dim)));
		}
		if r.embedding.iter().any(|v| !v.is_finite()) {
			return Err(invalid(format!("item {:?} has a non-finite embedding", r.hash)));
		}
		if content_hash(r.text.as_bytes()) != r.hash {
			return Err(invalid(format!("item from {} does not hash to {:?}", r.source, r.hash)));
		}
		if r.text.len() > u32::MAX as usize || r.source.len() > u32::MAX as usize {
			return Err(invalid("text longer than 4 GiB".into()));
		}
		Ok(())
	}

	/// Records the on-chain item ids of items (by content hash); hashes not in the index are
	/// skipped. Returns how many items changed.
	pub fn set_chain_items(&mut self, ids: &[(ContentHash, ItemId)]) -> Result<usize, IndexError> {
		let upserts: Vec<ItemRecord> = ids
			.iter()
			.filter_map(|(hash, id)| {
				let r = self.items.get(hash)?;
				(r.chain_item != Some(*id)).then(|| ItemRecord { chain_item: Some(*id), ..r.clone() })
			})
			.collect();
		let changed = upserts.len();
		self.commit(upserts, &[])?;
		Ok(changed)
	}

	/// Rewrites the index as one segment (dropping replaced and removed records) and deletes the
	/// old segments. Crash-safe like a commit; readers that race it retry.
	pub fn compact(&mut self) -> Result<(), IndexError> {
		if self.manifest.segments.len() <= 1 {
			return Ok(());
		}
		let seq = self.manifest.next_seq;
		let mut live: Vec<&ItemRecord> = self.items.values().collect();
		live.sort_by_key(|r| r.hash);
		let segment = encode_segment(&self.manifest, seq, &live, &[]);
		write_atomic(&self.dir, &segment_name(seq), &segment)?;
		let old = std::mem::take(&mut self.manifest.segments);
		let mut manifest = self.manifest.clone();
		manifest.next_seq = seq + 1;
		manifest.segments = vec![SegmentEntry { seq, size: segment.len() as u64, checksum: content_hash(&segment) }];
		let manifest_bytes = encode_manifest(&manifest);
		if let Err(e) = write_atomic(&self.dir, MANIFEST, &manifest_bytes) {
			self.manifest.segments = old;
			return Err(e);
		}
		self.manifest = manifest;
		self.bytes_on_disk = manifest_bytes.len() as u64 + segment.len() as u64;
		for s in old {
			let path = self.dir.join(segment_name(s.seq));
			if let Err(e) = fs::remove_file(&path) {
				tracing::warn!("could not remove the compacted segment {}: {e}", path.display());
			}
		}
		Ok(())
	}

	/// The index as a reader would load it now.
	pub fn snapshot(&self) -> DataNetIndex {
		let loaded = Loaded { manifest: self.manifest.clone(), items: self.items.clone(), bytes_on_disk: self.bytes_on_disk };
		DataNetIndex::from_loaded(self.dir.clone(), loaded)
	}
}

#[cfg(test)]
mod tests {
	use super::*;

	fn model(tag: &[u8]) -> EmbeddingModel {
		EmbeddingModel { name: "test-model".into(), dim: 4, fingerprint: content_hash(tag) }
	}

	fn record(text: &str, source: &str, ordinal: u32) -> ItemRecord {
		let hash = content_hash(text.as_bytes());
		let seed = hash.as_bytes()[0] as f32;
		let v = [seed, 1.0, -seed, 2.0];
		let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
		ItemRecord {
			hash,
			source: source.into(),
			ordinal,
			text: text.into(),
			chain_item: None,
			embedding: v.iter().map(|x| x / norm).collect(),
		}
	}

	fn segment_files(dir: &Path) -> Vec<PathBuf> {
		let mut out: Vec<PathBuf> = fs::read_dir(dir)
			.unwrap()
			.map(|e| e.unwrap().path())
			.filter(|p| p.extension().is_some_and(|e| e == "seg"))
			.collect();
		out.sort();
		out
	}

	#[test]
	fn commits_survive_reopening_in_a_deterministic_order() {
		let root = tempfile::tempdir().unwrap();
		let m = model(b"a");
		let mut w = IndexWriter::open(root.path(), 3, &m).unwrap();
		w.commit(vec![record("beta", "b.txt", 0), record("alpha", "a.txt", 1)], &[]).unwrap();
		w.commit(vec![record("gamma", "a.txt", 0)], &[content_hash(b"beta")]).unwrap();
		drop(w);
		let index = DataNetIndex::open_for_model(root.path(), 3, &m).unwrap();
		let texts: Vec<&str> = index.items().iter().map(|i| i.text.as_str()).collect();
		assert_eq!(texts, ["gamma", "alpha"]);
		assert_eq!(index.embedding(1), record("alpha", "", 0).embedding.as_slice());
		assert_eq!(index.position(&content_hash(b"alpha")), Some(1));
		assert_eq!(index.segments(), 2);
		assert_eq!(list_datanets(root.path()).unwrap(), vec![3]);
		let on_disk: u64 = fs::read_dir(index.dir())
			.unwrap()
			.map(|e| e.unwrap())
			.filter(|e| e.file_name() != LOCK)
			.map(|e| e.metadata().unwrap().len())
			.sum();
		assert_eq!(index.bytes_on_disk(), on_disk);
	}

	#[test]
	fn compaction_keeps_the_items_and_leaves_one_segment() {
		let root = tempfile::tempdir().unwrap();
		let m = model(b"a");
		let mut w = IndexWriter::open(root.path(), 1, &m).unwrap();
		for i in 0..5 {
			w.commit(vec![record(&format!("item {i}"), "x.txt", i)], &[]).unwrap();
		}
		w.commit(vec![], &[content_hash(b"item 2")]).unwrap();
		w.set_chain_items(&[(content_hash(b"item 4"), 77), (content_hash(b"absent"), 1)]).unwrap();
		let before: Vec<IndexedItem> = w.snapshot().items().to_vec();
		w.compact().unwrap();
		assert_eq!(segment_files(w.dir()).len(), 1);
		drop(w);
		let index = DataNetIndex::open(root.path(), 1).unwrap();
		assert_eq!(index.items(), &before[..]);
		assert_eq!(index.len(), 4);
		assert_eq!(index.item(index.position(&content_hash(b"item 4")).unwrap()).chain_item, Some(77));
	}

	#[test]
	fn another_model_is_refused() {
		let root = tempfile::tempdir().unwrap();
		let mut w = IndexWriter::open(root.path(), 1, &model(b"a")).unwrap();
		w.commit(vec![record("x", "x", 0)], &[]).unwrap();
		drop(w);
		let err = IndexWriter::open(root.path(), 1, &model(b"b")).err().unwrap();
		assert!(matches!(err, IndexError::ModelMismatch { .. }), "{err}");
		let err = DataNetIndex::open_for_model(root.path(), 1, &model(b"b")).err().unwrap();
		assert!(err.to_string().contains("embedding model"), "{err}");
	}

	#[test]
	fn a_second_writer_is_refused_while_the_first_holds_the_lock() {
		let root = tempfile::tempdir().unwrap();
		let _w = IndexWriter::open(root.path(), 1, &model(b"a")).unwrap();
		let err = IndexWriter::open(root.path(), 1, &model(b"a")).err().unwrap();
		assert!(matches!(err, IndexError::Locked { .. }), "{err}");
	}

	fn corrupted_open(damage: impl Fn(&Path)) -> IndexError {
		let root = tempfile::tempdir().unwrap();
		let mut w = IndexWriter::open(root.path(), 1, &model(b"a")).unwrap();
		w.commit(vec![record("one", "a", 0), record("two", "a", 1)], &[]).unwrap();
		w.commit(vec![record("three", "b", 0)], &[]).unwrap();
		drop(w);
		damage(&datanet_dir(root.path(), 1));
		let read_err = DataNetIndex::open(root.path(), 1).err().expect("a damaged index must not open");
		let write_err = IndexWriter::open(root.path(), 1, &model(b"a")).err().expect("nor open for writing");
		assert_eq!(read_err.to_string(), write_err.to_string());
		read_err
	}

	fn flip(path: &Path, at: impl Fn(usize) -> usize) {
		let mut bytes = fs::read(path).unwrap();
		let i = at(bytes.len());
		bytes[i] ^= 0x40;
		fs::write(path, bytes).unwrap();
	}

	#[test]
	fn flipped_or_truncated_bytes_are_reported_as_corruption() {
		let seg = |dir: &Path| segment_files(dir)[0].clone();
		let cases: Vec<(&str, Box<dyn Fn(&Path)>)> = vec![
			("segment text byte", Box::new(move |d: &Path| flip(&seg(d), |len| len / 2))),
			("segment checksum", Box::new(move |d: &Path| flip(&seg(d), |len| len - 1))),
			("segment header", Box::new(move |d: &Path| flip(&seg(d), |_| 13))),
			(
				"segment truncated",
				Box::new(move |d: &Path| {
					let p = seg(d);
					let len = fs::metadata(&p).unwrap().len();
					File::options().write(true).open(&p).unwrap().set_len(len - 10).unwrap();
				}),
			),
			("segment emptied", Box::new(move |d: &Path| fs::write(seg(d), b"").unwrap())),
			("segment deleted", Box::new(move |d: &Path| fs::remove_file(seg(d)).unwrap())),
			("manifest byte", Box::new(|d: &Path| flip(&d.join(MANIFEST), |len| len / 2))),
			(
				"manifest truncated",
				Box::new(|d: &Path| {
					let p = d.join(MANIFEST);
					let len = fs::metadata(&p).unwrap().len();
					File::options().write(true).open(&p).unwrap().set_len(len - 40).unwrap();
				}),
			),
			("manifest deleted", Box::new(|d: &Path| fs::remove_file(d.join(MANIFEST)).unwrap())),
		];
		for (what, damage) in cases {
			let err = corrupted_open(damage);
			assert!(matches!(err, IndexError::Corrupt { .. }), "{what}: {err}");
			assert!(err.to_string().contains("is corrupt"), "{what}: {err}");
		}
	}

	#[test]
	fn a_future_format_version_is_named() {
		let err = corrupted_open(|d| {
			let p = d.join(MANIFEST);
			let mut bytes = fs::read(&p).unwrap();
			bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
			fs::write(p, bytes).unwrap();
		});
		assert!(matches!(err, IndexError::Version { found: 2, .. }), "{err}");
	}

	#[test]
	fn debris_of_an_interrupted_commit_is_ignored_then_removed() {
		let root = tempfile::tempdir().unwrap();
		let m = model(b"a");
		let mut w = IndexWriter::open(root.path(), 1, &m).unwrap();
		w.commit(vec![record("kept", "a", 0)], &[]).unwrap();
		let dir = w.dir().to_path_buf();
		// A commit that died after its segment was renamed into place but before the manifest
		// was: segment 1 exists, the manifest still lists only segment 0. And one that died
		// while writing: a half-written temporary manifest and segment.
		let orphan = encode_segment(&w.manifest, 1, &[&record("lost", "a", 1)], &[]);
		drop(w);
		fs::write(dir.join(segment_name(1)), &orphan).unwrap();
		fs::write(dir.join(format!("{}.tmp", segment_name(2))), &orphan[..orphan.len() / 2]).unwrap();
		fs::write(dir.join("MANIFEST.tmp"), b"OLIDXMAN\x01").unwrap();

		let index = DataNetIndex::open(root.path(), 1).unwrap();
		assert_eq!(index.items().iter().map(|i| i.text.as_str()).collect::<Vec<_>>(), ["kept"]);
		let mut w = IndexWriter::open(root.path(), 1, &m).unwrap();
		let names: Vec<String> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
		assert!(names.iter().all(|n| !n.ends_with(".tmp") && n != &segment_name(1)), "{names:?}");
		// The next commit reuses sequence number 1 cleanly.
		w.commit(vec![record("next", "a", 2)], &[]).unwrap();
		drop(w);
		assert_eq!(DataNetIndex::open(root.path(), 1).unwrap().len(), 2);
	}

	#[test]
	fn items_that_do_not_match_their_hash_or_dimension_are_refused() {
		let root = tempfile::tempdir().unwrap();
		let mut w = IndexWriter::open(root.path(), 1, &model(b"a")).unwrap();
		let mut wrong_hash = record("text", "a", 0);
		wrong_hash.hash = content_hash(b"other");
		assert!(matches!(w.commit(vec![wrong_hash], &[]), Err(IndexError::InvalidItem { .. })));
		let mut wrong_dim = record("text", "a", 0);
		wrong_dim.embedding.push(0.0);
		assert!(matches!(w.commit(vec![wrong_dim], &[]), Err(IndexError::InvalidItem { .. })));
		assert_eq!(w.segments(), 0);
	}

	#[test]
	fn a_missing_index_is_not_found() {
		let root = tempfile::tempdir().unwrap();
		assert!(matches!(DataNetIndex::open(root.path(), 9), Err(IndexError::NotFound { datanet: 9, .. })));
	}
}
