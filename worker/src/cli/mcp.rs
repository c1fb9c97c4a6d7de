//! `openledger-worker mcp`: what a tool's registrant needs from its MCP server.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use clap::Subcommand;
use openledger_mcp::{definition, Limits, Session, TrustedRoots};
use serde_json::json;

#[derive(Subcommand)]
pub enum McpCommand {
	/// Print a tool's definition as its server gives it, the canonical JSON the chain's
	/// `definition_hash` covers (name, description, inputSchema; keys sorted) and that hash, for
	/// `registry.register_tool`.
	Definition {
		/// The MCP server's Streamable HTTP endpoint, e.g. https://host/mcp.
		#[arg(long)]
		endpoint: String,
		/// The tool's name on that server.
		#[arg(long)]
		tool: String,
		/// Allow a loopback, private or link-local endpoint (refused by default).
		#[arg(long)]
		allow_private: bool,
		/// CA certificates (PEM) trusted for an https endpoint besides the system's roots.
		#[arg(long)]
		ca_file: Option<PathBuf>,
		/// Seconds each request to the server may take.
		#[arg(long, default_value_t = 10)]
		timeout_secs: u64,
	},
}

pub fn run(command: McpCommand) -> Result<()> {
	let McpCommand::Definition { endpoint, tool, allow_private, ca_file, timeout_secs } = command;
	let roots = ca_file.as_deref().map(TrustedRoots::with_file).transpose()?.unwrap_or_default();
	let limits = Limits { allow_private, request_timeout: Duration::from_secs(timeout_secs), roots, ..Limits::default() };
	let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")?;
	let served = runtime.block_on(async {
		let session = Session::connect(&endpoint, limits).await?;
		let served = session.definition(&tool).await;
		session.close().await;
		served
	})?;
	let canonical = definition::canonical_json(&served);
	let out = json!({
		"tool": tool,
		"endpoint": endpoint,
		"served": served,
		"canonical": canonical,
		"definition_hash": format!("0x{}", hex::encode(definition::definition_hash(&served))),
	});
	println!("{}", serde_json::to_string_pretty(&out)?);
	Ok(())
}
