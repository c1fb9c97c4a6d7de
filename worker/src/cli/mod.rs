//! Subcommands that are not `serve`: DataNet indexes, the ledger's keys, chain, vouchers and
//! outbox, MCP tools' definitions, and training adapters.

pub mod datanet;
pub mod ledger;
pub mod mcp;
pub mod train;
