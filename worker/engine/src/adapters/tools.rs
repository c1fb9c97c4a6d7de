//! Test and benchmark helpers: deterministic random adapters in PEFT's on-disk format.

use std::{
	borrow::Cow,
	collections::BTreeSet,
	fs,
	io::Write,
	path::{Path, PathBuf},
	sync::atomic::{AtomicU64, AtomicUsize, Ordering},
	time::Instant,
};

use anyhow::{ensure, Context, Result};
use rand::{rngs::StdRng, Rng, SeedableRng};
use safetensors::tensor::{Dtype, View};

use super::{inspect_with_base, AdapterInfo, AdapterLimits, FloatDtype, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
use crate::model::{LlamaConfig, Projection};

/// A tensor's bytes as the `safetensors` writer wants them.
struct RawTensor {
	dtype: Dtype,
	shape: Vec<usize>,
	bytes: Vec<u8>,
}

impl View for &RawTensor {
	fn dtype(&self) -> Dtype {
		self.dtype
	}
	fn shape(&self) -> &[usize] {
		&self.shape
	}
	fn data(&self) -> Cow<'_, [u8]> {
		Cow::Borrowed(&self.bytes)
	}
	fn data_len(&self) -> usize {
		self.bytes.len()
	}
}

/// `n` values uniform in ±`bound`, drawn as f32 and stored as `dtype`.
fn random(rng: &mut StdRng, n: usize, bound: f32, dtype: FloatDtype) -> Vec<u8> {
	(0..n).flat_map(|_| encode(rng.random_range(-bound..bound), dtype)).collect()
}

fn encode(value: f32, dtype: FloatDtype) -> Vec<u8> {
	match dtype {
		FloatDtype::F32 => value.to_le_bytes().to_vec(),
		FloatDtype::F16 => half::f16::from_f32(value).to_le_bytes().to_vec(),
		FloatDtype::BF16 => half::bf16::from_f32(value).to_le_bytes().to_vec(),
	}
}

/// [`write_random_adapter_as`] with f32 weights.
#[allow(clippy::too_many_arguments)]
pub fn write_random_adapter(
	dir: &Path,
	config: &LlamaConfig,
	rank: usize,
	alpha: f64,
	targets: &[Projection],
	seed: u64,
	zero_b: bool,
	use_rslora: bool,
) -> Result<AdapterInfo> {
	write_random_adapter_as(FloatDtype::F32, dir, config, rank, alpha, targets, seed, zero_b, use_rslora)
}

/// Writes a PEFT LoRA adapter for `config` into `dir` (created if missing), its weights stored
/// as `dtype`: every layer, each of `targets`, `A ~ U(±1/sqrt(in))`, `B ~ U(±0.05)` or zero (a
/// zero `B` makes the adapter a no-op, which tests use to compare against the base). The same
/// arguments give byte-identical files, hence the same hash. Files are written to a temporary
/// name and renamed into place.
#[allow(clippy::too_many_arguments)]
pub fn write_random_adapter_as(
	dtype: FloatDtype,
	dir: &Path,
	config: &LlamaConfig,
	rank: usize,
	alpha: f64,
	targets: &[Projection],
	seed: u64,
	zero_b: bool,
	use_rslora: bool,
) -> Result<AdapterInfo> {
	ensure!(rank > 0, "rank must be positive");
	ensure!(alpha.is_finite(), "lora_alpha must be finite");
	let targets: BTreeSet<Projection> = targets.iter().copied().collect();
	ensure!(!targets.is_empty(), "no target modules");
	fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;

	let safetensors_dtype = match dtype {
		FloatDtype::F32 => Dtype::F32,
		FloatDtype::F16 => Dtype::F16,
		FloatDtype::BF16 => Dtype::BF16,
	};
	let tensor = |shape: Vec<usize>, bytes: Vec<u8>| RawTensor { dtype: safetensors_dtype, shape, bytes };
	let mut rng = StdRng::seed_from_u64(seed);
	let mut tensors = Vec::with_capacity(config.num_layers * targets.len() * 2);
	for layer in 0..config.num_layers {
		for &projection in &targets {
			let (in_f, out_f) = config.projection_dims(projection);
			let prefix = format!("base_model.model.model.layers.{layer}.{}", projection.module_path());
			let a = random(&mut rng, rank * in_f, 1.0 / (in_f as f32).sqrt(), dtype);
			let b = if zero_b { vec![0u8; out_f * rank * dtype.size()] } else { random(&mut rng, out_f * rank, 0.05, dtype) };
			tensors.push((format!("{prefix}.lora_A.weight"), tensor(vec![rank, in_f], a)));
			tensors.push((format!("{prefix}.lora_B.weight"), tensor(vec![out_f, rank], b)));
		}
	}
	let weights_tmp = temp_path(dir, ADAPTER_WEIGHTS_FILE);
	safetensors::serialize_to_file(tensors.iter().map(|(name, t)| (name.as_str(), t)), None, &weights_tmp)
		.with_context(|| format!("writing {}", weights_tmp.display()))?;
	rename(&weights_tmp, &dir.join(ADAPTER_WEIGHTS_FILE))?;

	let adapter_config = serde_json::json!({
		"peft_type": "LORA",
		"task_type": "CAUSAL_LM",
		"base_model_name_or_path": format!("random-llama-{}x{}", config.num_layers, config.hidden_size),
		"r": rank,
		"lora_alpha": alpha,
		"use_rslora": use_rslora,
		"lora_dropout": 0.0,
		"target_modules": targets.iter().map(|p| p.peft_name()).collect::<Vec<_>>(),
		"bias": "none",
		"fan_in_fan_out": false,
		"use_dora": false,
		"inference_mode": true,
	});
	let config_tmp = temp_path(dir, ADAPTER_CONFIG_FILE);
	let mut file = fs::File::create(&config_tmp).with_context(|| format!("creating {}", config_tmp.display()))?;
	file.write_all(serde_json::to_string_pretty(&adapter_config)?.as_bytes())?;
	file.sync_all()?;
	drop(file);
	rename(&config_tmp, &dir.join(ADAPTER_CONFIG_FILE))?;

	let no_limits = AdapterLimits { max_rank: usize::MAX, max_adapter_bytes: usize::MAX, ..Default::default() };
	Ok(inspect_with_base(dir, config, &no_limits)?)
}

fn temp_path(dir: &Path, file: &str) -> PathBuf {
	static COUNTER: AtomicU64 = AtomicU64::new(0);
	let n = COUNTER.fetch_add(1, Ordering::Relaxed);
	dir.join(format!(".{file}.tmp-{}-{n}", std::process::id()))
}

fn rename(from: &Path, to: &Path) -> Result<()> {
	fs::rename(from, to).with_context(|| format!("renaming {} to {}", from.display(), to.display()))
}

#[cfg(test)]
mod tests {
	use super::*;
	use crate::adapters::{inspect, test_util::tiny_config};

	#[test]
	fn same_seed_same_bytes_same_hash() {
		let tmp = tempfile::tempdir().unwrap();
		let cfg = tiny_config(false);
		let write = |name: &str, seed| {
			write_random_adapter(&tmp.path().join(name), &cfg, 4, 8.0, &Projection::ALL, seed, false, false).unwrap()
		};
		let a = write("a", 42);
		let b = write("b", 42);
		let c = write("c", 43);
		assert_eq!(a.hash, b.hash);
		assert_ne!(a.hash, c.hash);
		assert_eq!(
			fs::read(tmp.path().join("a").join(ADAPTER_WEIGHTS_FILE)).unwrap(),
			fs::read(tmp.path().join("b").join(ADAPTER_WEIGHTS_FILE)).unwrap()
		);
		assert_eq!(a, inspect(&tmp.path().join("a")).unwrap());
		assert_eq!((a.tensors, a.layers, a.rank), (2 * 7 * cfg.num_layers, cfg.num_layers, 4));
		// Rewriting in place gives the same file, and leaves no temporary files behind.
		assert_eq!(write("a", 42).hash, a.hash);
		let names: Vec<_> = fs::read_dir(tmp.path().join("a")).unwrap().map(|e| e.unwrap().file_name()).collect();
		assert_eq!(names.len(), 2, "{names:?}");
	}

	#[test]
	fn zero_b_is_zero() {
		let tmp = tempfile::tempdir().unwrap();
		let cfg = tiny_config(false);
		write_random_adapter(tmp.path(), &cfg, 2, 4.0, &[Projection::Down], 1, true, true).unwrap();
		let bytes = fs::read(tmp.path().join(ADAPTER_WEIGHTS_FILE)).unwrap();
		let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
		let b = st.tensor("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight").unwrap();
		assert_eq!(b.shape(), [cfg.hidden_size, 2]);
		assert!(b.data().iter().all(|&x| x == 0));
		let a = st.tensor("base_model.model.model.layers.1.mlp.down_proj.lora_A.weight").unwrap();
		assert_eq!(a.shape(), [2, cfg.intermediate_size]);
		assert!(a.data().iter().any(|&x| x != 0));
	}
}

/// The name benchmarks give their `i`-th generated adapter.
pub fn bench_adapter_name(i: usize) -> String {
	format!("a{i:04}")
}

/// Writes adapters `0..count` of `rank` (all seven projections; named by [`bench_adapter_name`], seeded from `seed_base`) into `dir`, skipping those
/// already there (same seed, same bytes), on two threads. Returns the weights file size.
pub fn ensure_random_adapters(
	dir: &Path,
	config: &LlamaConfig,
	dtype: FloatDtype,
	rank: usize,
	count: usize,
	seed_base: u64,
) -> Result<u64> {
	std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
	let missing: Vec<usize> =
		(0..count).filter(|&i| !dir.join(bench_adapter_name(i)).join(ADAPTER_CONFIG_FILE).is_file()).collect();
	if !missing.is_empty() {
		let started = Instant::now();
		eprintln!("  writing {} adapters (rank {rank}, all projections) into {}", missing.len(), dir.display());
		let next = AtomicUsize::new(0);
		let done = AtomicUsize::new(0);
		let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(4);
		std::thread::scope(|s| -> Result<()> {
			let workers: Vec<_> = (0..threads)
				.map(|_| {
					s.spawn(|| -> Result<()> {
						loop {
							let k = next.fetch_add(1, Ordering::Relaxed);
							let Some(&i) = missing.get(k) else { return Ok(()) };
							// alpha = rank: scale 1, so each adapter's delta is of the same size.
							write_random_adapter_as(
								dtype,
								&dir.join(bench_adapter_name(i)),
								config,
								rank,
								rank as f64,
								&Projection::ALL,
								seed_base + i as u64,
								false,
								false,
							)?;
							let n = done.fetch_add(1, Ordering::Relaxed) + 1;
							if n % 100 == 0 || n == missing.len() {
								eprintln!("    {n}/{} written ({:.0} s)", missing.len(), started.elapsed().as_secs_f64());
							}
						}
					})
				})
				.collect();
			for w in workers {
				w.join().expect("adapter writer panicked")?;
			}
			Ok(())
		})?;
	}
	Ok(std::fs::metadata(dir.join(bench_adapter_name(0)).join(ADAPTER_WEIGHTS_FILE))?.len())
}
