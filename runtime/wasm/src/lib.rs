//! The OpenLedger runtime as the wasm blob a node runs. Built for wasm, this crate is the runtime
//! (it re-exports it, and the wasm builder makes a blob of it); built natively, it holds that blob
//! as `WASM_BINARY`.
#![cfg_attr(not(feature = "std"), no_std)]

#[cfg(target_arch = "wasm32")]
pub use openledger_runtime::*;

#[cfg(feature = "std")]
include!(concat!(env!("OUT_DIR"), "/wasm_binary.rs"));
