//! The worker's own CUDA kernels (kernels/*.cu).
//!
//! With the `cuda` feature, compiles them to PTX with nvcc, for the architecture in
//! `CUDA_COMPUTE_CAP` (default 90: H100, H200). The PTX is embedded in the binary and loaded by
//! the driver at first use.
//!
//! Without it, compiles the same source for the CPU under a small emulator of the CUDA execution
//! model (kernels/emulator/), which only the tests call: CI has no GPU, and this is how its test
//! suite runs the kernels' logic.

use std::{env, path::PathBuf, process::Command};

const KERNELS: [&str; 2] = ["lora", "paged_attention"];

fn main() {
	println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
	for kernel in KERNELS {
		println!("cargo:rerun-if-changed=kernels/{kernel}.cu");
	}
	if env::var_os("CARGO_FEATURE_CUDA").is_some() {
		compile_ptx();
	} else {
		compile_emulator();
	}
}

fn compile_ptx() {
	let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
	let cap = env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
	let nvcc = env::var("CUDA_ROOT").map(|root| format!("{root}/bin/nvcc")).unwrap_or_else(|_| "nvcc".into());
	for kernel in KERNELS {
		let source = format!("kernels/{kernel}.cu");
		let mut command = Command::new(&nvcc);
		command.args(["--ptx", "-O3", &format!("-arch=sm_{cap}"), &source, "-o"]).arg(out.join(format!("{kernel}.ptx")));
		if let Ok(root) = env::var("CUDA_ROOT") {
			command.arg(format!("-I{root}/include"));
		}
		let status = command.status().unwrap_or_else(|e| panic!("running {nvcc} (scripts/build-cuda.sh sets it up): {e}"));
		assert!(status.success(), "nvcc failed on {source}");
	}
}

fn compile_emulator() {
	for file in ["emulator.cpp", "cuda_emulator.h", "cuda_fp16.h", "cuda_bf16.h"] {
		println!("cargo:rerun-if-changed=kernels/emulator/{file}");
	}
	cc::Build::new()
		.cpp(true)
		.std("c++20")
		.opt_level(2)
		.include("kernels/emulator")
		.file("kernels/emulator/emulator.cpp")
		// The kernels are written for nvcc, which neither knows these warnings nor unrolls for g++.
		.flag_if_supported("-Wno-unknown-pragmas")
		.flag_if_supported("-Wno-sign-compare")
		.compile("openledger_kernel_emulator");
}
