//! The base model: a Llama decoder over quantized (GGUF) or float (safetensors) weights, with
//! LoRA deltas applied unmerged per row group, so one set of base weights serves any adapter.

pub mod config;
mod decode_attention;
mod dense;
mod kernels;
pub mod kv_pool;
pub mod llama;
pub mod lora;
#[cfg(feature = "cuda")]
mod lora_cuda;
mod lora_host;
mod paged_attention;
pub mod quant;
pub mod rope;

pub use config::{Architecture, LlamaConfig};
pub use kv_pool::{KvCache, KvPool, KvPoolFull};
pub use decode_attention::rope_in_place;
pub use llama::{FrozenLayer, Llama, SeqStep};
pub use lora::{LoraAdapter, LoraWeights, Projection};
pub use lora_host::HostAdapter;

/// Fixes candle's CPU thread count for the process. candle asks for it on every float matmul and,
/// unless `RAYON_NUM_THREADS` is set, counts physical cores by reading /proc/cpuinfo each time:
/// half the cost of attention's matmuls in a decode step. Call at the start of `main`, before any
/// other thread exists, since it sets that environment variable.
pub fn pin_cpu_threads() {
	if std::env::var_os("RAYON_NUM_THREADS").is_none() {
		std::env::set_var("RAYON_NUM_THREADS", candle_core::utils::get_num_threads().to_string());
	}
}
