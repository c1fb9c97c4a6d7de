//! Time of one base-model projection on the CPU, per kernel and batch size: the worker's kernels
//! against candle's `QMatMul` on the same quantized weights: SmolLM2-135M's shapes and formats
//! (Q4_1, Q8_0), a 1B Llama 3's in the Q4_K_M mix (Q4_K, Q6_K) and Q5_K, then SmolLM2's q/o
//! shape in the other formats of 32-element blocks.
//!
//! cargo run --release -p openledger-engine --example bench_kernels [FILTER]
//!
//! With FILTER, only the shapes whose name or format contains it.
//!
//! Prints a Markdown table: shape, rows of input, microseconds per call (median of many), the
//! ratio, and the weight bytes streamed per second by ours.

use std::time::Instant;

use candle_core::{
	quantized::{GgmlDType, QMatMul, QTensor},
	Device, Module, Tensor,
};
use openledger_engine::model::quant::QuantMatrix;

fn median_micros(mut f: impl FnMut()) -> f64 {
	for _ in 0..20 {
		f();
	}
	let mut times: Vec<f64> = (0..200)
		.map(|_| {
			let start = Instant::now();
			f();
			start.elapsed().as_secs_f64() * 1e6
		})
		.collect();
	times.sort_by(f64::total_cmp);
	times[times.len() / 2]
}

fn main() -> anyhow::Result<()> {
	openledger_engine::model::pin_cpu_threads();
	let shapes = [
		("q, o", GgmlDType::Q4_1, 576, 576),
		("k, v", GgmlDType::Q4_1, 192, 576),
		("gate, up", GgmlDType::Q4_1, 1536, 576),
		("down", GgmlDType::Q4_1, 576, 1536),
		("output head", GgmlDType::Q8_0, 49152, 576),
		// Llama 3.2 1B (hidden 2048, 8 KV heads of 64, FFN 8192) in Q4_K_M: Q4_K, with Q6_K for
		// some layers' v and down and for the output head (128256 rows there; a quarter here).
		("1B q, o", GgmlDType::Q4K, 2048, 2048),
		("1B v", GgmlDType::Q6K, 512, 2048),
		("1B gate, up", GgmlDType::Q4K, 8192, 2048),
		("1B down", GgmlDType::Q6K, 2048, 8192),
		("1B down, Q5_K_M", GgmlDType::Q5K, 2048, 8192),
		("1B output head / 4", GgmlDType::Q6K, 32064, 2048),
		// What a Q4_K_M or Q5_K_M file holds where a width is not a multiple of 256 (SmolLM2's
		// 576, Gemma 3 270M's 640), and the legacy Q4_0.
		("q, o", GgmlDType::Q4_0, 576, 576),
		("q, o", GgmlDType::Q5_0, 576, 576),
		("q, o", GgmlDType::Q5_1, 576, 576),
	];
	let filter = std::env::args().nth(1).unwrap_or_default();
	println!("| weights (out × in) | input rows | ours µs | candle µs | candle / ours | ours GB/s of weights |");
	println!("|---|---:|---:|---:|---:|---:|");
	for (name, dtype, rows, cols) in shapes {
		if !name.contains(&filter) && !format!("{dtype:?}").contains(&filter) {
			continue;
		}
		let w = Tensor::randn(0f32, 0.05, (rows, cols), &Device::Cpu)?;
		let q = QTensor::quantize(&w, dtype)?;
		let bytes = q.storage_size_in_bytes() as f64;
		let ours = QuantMatrix::from_qtensor(&q)?.expect("a CPU tensor of a format with a kernel");
		let candle = QMatMul::from_qtensor(q)?;
		for m in [1, 8, 64] {
			let x = Tensor::randn(0f32, 1.0, (m, cols), &Device::Cpu)?;
			let t_ours = median_micros(|| drop(ours.forward(&x).unwrap()));
			let t_candle = median_micros(|| drop(candle.forward(&x).unwrap()));
			println!(
				"| {name}, {dtype:?} ({rows} × {cols}) | {m} | {t_ours:.1} | {t_candle:.1} | {:.2}× | {:.1} |",
				t_candle / t_ours,
				bytes / t_ours / 1e3
			);
		}
	}
	Ok(())
}
