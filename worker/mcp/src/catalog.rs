//! The MCP tools a worker may call: on a chain, the registry's; without one, the operator's file
//! (`serve --mcp-tools FILE`). Requests name tools by id only, so endpoints come from here and
//! never from a request.

use std::collections::BTreeMap;

use openledger_primitives::ToolId;
use serde::Deserialize;

/// One tool: where its server is, its name there, what a call costs and, when registered, the
/// hash its definition must have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisteredTool {
	pub id: ToolId,
	/// The server's Streamable HTTP endpoint, `http://…`.
	pub endpoint: String,
	/// The tool's name on that server, which is also the name the model calls it by.
	pub tool: String,
	/// Planck per successful call.
	pub price: u128,
	/// blake2-256 of the definition's canonical JSON (see [`crate::definition`]); `None` in a
	/// file that pins no definition.
	pub definition_hash: Option<[u8; 32]>,
}

/// The tools by id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalog {
	tools: BTreeMap<ToolId, RegisteredTool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
	id: ToolId,
	endpoint: String,
	tool: String,
	/// A decimal string: planck amounts overflow JSON numbers.
	#[serde(default)]
	price: Option<String>,
	/// `0x` and 64 hex digits.
	#[serde(default)]
	definition_hash: Option<String>,
}

impl Catalog {
	pub fn new(tools: impl IntoIterator<Item = RegisteredTool>) -> Self {
		Self { tools: tools.into_iter().map(|t| (t.id, t)).collect() }
	}

	/// Reads the operator's list, `[{"id": N, "endpoint": "http://…", "tool": "<name>", "price":
	/// "<planck>", "definition_hash": "0x…"}]` (price and hash optional); the first fault, with
	/// the entry it is in.
	pub fn parse(text: &str) -> Result<Self, String> {
		let entries: Vec<FileEntry> = serde_json::from_str(text).map_err(|e| {
			format!("expected [{{\"id\": N, \"endpoint\": \"http://…\", \"tool\": \"<name>\", \"price\": \"<planck>\"}}, …]: {e}")
		})?;
		let mut tools = BTreeMap::new();
		for (i, entry) in entries.into_iter().enumerate() {
			let at = |message: String| format!("entry {i} (id {}): {message}", entry.id);
			if !entry.endpoint.starts_with("http://") && !entry.endpoint.starts_with("https://") {
				return Err(at(format!("endpoint `{}` is not an http:// URL", entry.endpoint)));
			}
			if entry.tool.is_empty() {
				return Err(at("tool names no tool".into()));
			}
			let price = match entry.price.as_deref() {
				None => 0,
				Some(p) => p.parse::<u128>().map_err(|_| at(format!("price `{p}` is not a whole number of planck")))?,
			};
			let definition_hash = match entry.definition_hash.as_deref() {
				None => None,
				Some(h) => Some(parse_hash(h).ok_or_else(|| at(format!("definition_hash `{h}` is not 0x and 64 hex digits")))?),
			};
			let tool = RegisteredTool { id: entry.id, endpoint: entry.endpoint, tool: entry.tool, price, definition_hash };
			if tools.insert(tool.id, tool).is_some() {
				return Err(at("the id is listed twice".into()));
			}
		}
		Ok(Self { tools })
	}

	pub fn get(&self, id: ToolId) -> Option<&RegisteredTool> {
		self.tools.get(&id)
	}

	pub fn len(&self) -> usize {
		self.tools.len()
	}

	pub fn is_empty(&self) -> bool {
		self.tools.is_empty()
	}
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
	hex::decode(text.strip_prefix("0x")?).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
	use super::*;

	#[test]
	fn reads_the_operators_file() {
		let hash = format!("0x{}", "ab".repeat(32));
		let text = format!(
			r#"[{{"id": 3, "endpoint": "http://127.0.0.1:9/mcp", "tool": "get_weather", "price": "340282366920938463463374607431768211455", "definition_hash": "{hash}"}},
			   {{"id": 4, "endpoint": "http://127.0.0.1:9/mcp", "tool": "broken"}}]"#
		);
		let catalog = Catalog::parse(&text).unwrap();
		assert_eq!(catalog.len(), 2);
		let weather = catalog.get(3).unwrap();
		assert_eq!((weather.tool.as_str(), weather.price, weather.definition_hash), ("get_weather", u128::MAX, Some([0xab; 32])));
		assert_eq!((catalog.get(4).unwrap().price, catalog.get(4).unwrap().definition_hash), (0, None));
		assert!(catalog.get(5).is_none());
	}

	#[test]
	fn a_bad_entry_is_named() {
		let cases = [
			(r#"[{"id": 1, "endpoint": "ftp://x/mcp", "tool": "t"}]"#, "not an http:// URL"),
			(r#"[{"id": 1, "endpoint": "http://x/mcp", "tool": ""}]"#, "names no tool"),
			(r#"[{"id": 1, "endpoint": "http://x/mcp", "tool": "t", "price": "-1"}]"#, "whole number"),
			(r#"[{"id": 1, "endpoint": "http://x/mcp", "tool": "t", "definition_hash": "0x12"}]"#, "64 hex digits"),
			(r#"[{"id": 1, "endpoint": "http://x/mcp", "tool": "t"}, {"id": 1, "endpoint": "http://x/mcp", "tool": "u"}]"#, "listed twice"),
			(r#"[{"id": 1, "endpoint": "http://x/mcp", "tool": "t", "url": "x"}]"#, "unknown field"),
			(r#"{"id": 1}"#, "expected ["),
		];
		for (text, expected) in cases {
			let error = Catalog::parse(text).unwrap_err();
			assert!(error.contains(expected), "{text}: {error}");
		}
	}
}
