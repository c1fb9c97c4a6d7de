//! LoRA adapters: a store directory of PEFT adapters, a strict loader that checks every byte
//! before allocating, and a content-addressed cache that keeps leased adapters resident and
//! evicts idle ones by LRU under a byte and count budget.

mod cache;
mod peft;
mod store;
mod tools;

pub use cache::{AdapterCache, AdapterLease, CacheStats};
pub use peft::{
	inspect, inspect_with_base, load_adapter, load_adapter_known, permute_rows_for_gguf, AdapterInfo, FileStamp, FloatDtype,
	KnownWeights,
};
pub use store::{validate_name, AdapterStore, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
pub use tools::{bench_adapter_name, ensure_random_adapters, write_random_adapter, write_random_adapter_as};

/// Upper bounds applied to untrusted adapters and to the cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterLimits {
	/// Largest LoRA rank accepted.
	pub max_rank: usize,
	/// Largest `adapter_model.safetensors`, and largest f32 footprint of one loaded adapter.
	pub max_adapter_bytes: usize,
	/// Byte budget of all resident adapters together.
	pub max_resident_bytes: usize,
	/// Most adapters resident at once.
	pub max_resident: usize,
	/// Byte budget of the host tier: copies in pinned host memory of adapters recently loaded onto a
	/// GPU, so one evicted from the GPU comes back by a host-to-device copy instead of a read,
	/// parse and check of its file. 0: no host tier (the CPU's resident set is host memory).
	pub max_host_bytes: usize,
	/// How long a request waits for room when every resident adapter is in use and its own does
	/// not fit, before it is refused (503). Zero: refused at once.
	pub full_wait: std::time::Duration,
}

impl Default for AdapterLimits {
	fn default() -> Self {
		Self {
			max_rank: 64,
			max_adapter_bytes: 512 << 20,
			max_resident_bytes: 2 << 30,
			max_resident: 32,
			max_host_bytes: 0,
			full_wait: std::time::Duration::from_secs(30),
		}
	}
}

/// Everything that can go wrong with an adapter. Kept `Clone` so one failed load can be reported
/// to every request that waited on it; messages are one line and name the offending field,
/// tensor or path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdapterError {
	/// No such registered name, directory or file.
	#[error("adapter not found: {0}")]
	NotFound(String),
	/// The adapter name does not match `^[A-Za-z0-9][A-Za-z0-9._-]{{0,127}}$` or contains `..`.
	#[error("invalid adapter name `{0}`: use 1-128 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit, without `..`")]
	InvalidName(String),
	/// A path or a symlink leads outside the adapter store.
	#[error("adapter path `{0}` is outside the adapter store")]
	OutsideStore(String),
	/// Well-formed, but uses a feature this worker does not implement (DoRA, pickle, I64, …).
	#[error("unsupported adapter: {0}")]
	Unsupported(String),
	/// Malformed: bad JSON, bad safetensors header, wrong shapes, missing pairs, unknown tensors.
	#[error("invalid adapter: {0}")]
	Invalid(String),
	/// Over a configured limit (rank, file size, header size, resident size).
	#[error("adapter too large: {0}")]
	TooLarge(String),
	/// `register` of a name that is already bound to different content.
	#[error("adapter `{0}` is already registered with different content; unload it first")]
	AlreadyRegistered(String),
	/// The weights file no longer hashes to what was registered: it changed on disk.
	#[error("adapter `{name}` changed on disk: registered as {expected}, file now hashes to {found}")]
	HashMismatch { name: String, expected: String, found: String },
	/// Every resident adapter is leased and the new one does not fit in the budget.
	#[error("adapter cache is full: {0}")]
	CacheFull(String),
	#[error("I/O error: {0}")]
	Io(String),
	#[error("internal error: {0}")]
	Internal(String),
}

impl AdapterError {
	/// The HTTP status this error maps to: 404 unknown, 400 the request's fault, 409 changed on
	/// disk, 503 retry later, 500 ours.
	pub fn http_status(&self) -> u16 {
		match self {
			AdapterError::NotFound(_) => 404,
			AdapterError::InvalidName(_)
			| AdapterError::OutsideStore(_)
			| AdapterError::Unsupported(_)
			| AdapterError::Invalid(_)
			| AdapterError::TooLarge(_)
			| AdapterError::AlreadyRegistered(_) => 400,
			AdapterError::HashMismatch { .. } => 409,
			AdapterError::CacheFull(_) => 503,
			AdapterError::Io(_) | AdapterError::Internal(_) => 500,
		}
	}

	/// An I/O error on `path`, classed by whose fault it is: a path that names nothing (or goes
	/// through a file) is not found, one the system cannot take (a NUL byte, a name too long) is
	/// invalid, and only the rest is the server's.
	pub(crate) fn io(path: &std::path::Path, err: std::io::Error) -> Self {
		use std::io::ErrorKind;
		// EINVAL may be the server's too (an mmap the filesystem refuses): only a path with a NUL
		// byte makes it the caller's.
		let unusable_path = err.kind() == ErrorKind::InvalidFilename
			|| (err.kind() == ErrorKind::InvalidInput && path.as_os_str().as_encoded_bytes().contains(&0));
		match err.kind() {
			ErrorKind::NotFound | ErrorKind::NotADirectory => AdapterError::NotFound(path.display().to_string()),
			_ if unusable_path => AdapterError::Invalid(format!("{}: {err}", crate::printable(&path.to_string_lossy()))),
			_ => AdapterError::Io(format!("{}: {err}", path.display())),
		}
	}
}

/// Lower-case hex of a hash.
pub fn hash_hex(hash: &[u8; 32]) -> String {
	use std::fmt::Write;
	hash.iter().fold(String::with_capacity(64), |mut s, b| {
		let _ = write!(s, "{b:02x}");
		s
	})
}

#[cfg(test)]
pub(crate) mod test_util {
	use crate::model::{Architecture, LlamaConfig};

	/// A Llama small enough to generate adapters for in microseconds, with GQA (4 heads over 2).
	pub fn tiny_config(rope_interleaved: bool) -> LlamaConfig {
		LlamaConfig {
			architecture: Architecture::Llama,
			vocab_size: 32,
			hidden_size: 16,
			intermediate_size: 24,
			num_layers: 2,
			num_heads: 4,
			num_kv_heads: 2,
			head_dim: 4,
			rope_theta: 10_000.0,
			rope_freq_factors: None,
			rms_norm_eps: 1e-5,
			sliding_window: None,
			attention_scale: 0.5,
			final_logit_softcap: None,
			max_position: 64,
			rope_interleaved,
		}
	}
}
