//! Subcommands that are not `serve`: DataNet indexes, the ledger's keys, chain, vouchers and
//! outbox, and MCP tools' definitions.

pub mod datanet;
pub mod ledger;
pub mod mcp;
