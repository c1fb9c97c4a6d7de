//! The base model: a Llama decoder over quantized (GGUF) or float (safetensors) weights, with
//! LoRA deltas applied unmerged per row group, so one set of base weights serves any adapter.

pub mod config;
pub mod llama;
pub mod lora;

pub use config::LlamaConfig;
pub use llama::{KvCache, Llama, SeqStep};
pub use lora::{LoraAdapter, LoraWeights, Projection};
