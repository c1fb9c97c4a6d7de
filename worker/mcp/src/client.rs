//! One MCP session with a tool's server: connect, read a tool's definition, call it. Every
//! request is bounded in time (rmcp's requests have no timeout of their own, and a response lost
//! in a session re-init would hang one forever) and in size; redirects are refused and the
//! connection is pinned to the address the endpoint was checked at. An https endpoint's
//! certificate is checked against the system's roots and any the operator adds.

use std::{fmt, sync::Once, time::Duration};

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

use crate::{address, McpError};

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
	/// Certificate authorities trusted for https endpoints besides the system's
	/// (`--mcp-ca-file`: a private CA).
	pub extra_roots: ExtraRoots,
}

impl Default for Limits {
	fn default() -> Self {
		Self {
			request_timeout: Duration::from_secs(10),
			max_message_bytes: 1 << 20,
			max_result_chars: 16_384,
			allow_private: false,
			extra_roots: ExtraRoots::default(),
		}
	}
}

/// CA certificates trusted besides the system's roots.
#[derive(Clone, Default)]
pub struct ExtraRoots(Vec<reqwest::Certificate>);

impl ExtraRoots {
	/// The certificates of a PEM file (one or more), each parsed as a trust anchor now so a
	/// broken file stops the worker at start rather than failing every https call.
	pub fn from_pem(pem: &[u8]) -> Result<Self, McpError> {
		use rustls::pki_types::{pem::PemObject, CertificateDer};
		let bad = |e: &dyn fmt::Display| McpError::BadCertificate(e.to_string());
		let ders = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| bad(&format!("not PEM: {e}")))?;
		if ders.is_empty() {
			return Err(bad(&"no certificate in the file"));
		}
		let mut anchors = rustls::RootCertStore::empty();
		let mut certificates = Vec::with_capacity(ders.len());
		for der in ders {
			certificates.push(reqwest::Certificate::from_der(&der).map_err(|e| bad(&e))?);
			anchors.add(der).map_err(|e| bad(&format!("not a usable CA certificate: {e}")))?;
		}
		Ok(Self(certificates))
	}

	/// The certificates of the PEM file at `path`.
	pub fn from_file(path: &std::path::Path) -> Result<Self, McpError> {
		let pem = std::fs::read(path).map_err(|e| McpError::BadCertificate(format!("reading {}: {e}", path.display())))?;
		Self::from_pem(&pem).map_err(|e| match e {
			McpError::BadCertificate(why) => McpError::BadCertificate(format!("{}: {why}", path.display())),
			other => other,
		})
	}
}

impl fmt::Debug for ExtraRoots {
	fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
		write!(f, "ExtraRoots({} certificates)", self.0.len())
	}
}

/// rustls's cryptography is ring's, built for the worker already; it is installed as the
/// process default before the first client is built (a default set elsewhere is kept).
fn install_tls_provider() {
	static INSTALL: Once = Once::new();
	INSTALL.call_once(|| {
		let _ = rustls::crypto::ring::default_provider().install_default();
	});
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
		install_tls_provider();
		let mut http = reqwest::Client::builder()
			.redirect(reqwest::redirect::Policy::none())
			.no_proxy()
			.resolve(&resolved.host, resolved.addr)
			.connect_timeout(limits.request_timeout);
		for root in &limits.extra_roots.0 {
			http = http.add_root_certificate(root.clone());
		}
		let http = http
			.build()
			.map_err(|e| McpError::Unreachable(format!("building the HTTP client: {e}")))?;
		let config = StreamableHttpClientTransportConfig::with_uri(resolved.url.as_str())
			.max_json_response_size(limits.max_message_bytes)
			.max_sse_event_size(limits.max_message_bytes)
			.reinit_on_expired_session(false);
		let transport = StreamableHttpClientTransport::with_client(http, config);
		let client = ClientConfig::new(ClientCapabilities::default(), Implementation::new("openledger-worker", env!("CARGO_PKG_VERSION")));
		let service = bounded(limits.request_timeout, "connecting", async {
			client.serve(transport).await.map_err(|e| {
				let why = match &e {
					// The transport's own words name its Rust type; the causes say what happened.
					ClientInitializeError::TransportError { error, context } => {
						let inner = &*error.error;
						// rmcp does not chain the HTTP client's error as a source: the refused
						// certificate is only in reqwest's causes.
						let why = match inner.downcast_ref::<StreamableHttpError<reqwest::Error>>() {
							Some(StreamableHttpError::Client(http)) => with_causes(http),
							_ => with_causes(inner),
						};
						format!("{why}, when {context}")
					},
					other => with_causes(other),
				};
				McpError::Unreachable(format!("{endpoint}: {why}"))
			})
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
