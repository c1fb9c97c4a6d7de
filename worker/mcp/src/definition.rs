//! A tool's definition as the chain pins it: `definition_hash` is blake2-256 of the tool's
//! canonical JSON — its `name`, `description` and `inputSchema` (as `tools/list` gives them),
//! object keys sorted at every level, no whitespace. What else a server sends (a title, icons,
//! annotations, `_meta`, an output schema) does not change what the model is told or may send,
//! and SDKs differ in it, so it is left out.

use openledger_primitives::content_hash;
use serde_json::Value;

/// The fields of a tool definition that its hash covers.
pub const HASHED_FIELDS: [&str; 3] = ["name", "description", "inputSchema"];

/// The canonical JSON of `tool` (a `tools/list` entry): [`HASHED_FIELDS`] only, keys sorted.
pub fn canonical_json(tool: &Value) -> String {
	let mut picked = serde_json::Map::new();
	for field in HASHED_FIELDS {
		if let Some(value) = tool.get(field).filter(|v| !v.is_null()) {
			picked.insert(field.to_owned(), value.clone());
		}
	}
	let mut out = String::new();
	write_sorted(&Value::Object(picked), &mut out);
	out
}

/// blake2-256 of [`canonical_json`]: what `register_tool` records.
pub fn definition_hash(tool: &Value) -> [u8; 32] {
	content_hash(canonical_json(tool).as_bytes()).0
}

fn write_sorted(value: &Value, out: &mut String) {
	match value {
		Value::Object(map) => {
			let mut keys: Vec<&String> = map.keys().collect();
			keys.sort();
			out.push('{');
			for (i, key) in keys.into_iter().enumerate() {
				if i > 0 {
					out.push(',');
				}
				out.push_str(&Value::String(key.clone()).to_string());
				out.push(':');
				write_sorted(&map[key.as_str()], out);
			}
			out.push('}');
		},
		Value::Array(items) => {
			out.push('[');
			for (i, item) in items.iter().enumerate() {
				if i > 0 {
					out.push(',');
				}
				write_sorted(item, out);
			}
			out.push(']');
		},
		scalar => out.push_str(&scalar.to_string()),
	}
}

#[cfg(test)]
mod tests {
	use super::*;
	use serde_json::json;

	#[test]
	fn the_hash_covers_the_three_fields_in_any_key_order() {
		let tool = json!({
			"name": "get_weather",
			"title": "Weather",
			"description": "The weather now",
			"inputSchema": {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}},
			"annotations": {"readOnlyHint": true},
			"_meta": {"x": 1},
		});
		assert_eq!(
			canonical_json(&tool),
			r#"{"description":"The weather now","inputSchema":{"properties":{"city":{"type":"string"}},"required":["city"],"type":"object"},"name":"get_weather"}"#
		);
		let reordered: Value = serde_json::from_str(
			r#"{"inputSchema": {"properties": {"city": {"type": "string"}}, "type": "object", "required": ["city"]}, "description": "The weather now", "name": "get_weather"}"#,
		)
		.unwrap();
		assert_eq!(definition_hash(&tool), definition_hash(&reordered));
		let mut changed = tool.clone();
		changed["description"] = json!("The weather now, and a secret instruction");
		assert_ne!(definition_hash(&tool), definition_hash(&changed), "what the model reads is covered");
		changed = tool.clone();
		changed["inputSchema"]["properties"]["city"]["type"] = json!("integer");
		assert_ne!(definition_hash(&tool), definition_hash(&changed), "what the model may send is covered");
		changed = tool;
		changed["title"] = json!("Another title");
		assert_eq!(definition_hash(&changed), definition_hash(&reordered), "what neither sees is not");
	}
}
