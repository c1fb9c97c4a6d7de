//! OpenLedger inference worker: one base model, many LoRA adapters loaded on demand (OpenLoRA),
//! continuous batching across adapters, and an OpenAI-compatible HTTP API.

pub mod adapters;
pub mod api;
pub mod attribution;
pub mod base;
pub mod datanets;
pub mod engine;
pub mod knowledge;
pub mod ledger;
pub mod metrics;
pub mod model;
pub mod templates;
pub mod testing;
pub mod tokenizer;
