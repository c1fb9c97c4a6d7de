//! The worker's MCP client. MCP tools are registered on chain with their server's endpoint, their
//! name there and the hash of their definition; the worker reads the definition from the server,
//! checks it against that hash ([`definition`]), offers the tool to the model and calls it
//! ([`Session`]). Endpoints are checked before anything is sent ([`address`]).

pub mod address;
pub mod catalog;
mod client;
pub mod definition;
mod tls;

pub use catalog::{Catalog, RegisteredTool};
pub use client::{CallOutcome, Limits, Session};
pub use tls::TrustedRoots;

/// Why an MCP tool could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum McpError {
	/// The endpoint is not a usable `http://` or `https://` URL.
	#[error("bad MCP endpoint: {0}")]
	BadEndpoint(String),
	/// A CA certificate the operator gave could not be read.
	#[error("bad CA certificate: {0}")]
	BadCertificate(String),
	/// The endpoint is on a network the worker does not call (see [`address::Reach`]).
	#[error("MCP endpoint refused: {0}")]
	AddressRefused(String),
	/// The server could not be reached.
	#[error("MCP server unreachable: {0}")]
	Unreachable(String),
	/// A request took longer than the limit.
	#[error("MCP request timed out: {0}")]
	Timeout(String),
	/// The server answered something this client does not take.
	#[error("MCP protocol error: {0}")]
	Protocol(String),
	/// The server offers no tool of that name.
	#[error("unknown MCP tool: {0}")]
	UnknownTool(String),
}
