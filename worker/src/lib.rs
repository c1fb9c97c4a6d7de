//! OpenLedger inference worker: one base model, many LoRA adapters loaded on demand (OpenLoRA),
//! continuous batching across adapters, and an OpenAI-compatible HTTP API.

pub mod adapters;
pub mod api;
pub mod base;
pub mod engine;
pub mod metrics;
pub mod model;
pub mod testing;
pub mod tokenizer;
