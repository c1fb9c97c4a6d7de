//! The adapter store: one directory whose subdirectories are PEFT adapters. Every path that
//! reaches the loader has been canonicalized and checked to lie inside the store, so a name, an
//! admin-supplied path or a symlink cannot make the worker read files elsewhere.

use std::{
	fs,
	path::{Component, Path, PathBuf},
};

use super::AdapterError;

/// PEFT's adapter config file name.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// PEFT's safetensors weights file name; the only weights format loaded.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// PEFT's pickle weights file: recognised only to say it is not supported (pickle runs code).
const PICKLE_WEIGHTS_FILE: &str = "adapter_model.bin";

/// Checks `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$` and no `..`: names become path components, so
/// they must not be able to climb out of the store or be hidden files.
pub fn validate_name(name: &str) -> Result<(), AdapterError> {
	let bytes = name.as_bytes();
	let ok = !bytes.is_empty()
		&& bytes.len() <= 128
		&& bytes[0].is_ascii_alphanumeric()
		&& bytes.iter().all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
		&& !name.contains("..");
	if ok {
		Ok(())
	} else {
		Err(AdapterError::InvalidName(crate::printable(name)))
	}
}

/// The store root, canonicalized once at startup.
#[derive(Clone, Debug)]
pub struct AdapterStore {
	root: PathBuf,
}

impl AdapterStore {
	/// Opens (creating if missing) the store directory.
	pub fn open(root: impl AsRef<Path>) -> Result<Self, AdapterError> {
		let root = root.as_ref();
		fs::create_dir_all(root).map_err(|e| AdapterError::io(root, e))?;
		let root = fs::canonicalize(root).map_err(|e| AdapterError::io(root, e))?;
		if !root.is_dir() {
			return Err(AdapterError::Invalid(format!("adapter store {} is not a directory", root.display())));
		}
		Ok(Self { root })
	}

	/// The canonical root.
	pub fn root(&self) -> &Path {
		&self.root
	}

	/// The canonical directory of the adapter called `name` (`<root>/<name>`).
	pub fn resolve(&self, name: &str) -> Result<PathBuf, AdapterError> {
		validate_name(name)?;
		let dir = self.root.join(name);
		if fs::symlink_metadata(&dir).is_err() {
			return Err(AdapterError::NotFound(format!("adapter `{name}`")));
		}
		self.check_dir(&dir)
	}

	/// The canonical directory for an admin-supplied path (vLLM's `lora_path`): relative paths
	/// are taken from the root; either way the result must lie strictly inside the root.
	pub fn resolve_path(&self, path: &Path) -> Result<PathBuf, AdapterError> {
		if path.as_os_str().is_empty() {
			return Err(AdapterError::Invalid("empty adapter path".into()));
		}
		let joined = if path.is_absolute() { path.to_path_buf() } else { self.root.join(path) };
		// A path that climbs out is refused even if the target does not exist, so the error does
		// not reveal what exists outside the store.
		let climbs = path.components().any(|c| matches!(c, Component::ParentDir));
		match fs::canonicalize(&joined) {
			Ok(canonical) if canonical.starts_with(&self.root) && canonical != self.root => self.check_dir(&canonical),
			Ok(_) => Err(AdapterError::OutsideStore(crate::printable(&path.to_string_lossy()))),
			Err(_) if climbs || (path.is_absolute() && !path.starts_with(&self.root)) => {
				Err(AdapterError::OutsideStore(crate::printable(&path.to_string_lossy())))
			},
			Err(e) => Err(AdapterError::io(&self.shown(&joined), e)),
		}
	}

	/// Re-checks a directory right before it is read: canonical path strictly inside the root,
	/// a directory, and both adapter files present, regular, and (after symlinks) inside the root.
	pub fn check_dir(&self, dir: &Path) -> Result<PathBuf, AdapterError> {
		let canonical = fs::canonicalize(dir).map_err(|e| AdapterError::io(&self.shown(dir), e))?;
		if !canonical.starts_with(&self.root) || canonical == self.root {
			return Err(AdapterError::OutsideStore(crate::printable(&self.shown(dir).to_string_lossy())));
		}
		if !canonical.is_dir() {
			return Err(AdapterError::NotFound(format!("{} is not a directory", self.shown(&canonical).display())));
		}
		let weights = canonical.join(ADAPTER_WEIGHTS_FILE);
		if fs::symlink_metadata(&weights).is_err() && fs::symlink_metadata(canonical.join(PICKLE_WEIGHTS_FILE)).is_ok()
		{
			return Err(AdapterError::Unsupported(format!(
				"{} has only {PICKLE_WEIGHTS_FILE} (pickle); convert it to {ADAPTER_WEIGHTS_FILE}",
				self.shown(&canonical).display()
			)));
		}
		for file in [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE] {
			let path = canonical.join(file);
			let target = fs::canonicalize(&path).map_err(|e| AdapterError::io(&self.shown(&path), e))?;
			if !target.starts_with(&self.root) {
				return Err(AdapterError::OutsideStore(self.shown(&path).display().to_string()));
			}
			let meta = fs::metadata(&target).map_err(|e| AdapterError::io(&self.shown(&path), e))?;
			if !meta.is_file() {
				return Err(AdapterError::Invalid(format!("{} is not a regular file", self.shown(&path).display())));
			}
		}
		Ok(canonical)
	}

	/// The adapters present: `(name, canonical dir)` for every subdirectory with a valid name
	/// that passes [`check_dir`](Self::check_dir), sorted by name. Others are logged and skipped.
	pub fn scan(&self) -> Result<Vec<(String, PathBuf)>, AdapterError> {
		let mut found = Vec::new();
		for entry in fs::read_dir(&self.root).map_err(|e| AdapterError::io(&self.root, e))? {
			let entry = entry.map_err(|e| AdapterError::io(&self.root, e))?;
			let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
				tracing::warn!(entry = ?entry.file_name(), "adapter store: skipping a non-UTF-8 name");
				continue;
			};
			if validate_name(&name).is_err() {
				tracing::debug!(%name, "adapter store: skipping an entry whose name is not an adapter name");
				continue;
			}
			match self.check_dir(&entry.path()) {
				Ok(dir) => found.push((name, dir)),
				Err(err) => tracing::warn!(%name, %err, "adapter store: skipping"),
			}
		}
		found.sort();
		Ok(found)
	}

	/// blake2-256 of the directory's `adapter_model.safetensors`: the adapter's identity.
	pub fn hash_of(&self, dir: &Path) -> Result<[u8; 32], AdapterError> {
		let dir = self.check_dir(dir)?;
		let path = dir.join(ADAPTER_WEIGHTS_FILE);
		let file = fs::File::open(&path).map_err(|e| AdapterError::io(&self.shown(&path), e))?;
		hash_file(&file, &self.shown(&path))
	}

	/// `path` relative to the root when inside it, so messages do not expose server paths.
	fn shown(&self, path: &Path) -> PathBuf {
		match path.strip_prefix(&self.root) {
			Ok(rel) if !rel.as_os_str().is_empty() => rel.to_path_buf(),
			_ => path.to_path_buf(),
		}
	}
}

/// blake2-256 of an open file, through a read-only mapping (no whole-file heap copy).
pub(crate) fn hash_file(file: &fs::File, shown: &Path) -> Result<[u8; 32], AdapterError> {
	let len = file.metadata().map_err(|e| AdapterError::io(shown, e))?.len();
	if len == 0 {
		return Ok(openledger_primitives::content_hash(&[]).0);
	}
	// SAFETY: read-only mapping; files in the store are replaced by rename, not rewritten in place.
	let map = unsafe { memmap2::Mmap::map(file) }.map_err(|e| AdapterError::io(shown, e))?;
	Ok(openledger_primitives::content_hash(&map).0)
}

#[cfg(test)]
mod tests {
	use super::*;

	fn touch_adapter(dir: &Path) {
		fs::create_dir_all(dir).unwrap();
		fs::write(dir.join(ADAPTER_CONFIG_FILE), b"{}").unwrap();
		fs::write(dir.join(ADAPTER_WEIGHTS_FILE), b"weights").unwrap();
	}

	#[test]
	fn names() {
		for ok in ["a", "A1", "llama-3.1_sql", "0", &"x".repeat(128)] {
			assert!(validate_name(ok).is_ok(), "{ok}");
		}
		for bad in ["", ".hidden", "-x", "_x", "a/b", "a\\b", "a..b", "..", "a b", "é", "a\n", &"x".repeat(129), "/etc"]
		{
			assert!(matches!(validate_name(bad), Err(AdapterError::InvalidName(_))), "{bad:?}");
		}
	}

	#[test]
	fn resolve_inside_and_refuse_outside() {
		let tmp = tempfile::tempdir().unwrap();
		let root = tmp.path().join("store");
		let outside = tmp.path().join("outside");
		touch_adapter(&root.join("good"));
		touch_adapter(&outside);
		let store = AdapterStore::open(&root).unwrap();
		let good = store.resolve("good").unwrap();
		assert!(good.starts_with(store.root()));
		assert!(matches!(store.resolve("missing"), Err(AdapterError::NotFound(_))));
		assert!(matches!(store.resolve("../outside"), Err(AdapterError::InvalidName(_))));
		assert!(matches!(store.resolve(outside.to_str().unwrap()), Err(AdapterError::InvalidName(_))));

		// Admin paths: relative, absolute inside, absolute outside, climbing out, the root itself.
		assert_eq!(store.resolve_path(Path::new("good")).unwrap(), good);
		assert_eq!(store.resolve_path(&root.join("good")).unwrap(), good);
		assert_eq!(store.resolve_path(Path::new("good/../good")).unwrap(), good);
		assert!(matches!(store.resolve_path(&outside), Err(AdapterError::OutsideStore(_))));
		assert!(matches!(store.resolve_path(Path::new("../outside")), Err(AdapterError::OutsideStore(_))));
		assert!(matches!(store.resolve_path(Path::new("../nonexistent")), Err(AdapterError::OutsideStore(_))));
		assert!(matches!(store.resolve_path(Path::new("/nonexistent/x")), Err(AdapterError::OutsideStore(_))));
		assert!(matches!(store.resolve_path(Path::new(".")), Err(AdapterError::OutsideStore(_))));
		assert!(matches!(store.resolve_path(Path::new("missing")), Err(AdapterError::NotFound(_))));
		// Paths the system cannot take are the caller's fault (400 or 404), not the server's.
		assert!(matches!(store.resolve_path(Path::new("good/adapter_config.json/x")), Err(AdapterError::NotFound(_))));
		assert!(matches!(store.resolve_path(Path::new("a\0b")), Err(AdapterError::Invalid(_))));
		assert!(matches!(store.resolve_path(Path::new(&"x".repeat(300))), Err(AdapterError::Invalid(_))));
	}

	#[cfg(unix)]
	#[test]
	fn symlinks_out_are_refused() {
		use std::os::unix::fs::symlink;
		let tmp = tempfile::tempdir().unwrap();
		let root = tmp.path().join("store");
		let outside = tmp.path().join("outside");
		touch_adapter(&outside);
		fs::create_dir_all(&root).unwrap();
		let store = AdapterStore::open(&root).unwrap();

		// A directory symlink leading out.
		symlink(&outside, root.join("dirlink")).unwrap();
		assert!(matches!(store.resolve("dirlink"), Err(AdapterError::OutsideStore(_))));
		assert!(matches!(store.resolve_path(Path::new("dirlink")), Err(AdapterError::OutsideStore(_))));

		// A real directory whose weights file links out.
		let half = root.join("half");
		fs::create_dir_all(&half).unwrap();
		fs::write(half.join(ADAPTER_CONFIG_FILE), b"{}").unwrap();
		symlink(outside.join(ADAPTER_WEIGHTS_FILE), half.join(ADAPTER_WEIGHTS_FILE)).unwrap();
		assert!(matches!(store.resolve("half"), Err(AdapterError::OutsideStore(_))));
		assert!(matches!(store.hash_of(&half), Err(AdapterError::OutsideStore(_))));

		// A symlink to another adapter inside the store is fine.
		touch_adapter(&root.join("real"));
		symlink(root.join("real"), root.join("alias")).unwrap();
		assert_eq!(store.resolve("alias").unwrap(), store.resolve("real").unwrap());

		let names: Vec<_> = store.scan().unwrap().into_iter().map(|(n, _)| n).collect();
		assert_eq!(names, ["alias", "real"]);
	}

	#[test]
	fn pickle_only_is_unsupported_and_missing_files_not_found() {
		let tmp = tempfile::tempdir().unwrap();
		let store = AdapterStore::open(tmp.path()).unwrap();
		let pickle = tmp.path().join("pickle");
		fs::create_dir_all(&pickle).unwrap();
		fs::write(pickle.join(ADAPTER_CONFIG_FILE), b"{}").unwrap();
		fs::write(pickle.join(PICKLE_WEIGHTS_FILE), b"\x80\x04").unwrap();
		assert!(matches!(store.resolve("pickle"), Err(AdapterError::Unsupported(_))));
		let empty = tmp.path().join("empty");
		fs::create_dir_all(&empty).unwrap();
		assert!(matches!(store.resolve("empty"), Err(AdapterError::NotFound(_))));
		fs::write(tmp.path().join("file"), b"x").unwrap();
		assert!(matches!(store.resolve("file"), Err(AdapterError::NotFound(_))));
		assert!(store.scan().unwrap().is_empty());
	}

	#[test]
	fn hash_is_blake2_of_weights() {
		let tmp = tempfile::tempdir().unwrap();
		let store = AdapterStore::open(tmp.path()).unwrap();
		touch_adapter(&tmp.path().join("a"));
		let dir = store.resolve("a").unwrap();
		assert_eq!(store.hash_of(&dir).unwrap(), openledger_primitives::content_hash(b"weights").0);
	}
}
