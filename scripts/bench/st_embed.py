#!/usr/bin/env python3
"""sentence-transformers' side of the DataNet benchmark (scripts/bench-datanets.sh).

Embeds the sentences of `bench_datanets --print-texts` (one per line) with all-MiniLM-L6-v2 from
the same model directory the worker uses, on the CPU with the same batch size, and prints one
JSON object: texts per second, median of three timed passes after a warm-up.
"""
import argparse
import json
import statistics
import time

import torch
from sentence_transformers import SentenceTransformer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--texts", required=True)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    texts = [line.rstrip("\n") for line in open(args.texts, encoding="utf-8") if line.strip()]
    model = SentenceTransformer(args.model, device="cpu")
    model.encode(texts[: args.batch], batch_size=args.batch)
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        model.encode(texts, batch_size=args.batch, normalize_embeddings=True)
        runs.append(time.perf_counter() - started)
    print(json.dumps({"texts": len(texts), "batch": args.batch, "threads": args.threads,
                      "texts_per_sec": len(texts) / statistics.median(runs), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
