//! OpenLedger inference worker: the OpenAI-compatible HTTP API, p2p discovery, the command line
//! and the wiring of the layers below it — `openledger-engine` (inference),
//! `openledger-knowledge` (DataNets, attribution, templates) and `openledger-ledger` (keys,
//! receipts, the chain).

pub mod api;
pub mod cli;
pub mod metrics;
pub mod p2p;
