//! The tokenizer of an HF model directory.

use std::{fs, path::Path};

use anyhow::{anyhow, bail, Context, Result};
use super::{SharedTokenizer, TextCodec};

impl TextCodec {
	/// Loads an HF model directory: `tokenizer.json` (required); `tokenizer_config.json`
	/// (optional: `chat_template`, `bos_token`, `eos_token`, as strings or `{content: ..}`
	/// objects); `chat_template.jinja` (optional, preferred over the config's template, as in
	/// `transformers`); `generation_config.json` (optional: `eos_token_id`, one id or a list).
	pub fn from_hf_dir(dir: &Path) -> Result<Self> {
		let tokenizer_path = dir.join("tokenizer.json");
		let tokenizer = SharedTokenizer::from_file(&tokenizer_path)
			.map_err(|e| anyhow!("cannot load tokenizer {}: {e}", tokenizer_path.display()))?;
		let config = read_json_opt(&dir.join("tokenizer_config.json"))?.unwrap_or_default();
		let generation = read_json_opt(&dir.join("generation_config.json"))?.unwrap_or_default();

		let jinja_path = dir.join("chat_template.jinja");
		let chat_template = if jinja_path.is_file() {
			Some(
				fs::read_to_string(&jinja_path)
					.with_context(|| format!("reading {}", jinja_path.display()))?,
			)
		} else {
			match config.get("chat_template") {
				None | Some(serde_json::Value::Null) => None,
				Some(serde_json::Value::String(s)) => Some(s.clone()),
				// The older multi-template form: `[{name, template}, ..]`; the one named `default`.
				Some(serde_json::Value::Array(list)) => {
					let named = |name: Option<&str>| {
						list.iter()
							.find(|t| name.is_none() || t.get("name").and_then(|n| n.as_str()) == name)
							.and_then(|t| t.get("template"))
							.and_then(|t| t.as_str())
					};
					named(Some("default")).or_else(|| named(None)).map(str::to_owned)
				}
				Some(other) => bail!("tokenizer_config.json: `chat_template` is neither a string nor a list: {other}"),
			}
		};
		let bos_token = config.get("bos_token").and_then(token_content);
		let eos_token = config.get("eos_token").and_then(token_content);
		let bos_id = bos_token
			.as_deref()
			.and_then(|t| tokenizer.token_to_id(t))
			.or_else(|| json_ids(generation.get("bos_token_id")).first().copied());
		let mut eos_ids: Vec<u32> =
			eos_token.as_deref().and_then(|t| tokenizer.token_to_id(t)).into_iter().collect();
		eos_ids.extend(json_ids(generation.get("eos_token_id")));
		// BOS is the post-processor's business in tokenizer.json; note whether it adds one so a
		// template that also writes `bos_token` does not give two.
		let auto_bos = match bos_id {
			Some(bos) => {
				let probe = tokenizer
					.encode("", true)
					.map_err(|e| anyhow!("tokenizer.json cannot encode: {e}"))?;
				(probe.get_ids().first() == Some(&bos)).then_some(bos)
			}
			None => None,
		};
		let bos_token = bos_token.or_else(|| bos_id.and_then(|id| tokenizer.id_to_token(id)));
		Self::assemble(tokenizer, chat_template, bos_token, eos_token, bos_id, auto_bos, eos_ids)
	}
}

pub(super) fn read_json_opt(path: &Path) -> Result<Option<serde_json::Map<String, serde_json::Value>>> {
	if !path.is_file() {
		return Ok(None);
	}
	let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
	let value: serde_json::Value = serde_json::from_str(&text)
		.with_context(|| format!("{} is not valid JSON", path.display()))?;
	match value {
		serde_json::Value::Object(map) => Ok(Some(map)),
		_ => bail!("{} is not a JSON object", path.display()),
	}
}

/// A special token in `tokenizer_config.json`: a string, or an `AddedToken` object `{content: ..}`.
pub(super) fn token_content(v: &serde_json::Value) -> Option<String> {
	match v {
		serde_json::Value::String(s) => Some(s.clone()),
		serde_json::Value::Object(o) => {
			o.get("content").and_then(|c| c.as_str()).map(str::to_owned)
		}
		_ => None,
	}
}

/// An id or a list of ids (`generation_config.json`'s `eos_token_id`).
pub(super) fn json_ids(v: Option<&serde_json::Value>) -> Vec<u32> {
	match v {
		Some(serde_json::Value::Number(n)) => {
			n.as_u64().and_then(|n| u32::try_from(n).ok()).into_iter().collect()
		}
		Some(serde_json::Value::Array(list)) => {
			list.iter().filter_map(|n| n.as_u64().and_then(|n| u32::try_from(n).ok())).collect()
		}
		_ => Vec::new(),
	}
}

