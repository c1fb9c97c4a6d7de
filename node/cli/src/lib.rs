//! The OpenLedger node as a library: its command line, chain specs, service and RPC. The
//! `openledger-node` binary is a thin crate around [`run`] that alone embeds the commit in its
//! version, so a new commit recompiles that crate and relinks, not all of this.

mod chain_spec;
mod cli;
mod command;
mod rpc;
mod service;

pub use command::run;
pub use polkadot_sdk::sc_cli::Result;
