//! The tokenizer a GGUF file carries in its metadata.

use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::gguf_file::{self, Value};
use std::sync::Arc;

use tokenizers::{
	decoders::{byte_fallback::ByteFallback, fuse::Fuse, sequence::Sequence as DecoderSequence, strip::Strip, DecoderWrapper},
	models::bpe::{Vocab, BPE},
	normalizers::{prepend::Prepend, replace::Replace, NormalizerWrapper, Sequence as NormalizerSequence},
	pre_tokenizers::{
		byte_level::ByteLevel,
		digits::Digits,
		sequence::Sequence,
		split::{Split, SplitPattern},
	},
	AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior,
};

use super::{
	chat::GEMMA_CHAT_TEMPLATE,
	sentencepiece::{SentencePiece, SPM_SPACE},
	SharedModel, SharedTokenizer, TextCodec,
};

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
pub(super) const TOKEN_TYPE_NORMAL: i64 = 1;
pub(super) const TOKEN_TYPE_UNKNOWN: i64 = 2;
pub(super) const TOKEN_TYPE_CONTROL: i64 = 3;
pub(super) const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Regexes of HF's Llama 3 and Qwen2 `tokenizer.json` pre-tokenizers (`Split`, then a
/// regex-less `ByteLevel`).
pub(super) const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
pub(super) const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `tokenizer.ggml.pre` values that are the GPT-2 regex after splitting off every digit
/// (llama.cpp groups them the same way).
pub(super) const DIGITS_THEN_GPT2: &[&str] =
	&["smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"];
/// Every `tokenizer.ggml.pre` value [`TextCodec::from_gguf`] accepts, for error messages.
pub(super) const SUPPORTED_PRE: &str =
	"smollm, starcoder, refact, command-r, codeshell, exaone, minerva-7b, gpt-2, llama-bpe (llama3), qwen2";

/// The tokenizer part of GGUF metadata.
pub(super) struct GgufVocab {
	pub(super) model: String,
	pub(super) pre: Option<String>,
	pub(super) tokens: Vec<String>,
	pub(super) types: Vec<i64>,
	pub(super) merges: Vec<String>,
	/// SentencePiece's: each token's score (its merge priority).
	pub(super) scores: Vec<f32>,
	/// SentencePiece's: whether text is read with a space before it.
	pub(super) add_space_prefix: bool,
	pub(super) bos_id: Option<u32>,
	pub(super) eos_id: Option<u32>,
	pub(super) eot_id: Option<u32>,
	pub(super) add_bos: bool,
	pub(super) chat_template: Option<String>,
}

impl GgufVocab {
	pub(super) fn read(content: &gguf_file::Content) -> Result<Self> {
		let md = &content.metadata;
		let get = |key: &str| md.get(key).with_context(|| format!("GGUF metadata has no `{key}`"));
		let string = |key: &str| -> Result<Option<String>> {
			md.get(key)
				.map(|v| {
					v.to_string().cloned().map_err(|e| anyhow!("GGUF `{key}` is not a string: {e}"))
				})
				.transpose()
		};
		let id = |key: &str| -> Result<Option<u32>> {
			md.get(key)
				.map(|v| {
					integer(v)
						.and_then(|i| u32::try_from(i).ok())
						.with_context(|| format!("GGUF `{key}` is not a token id"))
				})
				.transpose()
		};
		let model = string("tokenizer.ggml.model")?
			.context("GGUF metadata has no `tokenizer.ggml.model`")?;
		let strings = |key: &str| -> Result<Vec<String>> {
			get(key)?
				.to_vec()
				.map_err(|e| anyhow!("GGUF `{key}` is not an array: {e}"))?
				.iter()
				.map(|v| {
					v.to_string()
						.cloned()
						.map_err(|e| anyhow!("GGUF `{key}` holds a non-string: {e}"))
				})
				.collect()
		};
		let known = matches!(model.as_str(), "gpt2" | "llama");
		let tokens = if known { strings("tokenizer.ggml.tokens")? } else { Vec::new() };
		let types = match md.get("tokenizer.ggml.token_type") {
			Some(v) => v
				.to_vec()
				.map_err(|e| anyhow!("GGUF `tokenizer.ggml.token_type` is not an array: {e}"))?
				.iter()
				.map(|v| integer(v).context("GGUF `tokenizer.ggml.token_type` holds a non-integer"))
				.collect::<Result<Vec<_>>>()?,
			None => Vec::new(),
		};
		let merges = if model == "gpt2" { strings("tokenizer.ggml.merges")? } else { Vec::new() };
		let flag = |key: &str, default: bool| match md.get(key) {
			Some(Value::Bool(b)) => *b,
			Some(other) => integer(other).is_some_and(|i| i != 0),
			None => default,
		};
		let add_bos = flag("tokenizer.ggml.add_bos_token", false);
		let scores = match md.get("tokenizer.ggml.scores") {
			Some(v) if model == "llama" => v
				.to_vec()
				.map_err(|e| anyhow!("GGUF `tokenizer.ggml.scores` is not an array: {e}"))?
				.iter()
				.map(|v| v.to_f32().map_err(|e| anyhow!("GGUF `tokenizer.ggml.scores` holds a non-number: {e}")))
				.collect::<Result<Vec<_>>>()?,
			_ => Vec::new(),
		};
		Ok(Self {
			model,
			pre: string("tokenizer.ggml.pre")?,
			tokens,
			types,
			merges,
			scores,
			// llama.cpp reads SentencePiece text with a space before it unless told otherwise.
			add_space_prefix: flag("tokenizer.ggml.add_space_prefix", true),
			bos_id: id("tokenizer.ggml.bos_token_id")?,
			eos_id: id("tokenizer.ggml.eos_token_id")?,
			eot_id: id("tokenizer.ggml.eot_token_id")?,
			add_bos,
			// Some Gemma files come without their template; Gemma's turn format stands in.
			chat_template: match string("tokenizer.chat_template")? {
				None if string("general.architecture")?.as_deref() == Some("gemma3") => Some(GEMMA_CHAT_TEMPLATE.to_owned()),
				template => template,
			},
		})
	}

	pub(super) fn build(self) -> Result<TextCodec> {
		if !self.types.is_empty() && self.types.len() != self.tokens.len() {
			bail!("GGUF has {} tokens but {} token types", self.tokens.len(), self.types.len());
		}
		let mut tokenizer = match self.model.as_str() {
			"gpt2" => self.byte_level_bpe()?,
			"llama" => self.sentencepiece()?,
			other => bail!(
				"GGUF tokenizer model `{other}` is not supported: byte-level BPE (`gpt2`) and SentencePiece (`llama`) \
				 tokenizers are read from GGUF metadata; use an HF model directory with a tokenizer.json for others"
			),
		};
		// Control tokens are HF's special added tokens (matched whole in text, dropped when
		// decoding); user-defined ones are its non-special added tokens (matched whole, decoded
		// as text), which is how llama.cpp's converter assigned the two types.
		let typed = |ty: i64| -> Vec<AddedToken> {
			self.tokens
				.iter()
				.zip(&self.types)
				.filter(|(t, &tt)| tt == ty && !t.is_empty())
				.map(|(t, _)| {
					AddedToken::from(t.clone(), ty == TOKEN_TYPE_CONTROL).normalized(false)
				})
				.collect()
		};
		tokenizer.add_special_tokens(typed(TOKEN_TYPE_CONTROL)).map_err(|e| anyhow!("adding the GGUF control tokens: {e}"))?;
		tokenizer.add_tokens(typed(TOKEN_TYPE_USER_DEFINED)).map_err(|e| anyhow!("adding the GGUF user-defined tokens: {e}"))?;

		let token = |id: Option<u32>| id.and_then(|i| self.tokens.get(i as usize)).cloned();
		let mut eos_ids = Vec::new();
		eos_ids.extend(self.eos_id);
		eos_ids.extend(self.eot_id);
		TextCodec::assemble(
			tokenizer,
			self.chat_template,
			token(self.bos_id),
			token(self.eos_id),
			self.bos_id,
			if self.add_bos { self.bos_id } else { None },
			eos_ids,
		)
	}
}

impl GgufVocab {
	/// Byte-level BPE (`gpt2`): the file's merges, and the pre-tokenizer `tokenizer.ggml.pre`
	/// names.
	fn byte_level_bpe(&self) -> Result<SharedTokenizer> {
		let pre = self.pre.as_deref().context(
			"GGUF metadata has no `tokenizer.ggml.pre`, so its pre-tokenizer is unknown (re-convert it with a recent llama.cpp)",
		)?;
		let pre_tokenizer = pre_tokenizer_for(pre)?;
		let vocab: Vocab =
			self.tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
		let merges = self
			.merges
			.iter()
			.enumerate()
			.map(|(i, m)| {
				split_merge(m).with_context(|| format!("GGUF merge {i} `{m}` is not two tokens"))
			})
			.collect::<Result<Vec<_>>>()?;
		let bpe = BPE::builder()
			.vocab_and_merges(vocab, merges)
			.build()
			.map_err(|e| anyhow!("GGUF vocabulary and merges do not form a BPE model: {e}"))?;
		let mut tokenizer = SharedTokenizer::new(SharedModel::new(bpe));
		tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
		tokenizer.with_decoder(Some(ByteLevel::new(false, true, true)));
		tokenizer.with_post_processor(Some(ByteLevel::new(false, true, true)));
		Ok(tokenizer)
	}

	/// SentencePiece (`llama`: Llama 2, Mistral, Gemma), which GGUF gives as tokens and scores
	/// with no merges, tokenized as llama.cpp does ([`SentencePiece`]). Spaces become `▁`, with
	/// one before the text when the file says so.
	fn sentencepiece(&self) -> Result<SharedTokenizer> {
		let model = SentencePiece::new(&self.tokens, &self.scores, &self.types)?;
		let mut tokenizer = SharedTokenizer::new(SharedModel::SentencePiece(Arc::new(model)));
		let space = |from: &str, to: &str| Replace::new(from, to).map_err(|e| anyhow!("{e}"));
		// llama.cpp puts a space before the text and after every special token in it, even
		// where the text starts with one; the normalizer runs on each stretch between special
		// tokens.
		let mut normalizers = Vec::new();
		if self.add_space_prefix {
			normalizers.push(NormalizerWrapper::Prepend(Prepend::new(SPM_SPACE.to_string())));
		}
		normalizers.push(NormalizerWrapper::Replace(space(" ", &SPM_SPACE.to_string())?));
		tokenizer
			.with_normalizer(Some(NormalizerSequence::new(normalizers)))
			.map_err(|e| anyhow!("SentencePiece normalizer: {e}"))?;
		let mut decoders = vec![
			DecoderWrapper::Replace(space(&SPM_SPACE.to_string(), " ")?),
			DecoderWrapper::ByteFallback(ByteFallback::new()),
			DecoderWrapper::Fuse(Fuse::new()),
		];
		if self.add_space_prefix {
			decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
		}
		tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
		Ok(tokenizer)
	}
}

impl TextCodec {
	/// Builds the tokenizer a GGUF file describes: byte-level BPE (`tokenizer.ggml.model =
	/// "gpt2"`) from `tokenizer.ggml.tokens` and `tokenizer.ggml.merges`, with the pre-tokenizer
	/// `tokenizer.ggml.pre` names (SmolLM/StarCoder's digit split + GPT-2 regex, GPT-2, Llama 3,
	/// Qwen2), or SentencePiece (`"llama"`) from the tokens and `tokenizer.ggml.scores`; control
	/// tokens as special tokens, and the file's `tokenizer.chat_template` (else
	/// [`DEFAULT_CHAT_TEMPLATE`]). Other GGUF tokenizers are refused.
	pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
		GgufVocab::read(content)?.build()
	}
}

pub(super) fn pre_tokenizer_for(pre: &str) -> Result<PreTokenizerWrapper> {
	let byte_level =
		|use_regex: bool| PreTokenizerWrapper::from(ByteLevel::new(false, true, use_regex));
	let split_then_bytes = |pattern: &str| -> Result<PreTokenizerWrapper> {
		let split = Split::new(
			SplitPattern::Regex(pattern.to_owned()),
			SplitDelimiterBehavior::Isolated,
			false,
		)
		.map_err(|e| anyhow!("pre-tokenizer regex: {e}"))?;
		Ok(Sequence::new(vec![split.into(), byte_level(false)]).into())
	};
	Ok(match pre {
		p if DIGITS_THEN_GPT2.contains(&p) => {
			Sequence::new(vec![Digits::new(true).into(), byte_level(true)]).into()
		}
		"gpt-2" | "gpt2" => byte_level(true),
		"llama-bpe" | "llama3" => split_then_bytes(LLAMA3_SPLIT)?,
		"qwen2" => split_then_bytes(QWEN2_SPLIT)?,
		other => {
			bail!("GGUF pre-tokenizer `{other}` is not supported (supported: {SUPPORTED_PRE})")
		}
	})
}

/// `"a b"` → `("a", "b")`; the first character is never the separator, so a merge of a token
/// that is itself a space still splits right.
pub(super) fn split_merge(merge: &str) -> Option<(String, String)> {
	let first = merge.chars().next()?.len_utf8();
	let at = first + merge[first..].find(' ')?;
	Some((merge[..at].to_owned(), merge[at + 1..].to_owned()))
}

pub(super) fn integer(v: &Value) -> Option<i64> {
	Some(match v {
		Value::U8(x) => *x as i64,
		Value::I8(x) => *x as i64,
		Value::U16(x) => *x as i64,
		Value::I16(x) => *x as i64,
		Value::U32(x) => *x as i64,
		Value::I32(x) => *x as i64,
		Value::U64(x) => i64::try_from(*x).ok()?,
		Value::I64(x) => *x,
		_ => return None,
	})
}

