//! One MCP session with a tool's server: connect, read a tool's definition, call it. Every
//! request is bounded in time (rmcp's requests have no timeout of their own, and a response lost
//! in a session re-init would hang one forever) and in size; redirects are refused and the
//! connection is pinned to the address the endpoint was checked at. An https endpoint's
//! certificate is checked against the system's roots and any the operator adds.

use std::time::Duration;

use rmcp::{
	model::{
		CallToolRequestParams, ClientCapabilities, ClientConfig, ContentBlock, Implementation, PaginatedRequestParams,
		ProtocolVersion,
	},
	service::{ClientInitializeError, RunningService},
	transport::{
		streamable_http_client::{StreamableHttpClientTransportConfig, StreamableHttpError},
		StreamableHttpClientTransport,
	},
	RoleClient, ServiceExt,
};
use serde_json::Value;

use crate::{address, McpError, TrustedRoots};

/// Bounds on what one session may cost the worker.
#[derive(Clone, Debug)]
pub struct Limits {
	/// Connecting and each request (initialize, one page of `tools/list`, `tools/call`).
	pub request_timeout: Duration,
	/// The largest message the server may send.
	pub max_message_bytes: usize,
	/// The most characters of a tool's result handed on (the rest is cut, and says so).
	pub max_result_chars: usize,
	/// Loopback, private and link-local endpoints are allowed (`--mcp-allow-private`).
	pub allow_private: bool,
	/// What an https endpoint's certificate must chain to (`--mcp-ca-file` adds a private CA).
	pub roots: TrustedRoots,
}

impl Default for Limits {
	fn default() -> Self {
		Self {
			request_timeout: Duration::from_secs(10),
			max_message_bytes: 1 << 20,
			max_result_chars: 16_384,
			allow_private: false,
			roots: TrustedRoots::default(),
		}
	}
}

/// Pages of `tools/list` read at most while looking for a tool.
const MAX_PAGES: usize = 32;

/// The protocol revisions this client accepts from a server (it offers the newest it knows and
/// takes the server's answer when it is one of these).
const ACCEPTED: [ProtocolVersion; 4] =
	[ProtocolVersion::V_2025_03_26, ProtocolVersion::V_2025_06_18, ProtocolVersion::V_2025_11_25, ProtocolVersion::V_2026_07_28];

/// A tool call's outcome as the model is shown it.
#[derive(Clone, Debug, PartialEq)]
pub struct CallOutcome {
	/// The result's text content (other kinds of content are named, not passed on).
	pub text: String,
	/// The server said the call failed (`isError`): shown to the model, never billed.
	pub is_error: bool,
}

/// An open session with one MCP server.
pub struct Session {
	service: RunningService<RoleClient, ClientConfig>,
	limits: Limits,
	endpoint: String,
}

impl Session {
	/// Checks `endpoint` (see [`address::resolve`]) and opens a session with its server.
	pub async fn connect(endpoint: &str, limits: Limits) -> Result<Self, McpError> {
		let resolved = bounded(limits.request_timeout, "resolving the endpoint", address::resolve(endpoint, limits.allow_private)).await?;
		let http = reqwest::Client::builder()
			.redirect(reqwest::redirect::Policy::none())
			.no_proxy()
			.resolve(&resolved.host, resolved.addr)
			.connect_timeout(limits.request_timeout)
			.tls_backend_preconfigured(limits.roots.client_config()?)
			.build()
			.map_err(|e| McpError::Unreachable(format!("building the HTTP client: {e}")))?;
		let config = StreamableHttpClientTransportConfig::with_uri(resolved.url.as_str())
			.max_json_response_size(limits.max_message_bytes)
			.max_sse_event_size(limits.max_message_bytes)
			.reinit_on_expired_session(false);
		let transport = StreamableHttpClientTransport::with_client(http, config);
		let client = ClientConfig::new(ClientCapabilities::default(), Implementation::new("openledger-worker", env!("CARGO_PKG_VERSION")));
		let service = bounded(limits.request_timeout, "connecting", async {
			client.serve(transport).await.map_err(|e| McpError::Unreachable(format!("{endpoint}: {}", init_failure(&e))))
		})
		.await?;
		let version = service.peer_info().map(|info| info.protocol_version.clone());
		if !version.as_ref().is_some_and(|v| ACCEPTED.contains(v)) {
			return Err(McpError::Protocol(format!("{endpoint} answered protocol version {version:?}")));
		}
		Ok(Self { service, limits, endpoint: endpoint.to_owned() })
	}

	/// The `tools/list` entry of the tool called `name`, as JSON.
	pub async fn definition(&self, name: &str) -> Result<Value, McpError> {
		let mut cursor = None;
		for _ in 0..MAX_PAGES {
			let params = PaginatedRequestParams::default().with_cursor(cursor);
			let page = bounded(self.limits.request_timeout, "listing tools", async {
				self.service.list_tools(Some(params)).await.map_err(|e| self.failed("tools/list", e))
			})
			.await?;
			if let Some(tool) = page.tools.iter().find(|t| t.name == name) {
				return serde_json::to_value(tool).map_err(|e| McpError::Protocol(format!("a tool definition: {e}")));
			}
			cursor = page.next_cursor;
			if cursor.is_none() {
				break;
			}
		}
		Err(McpError::UnknownTool(format!("{} offers no tool `{name}`", self.endpoint)))
	}

	/// Calls `name` with `arguments` (a JSON object).
	pub async fn call(&self, name: &str, arguments: serde_json::Map<String, Value>) -> Result<CallOutcome, McpError> {
		let params = CallToolRequestParams::new(name.to_owned()).with_arguments(arguments);
		let result = bounded(self.limits.request_timeout, "calling the tool", async {
			self.service.call_tool(params).await.map_err(|e| self.failed("tools/call", e))
		})
		.await?;
		let mut text = String::new();
		for block in &result.content {
			if !text.is_empty() {
				text.push('\n');
			}
			match block {
				ContentBlock::Text(t) => text.push_str(&t.text),
				_ => text.push_str("[content other than text, not shown]"),
			}
		}
		if text.is_empty() {
			if let Some(structured) = &result.structured_content {
				text = structured.to_string();
			}
		}
		if let Some((cut, _)) = text.char_indices().nth(self.limits.max_result_chars) {
			text.truncate(cut);
			text.push_str(" [result cut]");
		}
		Ok(CallOutcome { text, is_error: result.is_error.unwrap_or(false) })
	}

	/// Ends the session (the server is told; a server that does not answer is left after a
	/// second).
	pub async fn close(mut self) {
		if let Err(e) = self.service.close_with_timeout(Duration::from_secs(1)).await {
			tracing::debug!(endpoint = self.endpoint, "closing an MCP session: {e}");
		}
	}

	fn failed(&self, what: &str, e: rmcp::ServiceError) -> McpError {
		McpError::Protocol(format!("{} {what}: {e}", self.endpoint))
	}
}

/// Why a session could not be opened. The transport's own words name its Rust type; the causes
/// say what happened. rmcp does not chain the HTTP client's error as a source, so a refused
/// certificate is read from reqwest's causes.
fn init_failure(e: &ClientInitializeError) -> String {
	match e {
		ClientInitializeError::TransportError { error, context } => {
			let inner = &*error.error;
			let why = match inner.downcast_ref::<StreamableHttpError<reqwest::Error>>() {
				Some(StreamableHttpError::Client(http)) => with_causes(http),
				_ => with_causes(inner),
			};
			format!("{why}, when {context}")
		},
		other => with_causes(other),
	}
}

/// An error and what caused it, innermost last: a refused certificate is named only deep in
/// the chain (the transport's error says no more than that sending failed).
fn with_causes(error: &dyn std::error::Error) -> String {
	let mut text = error.to_string();
	let mut cause = error.source();
	while let Some(e) = cause {
		let more = e.to_string();
		if !text.contains(&more) {
			text.push_str(": ");
			text.push_str(&more);
		}
		cause = e.source();
	}
	text
}

/// `work`, or [`McpError::Timeout`] after `limit`.
async fn bounded<T>(limit: Duration, what: &str, work: impl std::future::Future<Output = Result<T, McpError>>) -> Result<T, McpError> {
	tokio::time::timeout(limit, work).await.map_err(|_| McpError::Timeout(format!("{what} took longer than {limit:?}")))?
}
