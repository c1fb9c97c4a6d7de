//! With the `cuda` feature, compiles the worker's own CUDA kernels (kernels/*.cu) to PTX with
//! nvcc, for the architecture in `CUDA_COMPUTE_CAP` (default 90: H100, H200). The PTX is embedded
//! in the binary and loaded by the driver at first use. Without the feature this does nothing.

use std::{env, path::PathBuf, process::Command};

const KERNELS: [&str; 2] = ["lora", "paged_attention"];

fn main() {
	println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
	if env::var_os("CARGO_FEATURE_CUDA").is_none() {
		return;
	}
	let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
	let cap = env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
	let nvcc = env::var("CUDA_ROOT").map(|root| format!("{root}/bin/nvcc")).unwrap_or_else(|_| "nvcc".into());
	for kernel in KERNELS {
		let source = format!("kernels/{kernel}.cu");
		println!("cargo:rerun-if-changed={source}");
		let mut command = Command::new(&nvcc);
		command.args(["--ptx", "-O3", &format!("-arch=sm_{cap}"), &source, "-o"]).arg(out.join(format!("{kernel}.ptx")));
		if let Ok(root) = env::var("CUDA_ROOT") {
			command.arg(format!("-I{root}/include"));
		}
		let status = command.status().unwrap_or_else(|e| panic!("running {nvcc} (scripts/build-cuda.sh sets it up): {e}"));
		assert!(status.success(), "nvcc failed on {source}");
	}
}
