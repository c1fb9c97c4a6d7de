//! PEFT LoRA adapters (`adapter_config.json` + `adapter_model.safetensors`), validated strictly
//! against the base model before a single tensor is allocated: the header is read on its own and
//! bounded, every name, dtype, shape and byte range is checked, and only then is the file mapped
//! and converted to the `A^T` / `scale·B^T` layout the engine multiplies by.

use std::{
	collections::{BTreeMap, BTreeSet},
	fs,
	io::Read,
	path::{Path, PathBuf},
	time::Instant,
};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use super::{
	hash_hex,
	store::{hash_file, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE},
	AdapterError, AdapterLimits,
};
use crate::model::{HostAdapter, LlamaConfig, LoraAdapter, LoraWeights, Projection};

/// What changes when a file's bytes change by any ordinary means (rewrite, copy, rename over):
/// its length, modification time and, on Unix, its inode. Comparing stamps lets a load trust the
/// hash taken at registration instead of hashing the whole file again, as git's index does;
/// a file whose stamp differs is hashed again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
	len: u64,
	modified: Option<std::time::SystemTime>,
	inode: (u64, u64),
}

impl FileStamp {
	pub fn of(file: &fs::File) -> std::io::Result<Self> {
		let meta = file.metadata()?;
		#[cfg(unix)]
		let inode = {
			use std::os::unix::fs::MetadataExt;
			(meta.dev(), meta.ino())
		};
		#[cfg(not(unix))]
		let inode = (0, 0);
		Ok(Self { len: meta.len(), modified: meta.modified().ok(), inode })
	}
}

/// The blake2-256 of an adapter's weights file and the stamp the file had when it was hashed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownWeights {
	pub hash: [u8; 32],
	pub stamp: FileStamp,
}

/// `adapter_config.json` is a few hundred bytes; anything near this is not a PEFT config.
const MAX_CONFIG_BYTES: u64 = 64 << 10;
/// A safetensors header for 7 projections × 2 × 200 layers is ~300 KiB.
const MAX_HEADER_BYTES: u64 = 1 << 20;
/// PEFT's default `lora_alpha`.
const DEFAULT_ALPHA: f64 = 8.0;
const TENSOR_PREFIX: &str = "base_model.model.model.layers.";

/// What an adapter is, from its config and safetensors header (no tensor data read except to
/// hash it). Serializable for `/v1/models` and the CLI.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AdapterInfo {
	/// blake2-256 of `adapter_model.safetensors`, lower-case hex.
	pub hash: String,
	pub rank: usize,
	pub alpha: f64,
	pub use_rslora: bool,
	/// The `alpha/r` or `alpha/sqrt(r)` applied to `B`.
	pub scale: f64,
	/// From `target_modules`, in [`Projection::ALL`] order.
	#[serde(serialize_with = "peft_names")]
	pub targets: Vec<Projection>,
	/// Number of LoRA tensors (2 per adapted projection).
	pub tensors: usize,
	/// Size of `adapter_model.safetensors`.
	pub file_bytes: u64,
	/// One past the highest layer index with a tensor: the base model needs at least this many.
	pub layers: usize,
	/// Bytes the adapter occupies once loaded (f32).
	pub resident_bytes: usize,
	/// `base_model_name_or_path` from the config, informational only.
	pub base_model: Option<String>,
}

fn peft_names<S: Serializer>(targets: &[Projection], s: S) -> Result<S::Ok, S::Error> {
	s.collect_seq(targets.iter().map(|p| p.peft_name()))
}

/// The parts of `adapter_config.json` the loader uses, after validation.
#[derive(Clone, Debug, PartialEq)]
struct PeftConfig {
	rank: usize,
	alpha: f64,
	use_rslora: bool,
	targets: Vec<Projection>,
	base_model: Option<String>,
}

impl PeftConfig {
	fn scale(&self) -> f64 {
		if self.use_rslora {
			self.alpha / (self.rank as f64).sqrt()
		} else {
			self.alpha / self.rank as f64
		}
	}
}

/// The safetensors dtypes an adapter may use; its weights stay in that type in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FloatDtype {
	F32,
	F16,
	BF16,
}

impl FloatDtype {
	pub fn size(self) -> usize {
		match self {
			FloatDtype::F32 => 4,
			FloatDtype::F16 | FloatDtype::BF16 => 2,
		}
	}
}

/// One tensor of the header, checked: its byte range is relative to the data section.
#[derive(Clone, Debug)]
struct TensorMeta {
	name: String,
	dtype: FloatDtype,
	/// `[rows, cols]`.
	shape: [usize; 2],
	start: usize,
	end: usize,
}

/// A (layer, projection) pair with both halves present.
#[derive(Clone, Debug)]
struct LoraPair {
	layer: usize,
	projection: Projection,
	a: TensorMeta,
	b: TensorMeta,
}

/// The validated header: what to build, and where the data section starts in the file.
#[derive(Debug)]
struct Plan {
	config: PeftConfig,
	pairs: Vec<LoraPair>,
	data_offset: usize,
	file_bytes: u64,
	resident_bytes: usize,
}

/// Header-only inspection without a base model: config, names, dtypes, byte ranges and rank are
/// checked (layer bounds and feature sizes cannot be without the base), and the file is hashed.
/// Serving limits (rank, size) are not applied: this reports, [`load_adapter`] enforces.
pub fn inspect(dir: &Path) -> Result<AdapterInfo, AdapterError> {
	let no_limits = AdapterLimits { max_rank: usize::MAX, max_adapter_bytes: usize::MAX, ..Default::default() };
	Ok(inspect_impl(dir, None, &no_limits)?.0)
}

/// [`inspect`] plus every check [`load_adapter`] makes against `base` (layer count, shapes).
pub fn inspect_with_base(dir: &Path, base: &LlamaConfig, limits: &AdapterLimits) -> Result<AdapterInfo, AdapterError> {
	Ok(inspect_impl(dir, Some(base), limits)?.0)
}

/// The info and the raw hash.
pub(super) fn inspect_impl(
	dir: &Path,
	base: Option<&LlamaConfig>,
	limits: &AdapterLimits,
) -> Result<(AdapterInfo, KnownWeights), AdapterError> {
	let config = read_config(dir, limits)?;
	let (file, path) = open_weights(dir)?;
	let plan = plan(&file, &path, config, base, limits)?;
	// The stamp before the hash: a change while hashing leaves a newer stamp behind.
	let stamp = FileStamp::of(&file).map_err(|e| AdapterError::io(&path, e))?;
	let hash = hash_file(&file, &path)?;
	Ok((info(&plan, &hash), KnownWeights { hash, stamp }))
}

fn info(plan: &Plan, hash: &[u8; 32]) -> AdapterInfo {
	AdapterInfo {
		hash: hash_hex(hash),
		rank: plan.config.rank,
		alpha: plan.config.alpha,
		use_rslora: plan.config.use_rslora,
		scale: plan.config.scale(),
		targets: plan.config.targets.clone(),
		tensors: plan.pairs.len() * 2,
		file_bytes: plan.file_bytes,
		layers: plan.pairs.iter().map(|p| p.layer + 1).max().unwrap_or(0),
		resident_bytes: plan.resident_bytes,
		base_model: plan.config.base_model.clone(),
	}
}

/// Loads the adapter in `dir` for `base`, placing the tensors on `device` in the file's float
/// type. `dir` should come from [`AdapterStore`](super::AdapterStore); this reads exactly its two
/// files.
pub fn load_adapter(
	dir: &Path,
	base: &LlamaConfig,
	limits: &AdapterLimits,
	device: &Device,
) -> Result<LoraAdapter, AdapterError> {
	load_adapter_known(dir, base, limits, device, None)
}

/// [`load_adapter`], taking the hash from `known` instead of hashing the file again when the
/// file's stamp still matches (the cache's loads: the hash was taken at registration).
pub fn load_adapter_known(
	dir: &Path,
	base: &LlamaConfig,
	limits: &AdapterLimits,
	device: &Device,
	known: Option<&KnownWeights>,
) -> Result<LoraAdapter, AdapterError> {
	let started = Instant::now();
	let config = read_config(dir, limits)?;
	let (file, path) = open_weights(dir)?;
	let plan = plan(&file, &path, config, Some(base), limits)?;

	// Everything is checked: map the same open file (so the header, the data and the hash all
	// come from one inode) and build.
	// SAFETY: read-only mapping; store files are replaced by rename, never rewritten in place.
	// `populate` faults the pages in at once, much cheaper than one fault per page later.
	let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) }.map_err(|e| AdapterError::io(&path, e))?;
	if map.len() as u64 != plan.file_bytes {
		return Err(AdapterError::Invalid(format!("{ADAPTER_WEIGHTS_FILE} changed size while being read")));
	}
	let data = &map[plan.data_offset..];
	let scale = plan.config.scale();

	let stamp = FileStamp::of(&file).map_err(|e| AdapterError::io(&path, e))?;
	let known_hash = known.filter(|k| k.stamp == stamp).map(|k| k.hash);

	// Hashing and building each pass over the data once: on two threads they overlap, and when
	// the hash is known the second thread builds half of the pairs instead.
	let build = |pairs: &'_ [LoraPair]| -> Result<Vec<LoraWeights>, AdapterError> {
		pairs
			.iter()
			.map(|pair| build_pair(pair, data, base, scale))
			.collect()
	};
	let (hash, built) = std::thread::scope(|s| {
		let (first, second) = match known_hash {
			Some(_) => plan.pairs.split_at(plan.pairs.len() / 2),
			None => (&plan.pairs[..], &plan.pairs[..0]),
		};
		let helper = s.spawn(|| match known_hash {
			Some(hash) => (hash, build(second)),
			None => (openledger_primitives::content_hash(&map).0, Ok(Vec::new())),
		});
		let built_first = build(first);
		let (hash, built_second) = helper.join().expect("the helper thread does not panic");
		let built = built_first.and_then(|mut a| {
			a.extend(built_second?);
			Ok(a)
		});
		(hash, built)
	});
	let built = plan.pairs.iter().zip(built?);
	let mut layers: Vec<[Option<LoraWeights>; 7]> = (0..base.num_layers).map(|_| Default::default()).collect();
	for (pair, weights) in built {
		layers[pair.layer][pair.projection.index()] = Some(weights);
	}
	// Trailing layers without any tensor are not needed.
	while layers.last().is_some_and(|l| l.iter().all(Option::is_none)) {
		layers.pop();
	}
	tracing::debug!(
		hash = %&hash_hex(&hash)[..12],
		bytes = plan.resident_bytes,
		hashed = known_hash.is_none(),
		ms = started.elapsed().as_millis() as u64,
		"adapter tensors built"
	);
	let on_cpu = LoraAdapter::new(hash, plan.config.rank, layers, plan.resident_bytes, &Device::Cpu)
		.map_err(|e| AdapterError::Internal(format!("building the adapter: {e}")))?;
	if device.is_cpu() {
		return Ok(on_cpu);
	}
	// Packed first, so a device gets one copy per float type rather than one per matrix.
	HostAdapter::pack_once(&on_cpu)
		.and_then(|packed| packed.to_device(device))
		.map_err(|e| AdapterError::Internal(format!("placing the adapter on {device:?}: {e}")))
}

fn build_pair(
	pair: &LoraPair,
	data: &[u8],
	base: &LlamaConfig,
	scale: f64,
) -> Result<LoraWeights, AdapterError> {
	// B's output rows follow the GGUF row order for q and k (see `permute_rows_for_gguf`).
	let heads = match pair.projection {
		Projection::Q if base.rope_interleaved => Some(base.num_heads),
		Projection::K if base.rope_interleaved => Some(base.num_kv_heads),
		_ => None,
	};
	let a_t = transposed(&pair.a, data, None)?;
	let b_t = transposed(&pair.b, data, heads)?;
	Ok(LoraWeights { a_t, b_t, scale: scale as f32 })
}

/// `Wᵀ` as a contiguous tensor `[cols, rows]` of the file's float type, read straight from the
/// file's bytes in one pass (a cold load is dominated by passes over the data). With
/// `gguf_heads`, W's rows are first permuted as [`permute_rows_for_gguf`] does. A NaN or an
/// infinity in W makes the adapter invalid: every answer using it would be garbage or fail.
fn transposed(t: &TensorMeta, data: &[u8], gguf_heads: Option<usize>) -> Result<Tensor, AdapterError> {
	let [rows, cols] = t.shape;
	let bytes = &data[t.start..t.end];
	// Destination row r of the permuted W comes from source row `source_row[r]`.
	let source_row: Vec<usize> = match gguf_heads {
		None => (0..rows).collect(),
		Some(n_head) => {
			if n_head == 0 || rows % (2 * n_head) != 0 {
				return Err(AdapterError::Internal(format!("building {}: cannot permute {rows} rows over {n_head} heads", t.name)));
			}
			let half = rows / n_head / 2;
			// Row (head, j, t) of the result is row (head, t, j) of W.
			(0..rows)
				.map(|r| {
					let (head, rest) = (r / (2 * half), r % (2 * half));
					let (j, t) = (rest / 2, rest % 2);
					head * 2 * half + t * half + j
				})
				.collect()
		},
	};
	// A value is an infinity or a NaN when all its type's exponent bits are set.
	let (tensor, finite) = match t.dtype {
		FloatDtype::F32 => transpose_rows(bytes, rows, cols, &source_row, f32::from_le_bytes, |b| {
			u32::from_le_bytes(b) & 0x7f80_0000 == 0x7f80_0000
		}),
		FloatDtype::F16 => {
			transpose_rows(bytes, rows, cols, &source_row, half::f16::from_le_bytes, |b| u16::from_le_bytes(b) & 0x7c00 == 0x7c00)
		},
		FloatDtype::BF16 => {
			transpose_rows(bytes, rows, cols, &source_row, half::bf16::from_le_bytes, |b| u16::from_le_bytes(b) & 0x7f80 == 0x7f80)
		},
	}
	.map_err(|e| AdapterError::Internal(format!("building {}: {e}", t.name)))?;
	if !finite {
		return Err(AdapterError::Invalid(format!("tensor `{}` holds NaN or infinite values", t.name)));
	}
	Ok(tensor)
}

/// Row `r` of the `rows × cols` matrix in `bytes` is source row `source_row[r]`; returns the
/// transpose, a `[cols, rows]` tensor, decoding each `N`-byte little-endian value with `decode`,
/// and whether no value was `non_finite`.
fn transpose_rows<T: candle_core::WithDType + Default, const N: usize>(
	bytes: &[u8],
	rows: usize,
	cols: usize,
	source_row: &[usize],
	decode: impl Fn([u8; N]) -> T,
	non_finite: impl Fn([u8; N]) -> bool,
) -> candle_core::Result<(Tensor, bool)> {
	let mut out = vec![T::default(); rows * cols];
	let mut any_non_finite = false;
	let row_bytes = cols * N;
	for (r, &src) in source_row.iter().enumerate() {
		let row = &bytes[src * row_bytes..(src + 1) * row_bytes];
		let values = row.chunks_exact(N).map(|value| -> [u8; N] { value.try_into().expect("chunks of N bytes") });
		// A contiguous pass first (it vectorizes, and leaves the row in cache for the scatter).
		any_non_finite |= values.clone().fold(false, |any, value| any | non_finite(value));
		for (c, value) in values.enumerate() {
			out[c * rows + r] = decode(value);
		}
	}
	Ok((Tensor::from_vec(out, (cols, rows), &Device::Cpu)?, !any_non_finite))
}

/// llama.cpp's converter permutes the output rows of `q` and `k` for its interleaved RoPE:
/// `W.reshape(n_head, 2, head_dim/2, cols).swapaxes(1, 2).reshape(rows, cols)`. PEFT's `B` has
/// the same output rows as `W`, so the same permutation makes the delta line up with GGUF weights.
pub fn permute_rows_for_gguf(w: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
	let (rows, cols) = w.dims2()?;
	if n_head == 0 || rows % (2 * n_head) != 0 {
		candle_core::bail!("cannot permute {rows} rows over {n_head} heads");
	}
	let half = rows / n_head / 2;
	w.reshape((n_head, 2, half, cols))?.transpose(1, 2)?.contiguous()?.reshape((rows, cols))
}

fn read_config(dir: &Path, limits: &AdapterLimits) -> Result<PeftConfig, AdapterError> {
	let path = short(dir, ADAPTER_CONFIG_FILE);
	let file = fs::File::open(dir.join(ADAPTER_CONFIG_FILE)).map_err(|e| AdapterError::io(&path, e))?;
	let mut bytes = Vec::new();
	file.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes).map_err(|e| AdapterError::io(&path, e))?;
	if bytes.len() as u64 > MAX_CONFIG_BYTES {
		return Err(AdapterError::TooLarge(format!("{ADAPTER_CONFIG_FILE} is over {} KiB", MAX_CONFIG_BYTES >> 10)));
	}
	let json: Value = serde_json::from_slice(&bytes)
		.map_err(|e| AdapterError::Invalid(format!("{ADAPTER_CONFIG_FILE} is not JSON: {e}")))?;
	parse_config(&json, limits)
}

/// `true` when a config field is absent, `null`, `false`, `""`, `[]` or `{}`.
fn unset(v: Option<&Value>) -> bool {
	match v {
		None | Some(Value::Null) | Some(Value::Bool(false)) => true,
		Some(Value::String(s)) => s.is_empty(),
		Some(Value::Array(a)) => a.is_empty(),
		Some(Value::Object(o)) => o.is_empty(),
		Some(Value::Number(_)) | Some(Value::Bool(true)) => false,
	}
}

fn parse_config(json: &Value, limits: &AdapterLimits) -> Result<PeftConfig, AdapterError> {
	let obj =
		json.as_object().ok_or_else(|| AdapterError::Invalid(format!("{ADAPTER_CONFIG_FILE} is not a JSON object")))?;
	let invalid = |field: &str, why: &str| AdapterError::Invalid(format!("{ADAPTER_CONFIG_FILE}: `{field}` {why}"));
	let unsupported =
		|field: &str, why: &str| AdapterError::Unsupported(format!("{ADAPTER_CONFIG_FILE}: `{field}` {why}"));

	match obj.get("peft_type") {
		None | Some(Value::Null) => {},
		Some(Value::String(s)) if s == "LORA" => {},
		Some(other) => return Err(unsupported("peft_type", &format!("is {other}; only LORA adapters are supported"))),
	}

	let rank = match obj.get("r") {
		Some(Value::Number(n)) => {
			n.as_u64().ok_or_else(|| invalid("r", &format!("is {n}; it must be a positive integer")))?
		},
		None | Some(Value::Null) => return Err(invalid("r", "is missing")),
		Some(other) => return Err(invalid("r", &format!("is {other}; it must be a positive integer"))),
	};
	if rank == 0 {
		return Err(invalid("r", "is 0"));
	}
	if rank > limits.max_rank as u64 {
		return Err(AdapterError::TooLarge(format!(
			"{ADAPTER_CONFIG_FILE}: rank {rank} is over the limit {}",
			limits.max_rank
		)));
	}
	let rank = rank as usize;

	let alpha = match obj.get("lora_alpha") {
		None | Some(Value::Null) => DEFAULT_ALPHA,
		Some(Value::Number(n)) => {
			n.as_f64().filter(|a| a.is_finite()).ok_or_else(|| invalid("lora_alpha", "is not a finite number"))?
		},
		Some(other) => return Err(invalid("lora_alpha", &format!("is {other}; it must be a number"))),
	};

	let use_rslora = match obj.get("use_rslora") {
		None | Some(Value::Null) => false,
		Some(Value::Bool(b)) => *b,
		Some(other) => return Err(invalid("use_rslora", &format!("is {other}; it must be true or false"))),
	};

	let targets = parse_targets(obj.get("target_modules"))?;

	if !unset(obj.get("fan_in_fan_out")) {
		return Err(unsupported("fan_in_fan_out", "is set; only Llama's nn.Linear layout (false) is supported"));
	}
	match obj.get("bias") {
		None | Some(Value::Null) => {},
		Some(Value::String(s)) if s == "none" => {},
		Some(other) => return Err(unsupported("bias", &format!("is {other}; only \"none\" is supported"))),
	}
	for (field, why) in [
		("rank_pattern", "gives per-module ranks, which are not supported"),
		("alpha_pattern", "gives per-module alphas, which are not supported"),
		("use_dora", "is set; DoRA adapters are not supported"),
		("layers_to_transform", "is set; adapters on a subset of layers are not supported"),
		("modules_to_save", "is set; adapters carrying full module weights are not supported"),
		("lora_bias", "is set; LoRA biases are not supported"),
		("layer_replication", "is set; layer replication is not supported"),
		("trainable_token_indices", "is set; trainable tokens are not supported"),
		("target_parameters", "is set; parameter-targeted LoRA is not supported"),
	] {
		if !unset(obj.get(field)) {
			return Err(unsupported(field, why));
		}
	}
	let base_model = obj.get("base_model_name_or_path").and_then(Value::as_str).map(|s| s.chars().take(256).collect());
	Ok(PeftConfig { rank, alpha, use_rslora, targets, base_model })
}

/// `target_modules`: a list of module names (or dotted paths ending in one), or a single such
/// name, or `"all-linear"`. Any other single string is a PEFT regex, which is not supported.
fn parse_targets(v: Option<&Value>) -> Result<Vec<Projection>, AdapterError> {
	let one = |s: &str| -> Result<Projection, AdapterError> {
		let last = s.rsplit('.').next().unwrap_or(s);
		Projection::from_peft_name(last).ok_or_else(|| {
			let allowed: Vec<_> = Projection::ALL.iter().map(|p| p.peft_name()).collect();
			AdapterError::Unsupported(format!(
				"{ADAPTER_CONFIG_FILE}: target module `{}` is not one of {}",
				s.chars().take(100).collect::<String>(),
				allowed.join(", ")
			))
		})
	};
	let mut set = BTreeSet::new();
	match v {
		None | Some(Value::Null) => {
			return Err(AdapterError::Invalid(format!("{ADAPTER_CONFIG_FILE}: `target_modules` is missing")))
		},
		Some(Value::String(s)) if s == "all-linear" => set.extend(Projection::ALL),
		Some(Value::String(s)) => {
			set.insert(one(s)?);
		},
		Some(Value::Array(items)) => {
			for item in items {
				let s = item.as_str().ok_or_else(|| {
					AdapterError::Invalid(format!("{ADAPTER_CONFIG_FILE}: `target_modules` holds {item}, not a string"))
				})?;
				set.insert(one(s)?);
			}
		},
		Some(other) => {
			return Err(AdapterError::Invalid(format!(
				"{ADAPTER_CONFIG_FILE}: `target_modules` is {other}; it must be a list of module names"
			)))
		},
	}
	if set.is_empty() {
		return Err(AdapterError::Invalid(format!("{ADAPTER_CONFIG_FILE}: `target_modules` is empty")));
	}
	Ok(set.into_iter().collect())
}

/// `<adapter dir name>/<file>`: enough to identify the file in a message without exposing the
/// server's directory layout to API clients.
fn short(dir: &Path, file: &str) -> PathBuf {
	match dir.file_name() {
		Some(name) => Path::new(name).join(file),
		None => PathBuf::from(file),
	}
}

/// Opens the weights file; returns it with its [`short`] name for messages.
fn open_weights(dir: &Path) -> Result<(fs::File, PathBuf), AdapterError> {
	let path = short(dir, ADAPTER_WEIGHTS_FILE);
	match fs::File::open(dir.join(ADAPTER_WEIGHTS_FILE)) {
		Ok(file) => Ok((file, path)),
		Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir.join("adapter_model.bin").exists() => {
			Err(AdapterError::Unsupported(format!(
				"{} has only adapter_model.bin (pickle); convert it to {ADAPTER_WEIGHTS_FILE}",
				short(dir, "").display()
			)))
		},
		Err(e) => Err(AdapterError::io(&path, e)),
	}
}

/// One entry of a safetensors header, before checks.
#[derive(Deserialize)]
struct RawTensorInfo {
	dtype: String,
	shape: Vec<u64>,
	data_offsets: [u64; 2],
}

/// Reads and checks the safetensors header from `file` (8-byte length + JSON, both bounded), and
/// every tensor against `config` and, if given, `base`. Reads nothing past the header.
fn plan(
	file: &fs::File,
	path: &Path,
	config: PeftConfig,
	base: Option<&LlamaConfig>,
	limits: &AdapterLimits,
) -> Result<Plan, AdapterError> {
	let invalid = |why: String| AdapterError::Invalid(format!("{ADAPTER_WEIGHTS_FILE}: {why}"));
	let file_bytes = file.metadata().map_err(|e| AdapterError::io(path, e))?.len();
	if file_bytes > limits.max_adapter_bytes as u64 {
		return Err(AdapterError::TooLarge(format!(
			"{ADAPTER_WEIGHTS_FILE} is {file_bytes} bytes, over the limit {}",
			limits.max_adapter_bytes
		)));
	}
	if file_bytes < 8 {
		return Err(invalid(format!("{file_bytes} bytes is too short for a safetensors file")));
	}
	let mut reader = file;
	let mut len = [0u8; 8];
	reader.read_exact(&mut len).map_err(|e| AdapterError::io(path, e))?;
	let header_len = u64::from_le_bytes(len);
	if header_len > file_bytes - 8 {
		return Err(invalid(format!("header length {header_len} is larger than the file ({file_bytes} bytes)")));
	}
	if header_len > MAX_HEADER_BYTES {
		return Err(AdapterError::TooLarge(format!(
			"{ADAPTER_WEIGHTS_FILE}: header is {header_len} bytes, over the limit {MAX_HEADER_BYTES}"
		)));
	}
	let mut header = vec![0u8; header_len as usize];
	reader.read_exact(&mut header).map_err(|e| AdapterError::io(path, e))?;
	let header: BTreeMap<String, Value> =
		serde_json::from_slice(&header).map_err(|e| invalid(format!("header is not a JSON object: {e}")))?;
	let data_offset = 8 + header_len as usize;
	let data_len = (file_bytes - 8 - header_len) as usize;

	// name → per-(layer, projection) halves, checked one tensor at a time in name order.
	let mut halves: BTreeMap<(usize, Projection), (Option<TensorMeta>, Option<TensorMeta>)> = BTreeMap::new();
	let mut ranges: Vec<(usize, usize, String)> = Vec::new();
	for (name, value) in header {
		if name == "__metadata__" {
			if !value.is_object() {
				return Err(invalid("`__metadata__` is not an object".into()));
			}
			continue;
		}
		let shown: String = name.chars().take(200).collect::<String>().escape_debug().to_string();
		let (layer, projection, is_a) = parse_tensor_name(&name).ok_or_else(|| {
			let unsupported =
				["modules_to_save", "lora_embedding", "lora_magnitude_vector", ".bias", "lm_head", "embed_tokens"];
			if unsupported.iter().any(|u| name.contains(u)) {
				AdapterError::Unsupported(format!(
					"{ADAPTER_WEIGHTS_FILE}: tensor `{shown}` is not a LoRA A/B weight of a Llama projection"
				))
			} else {
				invalid(format!(
					"unexpected tensor `{shown}` (expected {TENSOR_PREFIX}{{i}}.{{self_attn|mlp}}.{{proj}}.lora_{{A|B}}.weight)"
				))
			}
		})?;
		if !config.targets.contains(&projection) {
			return Err(invalid(format!(
				"tensor `{shown}` is for {} which is not in target_modules",
				projection.peft_name()
			)));
		}
		if let Some(base) = base {
			if layer >= base.num_layers {
				return Err(invalid(format!(
					"tensor `{shown}` is for layer {layer} but the base model has {} layers",
					base.num_layers
				)));
			}
		}
		let raw: RawTensorInfo = serde_json::from_value(value)
			.map_err(|e| invalid(format!("tensor `{shown}` has a malformed header entry: {e}")))?;
		let dtype = match raw.dtype.as_str() {
			"F32" => FloatDtype::F32,
			"F16" => FloatDtype::F16,
			"BF16" => FloatDtype::BF16,
			other => {
				return Err(AdapterError::Unsupported(format!(
					"{ADAPTER_WEIGHTS_FILE}: tensor `{shown}` has dtype {} (only F32, F16, BF16)",
					other.chars().take(20).collect::<String>().escape_debug()
				)))
			},
		};
		let shape: [usize; 2] = match raw.shape[..] {
			[rows, cols] if rows <= u32::MAX as u64 && cols <= u32::MAX as u64 => [rows as usize, cols as usize],
			_ => return Err(invalid(format!("tensor `{shown}` has shape {:?}; LoRA weights are 2-D", raw.shape))),
		};
		let [start, end] = raw.data_offsets;
		let Some(expected) = (shape[0] as u64).checked_mul(shape[1] as u64).and_then(|n| n.checked_mul(dtype.size() as u64)) else {
			return Err(invalid(format!("tensor `{shown}` has shape {shape:?}, more bytes than a file can hold")));
		};
		if end < start || end - start != expected {
			return Err(invalid(format!(
				"tensor `{shown}` has offsets [{start}, {end}) but shape {shape:?} of {:?} needs {expected} bytes",
				dtype
			)));
		}
		if end > data_len as u64 {
			return Err(invalid(format!(
				"tensor `{shown}` data [{start}, {end}) lies past the end of the file (data section is {data_len} bytes)"
			)));
		}
		// A is [r, in], B is [out, r].
		let (r_dim, feature_dim, feature) = if is_a { (shape[0], shape[1], "in") } else { (shape[1], shape[0], "out") };
		if r_dim != config.rank {
			return Err(invalid(format!(
				"tensor `{shown}` has shape {shape:?}, whose rank is not r = {}",
				config.rank
			)));
		}
		if let Some(base) = base {
			let (in_f, out_f) = base.projection_dims(projection);
			let want = if is_a { in_f } else { out_f };
			if feature_dim != want {
				let want_shape = if is_a { [config.rank, in_f] } else { [out_f, config.rank] };
				return Err(invalid(format!(
					"tensor `{shown}` has shape {shape:?} but the base model's {} needs {want_shape:?} ({feature}_features = {want})",
					projection.peft_name()
				)));
			}
		} else if feature_dim == 0 {
			return Err(invalid(format!("tensor `{shown}` has an empty shape {shape:?}")));
		}
		let meta = TensorMeta { name: name.clone(), dtype, shape, start: start as usize, end: end as usize };
		ranges.push((meta.start, meta.end, shown.clone()));
		let entry = halves.entry((layer, projection)).or_default();
		let slot = if is_a { &mut entry.0 } else { &mut entry.1 };
		if let Some(previous) = slot.replace(meta) {
			return Err(invalid(format!("tensor `{shown}` duplicates `{}`", previous.name)));
		}
	}

	// The data section must be covered exactly once, in order, with nothing after the last tensor.
	ranges.sort();
	let mut cursor = 0usize;
	for (start, end, shown) in &ranges {
		if *start != cursor {
			return Err(invalid(format!(
				"tensor `{shown}` starts at {start} but the previous tensor ends at {cursor} (gap or overlap)"
			)));
		}
		cursor = *end;
	}
	if cursor != data_len {
		return Err(invalid(format!("{} bytes after the last tensor", data_len - cursor)));
	}

	let mut pairs = Vec::with_capacity(halves.len());
	let mut dims: BTreeMap<Projection, (usize, usize)> = BTreeMap::new();
	let mut resident_bytes = 0usize;
	for ((layer, projection), (a, b)) in halves {
		let (a, b) = match (a, b) {
			(Some(a), Some(b)) => (a, b),
			(Some(a), None) => return Err(invalid(format!("tensor `{}` has no matching lora_B", a.name))),
			(None, Some(b)) => return Err(invalid(format!("tensor `{}` has no matching lora_A", b.name))),
			(None, None) => continue,
		};
		if a.dtype != b.dtype {
			return Err(invalid(format!("`{}` is {:?} but its lora_B is {:?}", a.name, a.dtype, b.dtype)));
		}
		// Without a base, at least every layer must agree on a projection's shape.
		let these = (a.shape[1], b.shape[0]);
		if let Some(first) = dims.insert(projection, these) {
			if first != these {
				return Err(invalid(format!(
					"layer {layer} {} has (in, out) = {these:?} but another layer has {first:?}",
					projection.peft_name()
				)));
			}
		}
		resident_bytes = resident_bytes.saturating_add(a.dtype.size() * config.rank * (a.shape[1] + b.shape[0]));
		pairs.push(LoraPair { layer, projection, a, b });
	}
	if pairs.is_empty() {
		return Err(invalid("no LoRA tensors".into()));
	}
	if resident_bytes > limits.max_adapter_bytes {
		return Err(AdapterError::TooLarge(format!(
			"the adapter needs {resident_bytes} bytes resident, over the limit {}",
			limits.max_adapter_bytes
		)));
	}
	Ok(Plan { config, pairs, data_offset, file_bytes, resident_bytes })
}

/// `base_model.model.model.layers.{i}.{self_attn|mlp}.{proj}.lora_{A|B}[.default].weight` →
/// `(i, proj, is_a)`.
fn parse_tensor_name(name: &str) -> Option<(usize, Projection, bool)> {
	let rest = name.strip_prefix(TENSOR_PREFIX)?;
	let (index, rest) = rest.split_once('.')?;
	if index.is_empty()
		|| index.len() > 6
		|| !index.bytes().all(|b| b.is_ascii_digit())
		|| (index.len() > 1 && index.starts_with('0'))
	{
		return None;
	}
	let layer: usize = index.parse().ok()?;
	let (module, rest) = rest.split_once('.')?;
	let (proj, rest) = rest.split_once('.')?;
	let projection = Projection::from_peft_name(proj)?;
	if projection.module_path() != format!("{module}.{proj}") {
		return None;
	}
	let is_a = match rest {
		"lora_A.weight" | "lora_A.default.weight" => true,
		"lora_B.weight" | "lora_B.default.weight" => false,
		_ => return None,
	};
	Some((layer, projection, is_a))
}

#[cfg(test)]
mod tests {
	use std::collections::HashMap;

	use super::*;
	use crate::adapters::{test_util::tiny_config, write_random_adapter};

	fn limits() -> AdapterLimits {
		AdapterLimits::default()
	}

	/// Writes a config and a safetensors file built by hand from `(name, dtype, shape, bytes)`.
	fn write_raw(dir: &Path, config: &Value, tensors: &[(&str, &str, Vec<u64>, Vec<u8>)]) -> PathBuf {
		fs::create_dir_all(dir).unwrap();
		fs::write(dir.join(ADAPTER_CONFIG_FILE), serde_json::to_vec(config).unwrap()).unwrap();
		let mut header = serde_json::Map::new();
		let mut data = Vec::new();
		for (name, dtype, shape, bytes) in tensors {
			let start = data.len();
			data.extend_from_slice(bytes);
			header.insert(
				name.to_string(),
				serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
			);
		}
		write_file(dir, &serde_json::to_vec(&header).unwrap(), &data, None);
		dir.to_path_buf()
	}

	fn write_file(dir: &Path, header: &[u8], data: &[u8], len_override: Option<u64>) {
		let mut file = Vec::new();
		file.extend_from_slice(&len_override.unwrap_or(header.len() as u64).to_le_bytes());
		file.extend_from_slice(header);
		file.extend_from_slice(data);
		fs::write(dir.join(ADAPTER_WEIGHTS_FILE), file).unwrap();
	}

	fn config_json(r: u64, targets: &[&str]) -> Value {
		serde_json::json!({"peft_type": "LORA", "r": r, "lora_alpha": 16, "target_modules": targets, "bias": "none"})
	}

	fn name(layer: usize, proj: Projection, half: &str) -> String {
		format!("{TENSOR_PREFIX}{layer}.{}.lora_{half}.weight", proj.module_path())
	}

	fn f32_bytes(n: usize) -> Vec<u8> {
		(0..n).flat_map(|i| (i as f32 * 0.01).to_le_bytes()).collect()
	}

	/// A valid raw q_proj adapter for the tiny config at rank 2, with optional edits.
	fn q_pair(r: usize, layer: usize) -> Vec<(String, &'static str, Vec<u64>, Vec<u8>)> {
		let cfg = tiny_config(false);
		let (i, o) = cfg.projection_dims(Projection::Q);
		vec![
			(name(layer, Projection::Q, "A"), "F32", vec![r as u64, i as u64], f32_bytes(r * i)),
			(name(layer, Projection::Q, "B"), "F32", vec![o as u64, r as u64], f32_bytes(o * r)),
		]
	}

	fn as_refs<'a>(t: &'a [(String, &'static str, Vec<u64>, Vec<u8>)]) -> Vec<(&'a str, &'a str, Vec<u64>, Vec<u8>)> {
		t.iter().map(|(n, d, s, b)| (n.as_str(), *d, s.clone(), b.clone())).collect()
	}

	fn load(dir: &Path) -> Result<LoraAdapter, AdapterError> {
		load_adapter(dir, &tiny_config(false), &limits(), &Device::Cpu)
	}

	#[test]
	fn permutation_matches_hand_computed_example() {
		// One head of dim 4: rows [0 1 2 3] → reshape (1,2,2) [[0,1],[2,3]] → swap → [[0,2],[1,3]].
		let rows = |n: usize| Tensor::arange(0f32, n as f32, &Device::Cpu).unwrap().reshape((n, 1)).unwrap();
		let p = |w: &Tensor, h| permute_rows_for_gguf(w, h).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
		assert_eq!(p(&rows(4), 1), [0., 2., 1., 3.]);
		// Two heads of dim 4: each head permuted on its own.
		assert_eq!(p(&rows(8), 2), [0., 2., 1., 3., 4., 6., 5., 7.]);
		// One head of dim 6: [[0,1,2],[3,4,5]] → [0,3,1,4,2,5].
		assert_eq!(p(&rows(6), 1), [0., 3., 1., 4., 2., 5.]);
		// Columns travel with their row.
		let w = Tensor::new(&[[0f32, 10.], [1., 11.], [2., 12.], [3., 13.]], &Device::Cpu).unwrap();
		assert_eq!(
			permute_rows_for_gguf(&w, 1).unwrap().to_vec2::<f32>().unwrap(),
			[[0., 10.], [2., 12.], [1., 11.], [3., 13.]]
		);
		assert!(permute_rows_for_gguf(&rows(6), 2).is_err());
	}

	/// Reads `B` of a projection back from the file with the reference `safetensors` crate.
	fn read_b(dir: &Path, layer: usize, proj: Projection) -> (Vec<f32>, usize, usize) {
		let bytes = fs::read(dir.join(ADAPTER_WEIGHTS_FILE)).unwrap();
		let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
		let view = st.tensor(&name(layer, proj, "B")).unwrap();
		let (out, r) = (view.shape()[0], view.shape()[1]);
		let values = view.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
		(values, out, r)
	}

	#[test]
	fn a_load_trusts_the_registered_hash_only_while_the_stamp_holds() {
		let tmp = tempfile::tempdir().unwrap();
		let cfg = tiny_config(false);
		write_random_adapter(tmp.path(), &cfg, 4, 8.0, &Projection::ALL, 3, false, false).unwrap();
		let (info, known) = inspect_impl(tmp.path(), Some(&cfg), &limits()).unwrap();
		assert_eq!(hash_hex(&known.hash), info.hash);
		let load = |known: &KnownWeights| load_adapter_known(tmp.path(), &cfg, &limits(), &Device::Cpu, Some(known)).unwrap();
		// A stand-in hash proves which path was taken.
		let stand_in = KnownWeights { hash: [7; 32], ..known };
		assert_eq!(load(&stand_in).hash, [7; 32], "same stamp: the registered hash is used");
		// Rewritten (by rename, as tools do): a new stamp, so the file is hashed again.
		let weights = tmp.path().join(ADAPTER_WEIGHTS_FILE);
		let copy = tmp.path().join("copy.safetensors");
		fs::copy(&weights, &copy).unwrap();
		fs::rename(&copy, &weights).unwrap();
		assert_eq!(load(&stand_in).hash, known.hash, "new stamp: the file is hashed again");
	}

	#[test]
	fn valid_adapter_loads_with_transposed_b_and_its_scale() {
		let tmp = tempfile::tempdir().unwrap();
		let cfg = tiny_config(false);
		for use_rslora in [false, true] {
			let dir = tmp.path().join(format!("a{use_rslora}"));
			let info = write_random_adapter(&dir, &cfg, 4, 8.0, &Projection::ALL, 7, false, use_rslora).unwrap();
			let scale = if use_rslora { 8.0 / 2.0 } else { 8.0 / 4.0 };
			assert_eq!(info.scale, scale);
			let adapter = load(&dir).unwrap();
			assert_eq!(hash_hex(&adapter.hash), info.hash);
			assert_eq!(adapter.rank, 4);
			assert_eq!(adapter.layers.len(), cfg.num_layers);
			assert_eq!(adapter.resident_bytes, info.resident_bytes);
			for layer in 0..cfg.num_layers {
				for proj in Projection::ALL {
					let w = adapter.weights(layer, proj).unwrap();
					let (in_f, out_f) = cfg.projection_dims(proj);
					assert_eq!(w.a_t.dims(), [in_f, 4]);
					assert_eq!(w.b_t.dims(), [4, out_f]);
					assert!(w.a_t.is_contiguous() && w.b_t.is_contiguous());
					assert_eq!(w.scale, scale as f32);
					let (b, out, r) = read_b(&dir, layer, proj);
					let b_t = w.b_t.to_vec2::<f32>().unwrap();
					for o in 0..out {
						for k in 0..r {
							assert_eq!(b_t[k][o], b[o * r + k], "{layer} {proj:?}");
						}
					}
				}
			}
		}
	}

	#[test]
	fn gguf_base_permutes_q_and_k_rows_of_b() {
		let tmp = tempfile::tempdir().unwrap();
		let hf = tiny_config(false);
		let gguf = tiny_config(true);
		write_random_adapter(tmp.path(), &hf, 2, 2.0, &Projection::ALL, 3, false, false).unwrap();
		let plain = load_adapter(tmp.path(), &hf, &limits(), &Device::Cpu).unwrap();
		let permuted = load_adapter(tmp.path(), &gguf, &limits(), &Device::Cpu).unwrap();
		for proj in Projection::ALL {
			let p = plain.weights(1, proj).unwrap();
			let g = permuted.weights(1, proj).unwrap();
			assert_eq!(p.a_t.to_vec2::<f32>().unwrap(), g.a_t.to_vec2::<f32>().unwrap());
			let (pb, gb) = (p.b_t.to_vec2::<f32>().unwrap(), g.b_t.to_vec2::<f32>().unwrap());
			let heads = match proj {
				Projection::Q => hf.num_heads,
				Projection::K => hf.num_kv_heads,
				_ => {
					assert_eq!(pb, gb, "{proj:?}");
					continue;
				},
			};
			// Column j of the GGUF b_t is column perm[j] of the HF one, perm from the hand rule.
			let half = hf.head_dim / 2;
			for j in 0..heads * hf.head_dim {
				let (h, within) = (j / hf.head_dim, j % hf.head_dim);
				let src = h * hf.head_dim + (within % 2) * half + within / 2;
				for k in 0..2 {
					assert_eq!(gb[k][j], pb[k][src], "{proj:?} column {j}");
				}
			}
		}
	}

	#[test]
	fn f16_and_bf16_and_default_suffix_are_accepted() {
		let tmp = tempfile::tempdir().unwrap();
		let cfg = tiny_config(false);
		let (i, o) = cfg.projection_dims(Projection::V);
		let half_one = |dtype: &str| match dtype {
			"F16" => 0x3c00u16.to_le_bytes(),
			_ => 0x3f80u16.to_le_bytes(),
		};
		for dtype in ["F16", "BF16"] {
			let dir = tmp.path().join(dtype);
			let a = format!("{TENSOR_PREFIX}0.self_attn.v_proj.lora_A.default.weight");
			let b = format!("{TENSOR_PREFIX}0.self_attn.v_proj.lora_B.default.weight");
			let ones = |n: usize| half_one(dtype).repeat(n);
			write_raw(
				&dir,
				&config_json(2, &["v_proj"]),
				&[
					(a.as_str(), dtype, vec![2, i as u64], ones(2 * i)),
					(b.as_str(), dtype, vec![o as u64, 2], ones(o * 2)),
				],
			);
			let adapter = load(&dir).unwrap();
			let w = adapter.weights(0, Projection::V).unwrap();
			// Kept in the file's type: half the resident bytes of f32.
			let expected = if dtype == "F16" { candle_core::DType::F16 } else { candle_core::DType::BF16 };
			assert_eq!((w.a_t.dtype(), w.b_t.dtype()), (expected, expected));
			assert_eq!(adapter.resident_bytes, 2 * 2 * (i + o));
			let values = |t: &Tensor| t.to_dtype(candle_core::DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
			assert!(values(&w.a_t).iter().all(|&x| x == 1.0));
			assert!(values(&w.b_t).iter().all(|&x| x == 1.0));
			// lora_alpha 16 / r 2 = 8.
			assert_eq!(w.scale, 8.0);
			let x = vec![1f32; i];
			let mut y = vec![0f32; o];
			w.add_row_delta(&x, &mut y).unwrap();
			assert!(y.iter().all(|&v| v == 8.0 * 2.0 * i as f32), "{y:?}");
			assert_eq!(adapter.layers.len(), 1, "trailing empty layers are dropped");
			assert!(adapter.weights(1, Projection::V).is_none() && adapter.weights(0, Projection::Q).is_none());
		}
	}

	/// Every bad adapter in the corpus is refused with the expected kind of error.
	#[test]
	fn corpus_of_bad_adapters() {
		let tmp = tempfile::tempdir().unwrap();
		let cfg = tiny_config(false);
		let mut case = 0;
		let mut dir = || {
			case += 1;
			tmp.path().join(format!("case{case}"))
		};
		let q = q_pair(2, 0);
		let q_cfg = config_json(2, &["q_proj"]);
		type Check = fn(&AdapterError) -> bool;
		let invalid: Check = |e| matches!(e, AdapterError::Invalid(_));
		let unsupported: Check = |e| matches!(e, AdapterError::Unsupported(_));
		let too_large: Check = |e| matches!(e, AdapterError::TooLarge(_));
		let not_found: Check = |e| matches!(e, AdapterError::NotFound(_));
		let mut cases: Vec<(&str, PathBuf, Check)> = Vec::new();

		let d = write_raw(&dir(), &q_cfg, &as_refs(&q));
		load(&d).expect("the corpus's base case is valid");

		// Header length larger than the file, and u64::MAX.
		let d = dir();
		write_raw(&d, &q_cfg, &as_refs(&q));
		write_file(&d, b"{}", &[], Some(1000));
		cases.push(("header longer than file", d, invalid));
		let d = dir();
		write_raw(&d, &q_cfg, &as_refs(&q));
		write_file(&d, b"{}", &[], Some(u64::MAX));
		cases.push(("header length u64::MAX", d, invalid));
		// A header over 1 MiB inside a file that really is that long.
		let d = dir();
		write_raw(&d, &q_cfg, &[]);
		let mut big = b"{\"__metadata__\":{\"x\":\"".to_vec();
		big.resize((2 << 20) - 3, b'x');
		big.extend_from_slice(b"\"}}");
		write_file(&d, &big, &[], None);
		cases.push(("header over 1 MiB", d, too_large));
		// Header not JSON; file shorter than 8 bytes.
		let d = dir();
		write_raw(&d, &q_cfg, &[]);
		write_file(&d, b"not json", &[], None);
		cases.push(("header not JSON", d, invalid));
		let d = dir();
		write_raw(&d, &q_cfg, &[]);
		fs::write(d.join(ADAPTER_WEIGHTS_FILE), b"abc").unwrap();
		cases.push(("file of 3 bytes", d, invalid));

		// Truncated data: the file ends before the last tensor does.
		let d = write_raw(&dir(), &q_cfg, &as_refs(&q));
		let bytes = fs::read(d.join(ADAPTER_WEIGHTS_FILE)).unwrap();
		fs::write(d.join(ADAPTER_WEIGHTS_FILE), &bytes[..bytes.len() - 4]).unwrap();
		cases.push(("truncated data", d, invalid));
		// Trailing garbage after the last tensor.
		let d = write_raw(&dir(), &q_cfg, &as_refs(&q));
		let mut bytes = fs::read(d.join(ADAPTER_WEIGHTS_FILE)).unwrap();
		bytes.extend_from_slice(&[0; 4]);
		fs::write(d.join(ADAPTER_WEIGHTS_FILE), bytes).unwrap();
		cases.push(("trailing bytes", d, invalid));

		// Disallowed dtypes.
		for dtype in ["I64", "U8", "F64", "F8_E4M3"] {
			let mut t = q.clone();
			t[0].1 = dtype;
			let size = match dtype {
				"I64" | "F64" => 8,
				"U8" | "F8_E4M3" => 1,
				_ => unreachable!(),
			};
			let n = t[0].2.iter().product::<u64>() as usize;
			t[0].3 = vec![0; n * size];
			cases.push(("bad dtype", write_raw(&dir(), &q_cfg, &as_refs(&t)), unsupported));
		}
		// Shape × dtype does not match the byte range.
		let mut t = q.clone();
		let shorter = t[0].3.len() - 4;
		t[0].3.truncate(shorter);
		cases.push(("shape x dtype mismatch", write_raw(&dir(), &q_cfg, &as_refs(&t)), invalid));
		// Non-finite weights: a NaN in A, an infinity in B, an f16 infinity, a bf16 NaN.
		for (index, value) in [(0usize, f32::NAN), (1, f32::INFINITY)] {
			let mut t = q.clone();
			t[index].3[4..8].copy_from_slice(&value.to_le_bytes());
			cases.push(("non-finite f32 weight", write_raw(&dir(), &q_cfg, &as_refs(&t)), invalid));
		}
		for (dtype, bits) in [("F16", 0x7c00u16), ("BF16", 0x7fc1)] {
			let mut t = q.clone();
			let n = t[0].2.iter().product::<u64>() as usize;
			t[0].1 = dtype;
			t[0].3 = vec![0; n * 2];
			t[0].3[2..4].copy_from_slice(&bits.to_le_bytes());
			t[1].1 = dtype;
			t[1].3 = vec![0; t[1].2.iter().product::<u64>() as usize * 2];
			cases.push(("non-finite half weight", write_raw(&dir(), &q_cfg, &as_refs(&t)), invalid));
		}
		// A shape whose byte count does not fit 64 bits.
		let mut t = q.clone();
		t[0].2 = vec![u32::MAX as u64, u32::MAX as u64];
		cases.push(("shape of 2^64 bytes", write_raw(&dir(), &q_cfg, &as_refs(&t)), invalid));
		// 3-D shape.
		let mut t = q.clone();
		t[0].2 = vec![2, 16, 1];
		cases.push(("3-D tensor", write_raw(&dir(), &q_cfg, &as_refs(&t)), invalid));
		// Unknown tensor names.
		for bad in [
			"model.layers.0.self_attn.q_proj.lora_A.weight",
			"base_model.model.model.layers.0.self_attn.q_proj.weight",
			"base_model.model.model.layers.x.self_attn.q_proj.lora_A.weight",
			"base_model.model.model.layers.00.self_attn.q_proj.lora_A.weight",
			"base_model.model.model.layers.0.mlp.q_proj.lora_A.weight",
			"base_model.model.model.layers.0.self_attn.q_proj.lora_C.weight",
			"base_model.model.model.layers.0.self_attn.qkv_proj.lora_A.weight",
		] {
			let mut t = q.clone();
			t[0].0 = bad.to_string();
			cases.push(("unknown tensor name", write_raw(&dir(), &q_cfg, &as_refs(&t)), invalid));
		}
		let mut t = q.clone();
		t.push(("base_model.model.lm_head.modules_to_save.default.weight".into(), "F32", vec![1], f32_bytes(1)));
		cases.push(("modules_to_save tensor", write_raw(&dir(), &q_cfg, &as_refs(&t)), unsupported));
		// Layer index ≥ num_layers.
		let t = q_pair(2, cfg.num_layers);
		cases.push(("layer out of range", write_raw(&dir(), &q_cfg, &as_refs(&t)), invalid));
		// A without B, B without A.
		cases.push(("A without B", write_raw(&dir(), &q_cfg, &as_refs(&q[..1])), invalid));
		cases.push(("B without A", write_raw(&dir(), &q_cfg, &as_refs(&q[1..])), invalid));
		// Both `lora_A.weight` and `lora_A.default.weight`.
		let mut t = q.clone();
		let mut dup = t[0].clone();
		dup.0 = dup.0.replace(".weight", ".default.weight");
		t.push(dup);
		cases.push(("duplicate A", write_raw(&dir(), &q_cfg, &as_refs(&t)), invalid));
		// No tensors at all.
		cases.push(("empty", write_raw(&dir(), &q_cfg, &[]), invalid));
		// Rank over the limit (config and tensors agree at 65).
		let t = q_pair(65, 0);
		cases.push(("rank > max", write_raw(&dir(), &config_json(65, &["q_proj"]), &as_refs(&t)), too_large));
		// Tensor rank differs from config `r`.
		let t = q_pair(3, 0);
		cases.push(("rank != r", write_raw(&dir(), &q_cfg, &as_refs(&t)), invalid));
		// A's in_features does not match the base hidden size.
		let mut t = q.clone();
		t[0].2 = vec![2, 8];
		t[0].3 = f32_bytes(16);
		cases.push(("A shape vs hidden size", write_raw(&dir(), &q_cfg, &as_refs(&t)), invalid));
		// B's out_features does not match.
		let mut t = q.clone();
		t[1].2 = vec![8, 2];
		t[1].3 = f32_bytes(16);
		cases.push(("B shape vs out features", write_raw(&dir(), &q_cfg, &as_refs(&t)), invalid));
		// A tensor for a projection not in target_modules.
		cases.push(("tensor not targeted", write_raw(&dir(), &config_json(2, &["v_proj"]), &as_refs(&q)), invalid));

		// Config problems.
		let with = |edit: &dyn Fn(&mut serde_json::Map<String, Value>)| {
			let mut c = q_cfg.clone();
			edit(c.as_object_mut().unwrap());
			c
		};
		let config_cases: Vec<(&str, Value, Check)> = vec![
			("target not allowed", config_json(2, &["q_proj", "lm_head"]), unsupported),
			("target regex", with(&|c| drop(c.insert("target_modules".into(), ".*proj".into()))), unsupported),
			("targets missing", with(&|c| drop(c.remove("target_modules"))), invalid),
			("targets empty", config_json(2, &[]), invalid),
			("peft_type", with(&|c| drop(c.insert("peft_type".into(), "IA3".into()))), unsupported),
			("r missing", with(&|c| drop(c.remove("r"))), invalid),
			("r zero", config_json(0, &["q_proj"]), invalid),
			("r float", with(&|c| drop(c.insert("r".into(), 2.5.into()))), invalid),
			("alpha string", with(&|c| drop(c.insert("lora_alpha".into(), "16".into()))), invalid),
			("rslora string", with(&|c| drop(c.insert("use_rslora".into(), "yes".into()))), invalid),
			("fan_in_fan_out", with(&|c| drop(c.insert("fan_in_fan_out".into(), true.into()))), unsupported),
			("bias all", with(&|c| drop(c.insert("bias".into(), "all".into()))), unsupported),
			(
				"rank_pattern",
				with(&|c| drop(c.insert("rank_pattern".into(), serde_json::json!({"q_proj": 4})))),
				unsupported,
			),
			(
				"alpha_pattern",
				with(&|c| drop(c.insert("alpha_pattern".into(), serde_json::json!({"q_proj": 4})))),
				unsupported,
			),
			("use_dora", with(&|c| drop(c.insert("use_dora".into(), true.into()))), unsupported),
			(
				"layers_to_transform",
				with(&|c| drop(c.insert("layers_to_transform".into(), serde_json::json!([0])))),
				unsupported,
			),
			(
				"modules_to_save",
				with(&|c| drop(c.insert("modules_to_save".into(), serde_json::json!(["lm_head"])))),
				unsupported,
			),
			("not an object", serde_json::json!([1, 2]), invalid),
		];
		for (what, config, check) in config_cases {
			cases.push((what, write_raw(&dir(), &config, &as_refs(&q)), check));
		}
		let d = write_raw(&dir(), &q_cfg, &as_refs(&q));
		fs::write(d.join(ADAPTER_CONFIG_FILE), b"{\"r\": 2,").unwrap();
		cases.push(("config not JSON", d, invalid));
		let d = write_raw(&dir(), &q_cfg, &as_refs(&q));
		fs::write(d.join(ADAPTER_CONFIG_FILE), vec![b' '; 70 << 10]).unwrap();
		cases.push(("config over 64 KiB", d, too_large));

		// Missing files; a pickle-only adapter.
		let d = write_raw(&dir(), &q_cfg, &as_refs(&q));
		fs::remove_file(d.join(ADAPTER_CONFIG_FILE)).unwrap();
		cases.push(("no config", d, not_found));
		let d = write_raw(&dir(), &q_cfg, &as_refs(&q));
		fs::rename(d.join(ADAPTER_WEIGHTS_FILE), d.join("adapter_model.bin")).unwrap();
		cases.push(("pickle only", d, unsupported));

		let mut seen = HashMap::new();
		for (what, dir, check) in &cases {
			let err = load(dir).expect_err(what);
			assert!(check(&err), "{what}: wrong error {err:?}");
			let msg = err.to_string();
			assert!(!msg.contains('\n'), "{what}: multi-line message {msg:?}");
			*seen.entry(std::mem::discriminant(&err)).or_insert(0) += 1;
		}
		assert_eq!(seen.len(), 4, "the corpus covers Invalid, Unsupported, TooLarge and NotFound");
	}

	#[test]
	fn file_and_resident_size_limits() {
		let tmp = tempfile::tempdir().unwrap();
		let cfg = tiny_config(false);
		let info = write_random_adapter(tmp.path(), &cfg, 4, 4.0, &Projection::ALL, 1, false, false).unwrap();
		let tight = AdapterLimits { max_adapter_bytes: info.file_bytes as usize - 1, ..limits() };
		let err = load_adapter(tmp.path(), &cfg, &tight, &Device::Cpu).unwrap_err();
		assert!(matches!(err, AdapterError::TooLarge(_)), "{err:?}");
		let tight = AdapterLimits { max_rank: 3, ..limits() };
		assert!(matches!(load_adapter(tmp.path(), &cfg, &tight, &Device::Cpu), Err(AdapterError::TooLarge(_))));
		assert_eq!(inspect(tmp.path()).unwrap(), info, "inspect reports, it does not apply serving limits");
	}

	#[test]
	fn inspect_without_base() {
		let tmp = tempfile::tempdir().unwrap();
		let cfg = tiny_config(false);
		let written =
			write_random_adapter(tmp.path(), &cfg, 2, 4.0, &[Projection::V, Projection::Q], 5, true, false).unwrap();
		let info = inspect(tmp.path()).unwrap();
		assert_eq!(info, written);
		assert_eq!(info.targets, [Projection::Q, Projection::V]);
		assert_eq!((info.rank, info.alpha, info.scale, info.tensors, info.layers), (2, 4.0, 2.0, 8, 2));
		assert_eq!(info.hash.len(), 64);
		let json = serde_json::to_value(&info).unwrap();
		assert_eq!(json["targets"], serde_json::json!(["q_proj", "v_proj"]));
		// Against a base with one layer, layer 1 is out of range; without a base it is fine.
		let small = LlamaConfig { num_layers: 1, ..cfg };
		assert!(matches!(inspect_with_base(tmp.path(), &small, &limits()), Err(AdapterError::Invalid(_))));
	}

	#[test]
	fn target_module_forms() {
		let parse = |v: Value| parse_targets(Some(&v));
		assert_eq!(parse(serde_json::json!("q_proj")).unwrap(), [Projection::Q]);
		assert_eq!(parse(serde_json::json!("all-linear")).unwrap(), Projection::ALL);
		assert_eq!(
			parse(serde_json::json!(["model.layers.0.mlp.down_proj", "v_proj", "v_proj"])).unwrap(),
			[Projection::V, Projection::Down]
		);
		assert!(matches!(parse(serde_json::json!([1])), Err(AdapterError::Invalid(_))));
	}
}
