//! The client against a real MCP server: the official Python SDK (`mcp` on PyPI) over Streamable
//! HTTP, `scripts/mcp/weather_server.py`, started on a loopback port for the test (the Python
//! venv comes from `scripts/setup.sh`), over http and over https.

use std::{
	ffi::OsStr,
	path::{Path, PathBuf},
	time::{Duration, Instant},
};

use openledger_mcp::{definition::definition_hash, Limits, McpError, Session, TrustedRoots};
use serde_json::{json, Map, Value};

struct Server {
	port: u16,
	_process: tokio::process::Child,
}

fn python() -> PathBuf {
	let venv = std::env::var_os("OPENLEDGER_VENV").map_or_else(|| PathBuf::from("/var/tmp/openledger-venv"), PathBuf::from);
	let python = venv.join("bin/python");
	assert!(python.exists(), "no Python venv at {}: run scripts/setup.sh", venv.display());
	python
}

fn script(name: &str) -> PathBuf {
	PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/mcp").join(name)
}

/// Starts the weather server on a free loopback port (`tls`: its certificate and key) and waits
/// until it accepts connections.
async fn start(tls: &[&OsStr]) -> Server {
	let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
	let process = tokio::process::Command::new(python())
		.arg(script("weather_server.py"))
		.arg(port.to_string())
		.args(tls)
		.stdout(std::process::Stdio::null())
		.stderr(std::process::Stdio::null())
		.kill_on_drop(true)
		.spawn()
		.expect("starting the Python MCP server");
	let deadline = Instant::now() + Duration::from_secs(60);
	while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
		assert!(Instant::now() < deadline, "the Python MCP server did not start listening on {port}");
		tokio::time::sleep(Duration::from_millis(100)).await;
	}
	Server { port, _process: process }
}

fn args(value: Value) -> Map<String, Value> {
	value.as_object().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_python_mcp_server_is_read_called_and_bounded() {
	let server = start(&[]).await;
	let endpoint = format!("http://127.0.0.1:{}/mcp", server.port);
	// By default a loopback endpoint is refused before anything is sent.
	let refused = Session::connect(&endpoint, Limits::default()).await.err().expect("loopback refused");
	assert!(matches!(refused, McpError::AddressRefused(_)), "{refused}");

	let limits = Limits { allow_private: true, request_timeout: Duration::from_secs(3), ..Limits::default() };
	let session = Session::connect(&endpoint, limits.clone()).await.unwrap();
	let definition = session.definition("get_weather").await.unwrap();
	assert_eq!(definition["name"], "get_weather");
	assert!(definition["description"].as_str().unwrap().contains("weather"), "{definition}");
	assert_eq!(definition["inputSchema"]["properties"]["city"]["type"], "string", "{definition}");
	let again = Session::connect(&endpoint, limits.clone()).await.unwrap();
	assert_eq!(definition_hash(&again.definition("get_weather").await.unwrap()), definition_hash(&definition), "a stable hash");
	again.close().await;
	let unknown = session.definition("no_such_tool").await.unwrap_err();
	assert!(matches!(unknown, McpError::UnknownTool(_)), "{unknown}");

	let oslo = session.call("get_weather", args(json!({"city": "Oslo"}))).await.unwrap();
	assert!(!oslo.is_error && oslo.text.starts_with("Oslo: ") && oslo.text.contains("°C"), "{oslo:?}");
	assert_eq!(session.call("get_weather", args(json!({"city": "Oslo"}))).await.unwrap(), oslo, "the same report");
	let broken = session.call("broken", Map::new()).await.unwrap();
	assert!(broken.is_error && broken.text.contains("unreachable"), "{broken:?}");

	let started = Instant::now();
	let slow = session.call("slow", args(json!({"seconds": 30}))).await.unwrap_err();
	assert!(matches!(slow, McpError::Timeout(_)), "{slow}");
	assert!(started.elapsed() < Duration::from_secs(10), "bounded by the limit: {:?}", started.elapsed());
	let after = session.call("get_weather", args(json!({"city": "Lima"}))).await.unwrap();
	assert!(after.text.starts_with("Lima: "), "the session goes on after a timed-out call: {after:?}");
	session.close().await;
}

#[tokio::test]
async fn a_server_that_is_down_is_unreachable_quickly() {
	let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
	let limits = Limits { allow_private: true, request_timeout: Duration::from_secs(3), ..Limits::default() };
	let started = Instant::now();
	let down = Session::connect(&format!("http://127.0.0.1:{port}/mcp"), limits).await.err().expect("nothing listens");
	assert!(matches!(down, McpError::Unreachable(_) | McpError::Timeout(_)), "{down}");
	assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

/// A throwaway CA and a certificate for 127.0.0.1 it signed (`scripts/mcp/test_certs.py`).
fn certificates(dir: &Path) {
	let status = std::process::Command::new(python()).arg(script("test_certs.py")).arg(dir).status().unwrap();
	assert!(status.success(), "writing the test certificates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_server_is_trusted_only_through_a_known_root() {
	let dir = tempfile::tempdir().unwrap();
	certificates(dir.path());
	let server = start(&[dir.path().join("server.pem").as_os_str(), dir.path().join("server.key").as_os_str()]).await;
	let endpoint = format!("https://127.0.0.1:{}/mcp", server.port);
	let limits = Limits { allow_private: true, request_timeout: Duration::from_secs(5), ..Limits::default() };
	// The system's roots do not know the test CA: the certificate is refused, nothing is called.
	let unknown = Session::connect(&endpoint, limits.clone()).await.err().expect("a certificate of an unknown CA");
	assert!(matches!(unknown, McpError::Unreachable(_)) && unknown.to_string().contains("UnknownIssuer"), "{unknown}");

	let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
	let trusted = Limits { roots: TrustedRoots::with_pem(&ca).unwrap(), ..limits.clone() };
	let session = Session::connect(&endpoint, trusted.clone()).await.unwrap();
	assert_eq!(session.definition("get_weather").await.unwrap()["name"], "get_weather");
	let oslo = session.call("get_weather", args(json!({"city": "Oslo"}))).await.unwrap();
	assert!(!oslo.is_error && oslo.text.starts_with("Oslo: "), "{oslo:?}");
	session.close().await;
	// Plain http to the TLS port is no session either.
	let plain = Session::connect(&format!("http://127.0.0.1:{}/mcp", server.port), trusted).await.err().expect("http to https");
	assert!(matches!(plain, McpError::Unreachable(_) | McpError::Protocol(_)), "{plain}");
}

#[test]
fn a_ca_file_without_certificates_is_refused() {
	for pem in [&b""[..], b"not a certificate", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"] {
		let refused = TrustedRoots::with_pem(pem).unwrap_err();
		assert!(matches!(refused, McpError::BadCertificate(_)), "{refused}");
	}
}
