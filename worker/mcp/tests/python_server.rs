//! The client against a real MCP server: the official Python SDK (`mcp` on PyPI) over Streamable
//! HTTP, `scripts/mcp/weather_server.py`, started on a loopback port for the test (the Python
//! venv comes from `scripts/setup.sh`).

use std::{
	path::PathBuf,
	time::{Duration, Instant},
};

use openledger_mcp::{definition::definition_hash, Limits, McpError, Session};
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

/// Starts the weather server on a free loopback port and waits until it accepts connections.
async fn start() -> Server {
	let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
	let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/mcp/weather_server.py");
	let process = tokio::process::Command::new(python())
		.arg(script)
		.arg(port.to_string())
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
	let server = start().await;
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
