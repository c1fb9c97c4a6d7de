//! The OpenLedger runtime one spec version higher, for the runtime-upgrade end-to-end test
//! (`scripts/e2e/upgrade.test.mjs`). Its wasm build re-exports the runtime built with the
//! `upgrade-test` feature; natively it is empty.
#![no_std]

#[cfg(target_arch = "wasm32")]
pub use openledger_runtime::*;
