//! OpenLoRA on a device (the GPU benchmark; it runs on the CPU too, for a smoke run): a float
//! Llama in a real model's shapes with random weights (speed does not depend on the values),
//! `--sequences` requests decoding together, and prints a Markdown table `metric | value | goal |
//! met?`:
//! - aggregate decode tokens/s with every request on its own adapter, all on one adapter, and on
//!   the base (the step loop of the engine: one ragged forward per step, greedy picks on the host);
//! - with `--baseline FILE` (written by scripts/bench/peft_baseline.py on the same workload), the
//!   same against HF transformers + PEFT;
//! - adapter load latency onto the device, from disk (the page cache) and from the host tier,
//!   against the host-to-device copy floor for its bytes (pageable, and pinned: PCIe's);
//! - adapters resident in a `--budget-mib` budget.
//!
//! ```sh
//! cargo run --release -p openledger-worker --example bench_gpu -- --model tiny   # CPU smoke run
//! bench_gpu --device cuda --model llama-1b --prepare-only   # model, adapters, workload.json
//! python3 scripts/bench/peft_baseline.py WORK/llama-1b/workload.json > baseline.json
//! bench_gpu --device cuda --model llama-1b --baseline baseline.json
//! ```

use std::{
	path::PathBuf,
	time::Instant,
};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Parser;
use openledger_engine::{
	adapters::{bench_adapter_name, ensure_random_adapters, load_adapter, AdapterLimits, FloatDtype, ADAPTER_WEIGHTS_FILE},
	base::parse_device,
	model::{kv_pool, lora::BATCHED_MAX_RANK, Architecture, HostAdapter, Llama, LoraAdapter, SeqStep},
	testing::{write_tiny_llama, TinyLlamaSpec},
};
use rand::{rngs::StdRng, Rng, SeedableRng};

#[derive(Parser, Debug)]
#[command(about = "OpenLedger worker benchmark: multi-adapter decode on a device")]
struct Args {
	/// `cpu`, `cuda` or `cuda:N` (a build with the `cuda` feature).
	#[arg(long, default_value = "cpu")]
	device: String,
	/// The shapes: `smollm2-135m`, `llama-1b` (TinyLlama-1.1B's) or `tiny` (a smoke run).
	#[arg(long, default_value = "smollm2-135m")]
	model: String,
	/// Requests decoding together.
	#[arg(long, default_value_t = 64)]
	sequences: usize,
	#[arg(long, default_value_t = 64)]
	prompt_tokens: usize,
	/// Decode steps timed per run.
	#[arg(long, default_value_t = 64)]
	new_tokens: usize,
	/// LoRA rank (all seven projections).
	#[arg(long, default_value_t = 16)]
	rank: usize,
	#[arg(long, value_enum, default_value = "bf16")]
	adapter_dtype: FloatDtype,
	/// Timed runs of each mode (median reported).
	#[arg(long, default_value_t = 3)]
	runs: usize,
	/// Device memory for resident adapters, in MiB.
	#[arg(long, default_value_t = 4096)]
	budget_mib: usize,
	/// Where models, adapters and the workload go (kept for the next run).
	#[arg(long, default_value = "/var/tmp/openledger-bench")]
	bench_dir: PathBuf,
	/// Write the model, the adapters and workload.json (for the Python baseline), then stop.
	#[arg(long)]
	prepare_only: bool,
	/// The baseline's results (JSON from scripts/bench/peft_baseline.py) to compare against.
	#[arg(long)]
	baseline: Option<PathBuf>,
}

fn spec(name: &str) -> Result<TinyLlamaSpec> {
	Ok(match name {
		"smollm2-135m" => TinyLlamaSpec {
			architecture: Architecture::Llama,
			vocab_size: 49_152,
			hidden_size: 576,
			intermediate_size: 1536,
			num_layers: 30,
			num_heads: 9,
			num_kv_heads: 3,
			max_position: 8192,
		},
		"llama-1b" => TinyLlamaSpec {
			architecture: Architecture::Llama,
			vocab_size: 32_000,
			hidden_size: 2048,
			intermediate_size: 5632,
			num_layers: 22,
			num_heads: 32,
			num_kv_heads: 4,
			max_position: 2048,
		},
		"tiny" => TinyLlamaSpec { max_position: 1024, ..TinyLlamaSpec::default() },
		other => bail!("unknown --model `{other}`: smollm2-135m, llama-1b or tiny"),
	})
}

/// What both this benchmark and the Python baseline run.
#[derive(serde::Serialize)]
struct Workload {
	model_dir: PathBuf,
	adapter_dirs: Vec<PathBuf>,
	prompts: Vec<Vec<u32>>,
	new_tokens: usize,
	runs: usize,
}

#[derive(serde::Deserialize)]
struct Baseline {
	/// e.g. "transformers 4.57 + peft 0.17, float32, cuda".
	name: String,
	distinct_tokens_per_s: f64,
	one_adapter_tokens_per_s: f64,
	/// Each request's first greedy tokens on its own adapter, in workload order, up to its first
	/// end-of-sequence token.
	distinct_first_tokens: Vec<Vec<u32>>,
}

/// A mode's median decode rate and, from its first run, each request's greedy tokens (the
/// prefill's pick, then one per decode step) in workload order.
struct Decoded {
	tokens_per_s: f64,
	tokens: Vec<Vec<u32>>,
}

fn main() -> Result<()> {
	let args = Args::parse();
	if args.rank > BATCHED_MAX_RANK || args.sequences == 0 || args.new_tokens == 0 || args.runs == 0 {
		bail!("--rank must be 1..={BATCHED_MAX_RANK}; --sequences, --new-tokens and --runs positive");
	}
	let spec = spec(&args.model)?;
	let work = args.bench_dir.join(format!("gpu-{}", args.model));
	let model_dir = work.join("model");
	if !model_dir.join("config.json").is_file() {
		eprintln!("writing the random {} model into {} ...", args.model, model_dir.display());
		write_tiny_llama(&model_dir, &spec, 1)?;
	}
	let config = openledger_engine::model::LlamaConfig::from_hf_json(&std::fs::read_to_string(model_dir.join("config.json"))?)?;
	let adapters_dir = work.join(format!("adapters-r{}-{:?}", args.rank, args.adapter_dtype));
	let file_bytes = ensure_random_adapters(&adapters_dir, &config, args.adapter_dtype, args.rank, args.sequences, 7)?;
	let mut rng = StdRng::seed_from_u64(11);
	let prompts: Vec<Vec<u32>> = (0..args.sequences)
		.map(|_| (0..args.prompt_tokens).map(|_| rng.random_range(3..config.vocab_size as u32)).collect())
		.collect();
	let workload = Workload {
		model_dir: model_dir.clone(),
		adapter_dirs: (0..args.sequences).map(|i| adapters_dir.join(bench_adapter_name(i))).collect(),
		prompts,
		new_tokens: args.new_tokens,
		runs: args.runs,
	};
	let workload_path = work.join("workload.json");
	std::fs::write(&workload_path, serde_json::to_string(&workload)?)?;
	if args.prepare_only {
		println!("{}", workload_path.display());
		return Ok(());
	}

	let device = parse_device(&args.device)?;
	let started = Instant::now();
	let model = Llama::from_hf_dir(&model_dir, &device, |done, total| eprint!("\rloading layers {done}/{total} "))?;
	eprintln!("\rmodel loaded in {:.1} s", started.elapsed().as_secs_f64());

	let limits = AdapterLimits { max_rank: BATCHED_MAX_RANK, ..AdapterLimits::default() };
	let mut load_seconds = Vec::new();
	let mut adapters: Vec<LoraAdapter> = Vec::new();
	for dir in &workload.adapter_dirs {
		// The first read warms the page cache; the timed load is from memory to the device.
		std::fs::read(dir.join(ADAPTER_WEIGHTS_FILE))?;
		let started = Instant::now();
		let adapter = load_adapter(dir, &config, &limits, &device)?;
		synchronize(&device)?;
		load_seconds.push(started.elapsed().as_secs_f64());
		adapters.push(adapter);
	}
	let resident_bytes = adapters[0].resident_bytes;
	// The host tier's copy: packed (pinned on a GPU) once, then copied onto the device each load.
	let on_host = HostAdapter::pack(&load_adapter(&workload.adapter_dirs[0], &config, &limits, &Device::Cpu)?, &device)?;
	let mut host_tier_seconds: Vec<f64> = (0..16)
		.map(|_| {
			let started = Instant::now();
			let adapter = on_host.to_device(&device)?;
			synchronize(&device)?;
			let elapsed = started.elapsed().as_secs_f64();
			drop(adapter);
			Ok(elapsed)
		})
		.collect::<Result<_>>()?;
	host_tier_seconds.sort_by(f64::total_cmp);
	let copy_floor = host_to_device_seconds(&device, resident_bytes)?;

	let mut rows: Vec<(String, String, String)> = Vec::new();
	let mut decode = |label: &str, pick: &dyn Fn(usize) -> Option<usize>| -> Result<Decoded> {
		let chosen: Vec<Option<&LoraAdapter>> = (0..args.sequences).map(|i| pick(i).map(|a| &adapters[a])).collect();
		let mut tokens = Vec::new();
		let mut results = Vec::new();
		for _ in 0..args.runs {
			let (rate, run_tokens) = decode_run(&model, &workload, &chosen)?;
			results.push(rate);
			if tokens.is_empty() {
				tokens = run_tokens;
			}
		}
		results.sort_by(f64::total_cmp);
		let median = results[results.len() / 2];
		eprintln!("  {label}: {median:.0} tok/s (runs {results:.0?})");
		rows.push((format!("{} requests, {label}: aggregate decode", args.sequences), format!("{median:.0} tok/s"), String::new()));
		Ok(Decoded { tokens_per_s: median, tokens })
	};
	let distinct_run = decode("each on its own adapter", &|i| Some(i))?;
	let (distinct, one, base) =
		(distinct_run.tokens_per_s, decode("all on one adapter", &|_| Some(0))?.tokens_per_s, decode("on the base", &|_| None)?.tokens_per_s);
	let ratio = distinct / one;
	rows.push((format!("{0} distinct / {0} on one adapter", args.sequences), format!("{ratio:.2}×"), goal(ratio, 0.9)));
	rows.push((format!("{0} on one adapter / {0} on the base", args.sequences), format!("{:.2}×", one / base), String::new()));
	if let Some(path) = &args.baseline {
		let baseline: Baseline = serde_json::from_str(&std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?)?;
		let ratio = distinct / baseline.distinct_tokens_per_s;
		rows.push((format!("{}, {} distinct adapters", baseline.name, args.sequences), format!("{:.0} tok/s", baseline.distinct_tokens_per_s), String::new()));
		rows.push((format!("{}, all on one adapter", baseline.name), format!("{:.0} tok/s", baseline.one_adapter_tokens_per_s), String::new()));
		rows.push(("distinct adapters: this worker / the baseline".into(), format!("{ratio:.1}×"), goal(ratio, 10.0)));
		let (agreeing, checked) = agreement(&distinct_run.tokens, &baseline.distinct_first_tokens)?;
		rows.push((
			format!("requests whose first {checked} greedy tokens (to an end of sequence) match the baseline's, each on its own adapter"),
			format!("{agreeing}/{}", args.sequences),
			String::new(),
		));
	}
	load_seconds.sort_by(f64::total_cmp);
	let load = load_seconds[load_seconds.len() / 2];
	rows.push((
		format!("adapter load onto the device ({:.1} MiB resident, rank {}, {:?}; median of {})", resident_bytes as f64 / 1048576.0, args.rank, args.adapter_dtype, load_seconds.len()),
		format!("{:.2} ms", load * 1e3),
		String::new(),
	));
	let host_tier = host_tier_seconds[host_tier_seconds.len() / 2];
	rows.push((
		format!("adapter load from the host tier ({}; median of {})", if on_host.is_pinned() { "pinned" } else { "pageable" }, host_tier_seconds.len()),
		format!("{:.2} ms", host_tier * 1e3),
		String::new(),
	));
	if let Some(floor) = copy_floor {
		rows.push(("host-to-device copy of the same bytes, pageable memory (best of 5)".into(), format!("{:.2} ms", floor.pageable * 1e3), String::new()));
		if let Some(pinned) = floor.pinned {
			rows.push(("host-to-device copy of the same bytes, pinned memory: the PCIe floor (best of 5)".into(), format!("{:.2} ms", pinned * 1e3), String::new()));
			rows.push(("load from the host tier / PCIe floor".into(), format!("{:.1}×", host_tier / pinned), String::new()));
		}
	}
	let fit = (args.budget_mib << 20) / resident_bytes.max(1);
	rows.push((format!("adapters resident in {} MiB (rank {}, all projections)", args.budget_mib, args.rank), fit.to_string(), String::new()));

	println!("Device: {}. Model: random float {} ({} layers, hidden {}), f32 compute; adapters rank {} {:?} ({:.1} MiB files); {} prompt tokens, {} decode steps, median of {}.", describe(&device), args.model, config.num_layers, config.hidden_size, args.rank, args.adapter_dtype, file_bytes as f64 / 1048576.0, args.prompt_tokens, args.new_tokens, args.runs);
	println!("| metric | value | goal | met? |\n|---|---:|---|---|");
	for (metric, value, goal) in rows {
		let (goal, met) = goal.split_once('|').map_or(("—", ""), |(g, m)| (g, m));
		println!("| {metric} | {value} | {goal} | {met} |");
	}
	Ok(())
}

/// How many requests generated the baseline's first tokens (each baseline list ends at its
/// first end of sequence, so it may be shorter), and the most tokens compared per request.
fn agreement(ours: &[Vec<u32>], baseline: &[Vec<u32>]) -> Result<(usize, usize)> {
	if baseline.len() != ours.len() || baseline.iter().any(Vec::is_empty) {
		bail!("the baseline has tokens for {} of {} requests, or an empty list", baseline.len(), ours.len());
	}
	let agreeing = ours.iter().zip(baseline).filter(|(a, b)| a.len() >= b.len() && a[..b.len()] == b[..]).count();
	Ok((agreeing, baseline.iter().map(Vec::len).max().unwrap_or(0)))
}

/// `"≥ G×|yes"` or `"≥ G×|no"`.
fn goal(value: f64, at_least: f64) -> String {
	format!("≥ {at_least}×|{}", if value >= at_least { "yes" } else { "no" })
}

fn describe(device: &Device) -> String {
	match device {
		Device::Cpu => format!("CPU, {} threads", candle_core::utils::get_num_threads()),
		_ => format!("{device:?}"),
	}
}

/// Waits for the device's queued work (a tiny copy back to the host does).
fn synchronize(device: &Device) -> Result<()> {
	Tensor::zeros(1, DType::F32, device)?.to_vec1::<f32>()?;
	Ok(())
}

/// Seconds to copy some bytes from host memory to the device.
struct CopyFloor {
	pageable: f64,
	/// From page-locked memory, as the host tier holds adapters (CUDA only).
	pinned: Option<f64>,
}

/// Best of five copies of `bytes` to the device from pageable and from pinned host memory;
/// `None` on the CPU.
fn host_to_device_seconds(device: &Device, bytes: usize) -> Result<Option<CopyFloor>> {
	fn best_of_five(mut copy: impl FnMut() -> Result<()>) -> Result<f64> {
		let mut best = f64::INFINITY;
		for _ in 0..5 {
			let started = Instant::now();
			copy()?;
			best = best.min(started.elapsed().as_secs_f64());
		}
		Ok(best)
	}
	if device.is_cpu() {
		return Ok(None);
	}
	let host = Tensor::zeros(bytes / 4, DType::F32, &Device::Cpu)?;
	let pageable = best_of_five(|| {
		let _copy = host.to_device(device)?;
		synchronize(device)
	})?;
	#[cfg(feature = "cuda")]
	let pinned = match device {
		Device::Cuda(cuda) => {
			let stream = cuda.cuda_stream();
			// Safety: the bytes are only copied, never read as values.
			let source = unsafe { stream.context().alloc_pinned::<u8>(bytes) }?;
			let mut target = stream.alloc_zeros::<u8>(bytes)?;
			Some(best_of_five(|| {
				stream.memcpy_htod(&source, &mut target)?;
				Ok(stream.synchronize()?)
			})?)
		},
		_ => None,
	};
	#[cfg(not(feature = "cuda"))]
	let pinned = None;
	Ok(Some(CopyFloor { pageable, pinned }))
}

/// One timed run: every prompt prefilled in one step (untimed), then `new_tokens` decode steps
/// of all sequences together, greedy, timed. Returns decode tokens per second and each
/// request's picks in workload order.
fn decode_run(model: &Llama, workload: &Workload, adapters: &[Option<&LoraAdapter>]) -> Result<(f64, Vec<Vec<u32>>)> {
	let count = workload.prompts.len();
	// Sequences sharing an adapter side by side, as the engine orders them.
	let mut order: Vec<usize> = (0..count).collect();
	order.sort_by_key(|&i| adapters[i].map(|a| a.hash));
	let longest = workload.prompts.iter().map(Vec::len).max().unwrap_or(0) + workload.new_tokens;
	let pool = model.kv_pool(kv_pool::tokens_for(count, longest));
	let mut caches: Vec<_> = (0..count).map(|_| pool.cache()).collect();
	let mut inputs: Vec<Vec<u32>> = order.iter().map(|&i| workload.prompts[i].clone()).collect();
	let mut generated: Vec<Vec<u32>> = vec![Vec::with_capacity(workload.new_tokens + 1); count];
	let mut step = |inputs: &mut Vec<Vec<u32>>| -> Result<()> {
		let logits = {
			let mut steps: Vec<SeqStep<'_>> = caches
				.iter_mut()
				.zip(inputs.iter())
				.zip(&order)
				.map(|((cache, tokens), &i)| SeqStep { tokens, cache, adapter: adapters[i] })
				.collect();
			model.forward(&mut steps)?
		};
		let picks = logits.argmax(candle_core::D::Minus1)?.to_vec1::<u32>()?;
		for ((input, token), &i) in inputs.iter_mut().zip(picks).zip(&order) {
			*input = vec![token];
			generated[i].push(token);
		}
		Ok(())
	};
	step(&mut inputs)?;
	let started = Instant::now();
	for _ in 0..workload.new_tokens {
		step(&mut inputs)?;
	}
	let rate = (count * workload.new_tokens) as f64 / started.elapsed().as_secs_f64();
	Ok((rate, generated))
}
