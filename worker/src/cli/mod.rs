//! Subcommands that are not `serve`: DataNet indexes, and the ledger's keys, chain, vouchers and
//! outbox.

pub mod datanet;
pub mod ledger;
